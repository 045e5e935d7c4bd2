"""Result and cost tables in Markdown, LaTeX (booktabs) and CSV.

Result tables follow the paper's layout, one per dataset: rows are methods,
columns are dataset@labels cells. Each measured cell shows ``mean ± std (done/expected)``
and, where the paper has a number for that cell, the published value and
Δ = measured − published beside it. The paper's other methods appear as rows with
published values only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from fixmatch_bench.report.cells import (
    CellResult,
    CostTotals,
    RunLike,
    RunResult,
    cost_by_cell,
    cost_totals,
    run_dir_name,
)
from fixmatch_bench.report.published import Published, PublishedResult, cell_id

NONE = "—"
MINUS = "−"
UNCONFIRMED_MARK = "†"

_CSV_FIELDS = (
    "dataset", "labels", "cell", "method", "folds_expected", "folds_done", "complete", "missing_folds",
    "fold_errors", "median_of_last", "mean", "std", "mask_rate", "pseudo_label_accuracy",
    "published_mean", "published_std", "published_confidence", "published_sources", "diff",
)


@dataclass(frozen=True)
class _Column:
    dataset: str
    labels: int
    with_paper: bool

    @property
    def cell(self) -> str:
        return cell_id(self.dataset, self.labels)


@dataclass(frozen=True)
class _Group:
    dataset: str
    columns: tuple[_Column, ...]
    methods: tuple[str, ...]
    reference_methods: tuple[str, ...]


def _has_paper_entry(published: Published, cell: str, method: str) -> bool:
    return published.get(cell, method) is not None or published.is_not_retrieved(cell, method)


def _groups(cells: Sequence[CellResult], published: Published) -> list[_Group]:
    """Dataset groups in order of first appearance; paper columns where the paper has the cell."""
    datasets = list(dict.fromkeys(cell.dataset for cell in cells))
    groups = []
    for dataset in datasets:
        mine = [cell for cell in cells if cell.dataset == dataset]
        labels = sorted({cell.labels for cell in mine})
        methods = tuple(dict.fromkeys(cell.method for cell in mine))
        reference = tuple(dict.fromkeys(
            result.method for result in published.results
            if result.dataset == dataset and result.labels in labels and result.method not in methods))
        rows = methods + reference
        columns = tuple(_Column(dataset, n, any(_has_paper_entry(published, cell_id(dataset, n), m) for m in rows))
                        for n in labels)
        groups.append(_Group(dataset, columns, methods, reference))
    return groups


def _number(value: float) -> str:
    return f"{value:.2f}"


def _signed(value: float) -> str:
    text = f"{abs(value):.2f}"
    return f"+{text}" if value >= 0.005 else (f"{MINUS}{text}" if value <= -0.005 else "0.00")


def format_measured(cell: CellResult | None) -> str:
    """``2.41 ± 0.31 (3/3)``; ``n/a`` for the std of a single fold; ``missing (0/3)``; ``—`` if not run."""
    if cell is None:
        return NONE
    count = f"({cell.folds_done}/{len(cell.folds_expected)})"
    if cell.mean is None:
        return f"missing {count}"
    std = "n/a" if cell.std is None else _number(cell.std)
    return f"{_number(cell.mean)} ± {std} {count}"


def format_published(result: PublishedResult | None, not_retrieved: bool) -> str:
    """``13.81 ± 3.37``, ``40.14`` without std, a † on unconfirmed values, ``n/r`` if not retrieved."""
    if result is None:
        return "n/r" if not_retrieved else NONE
    text = _number(result.mean) if result.std is None else f"{_number(result.mean)} ± {_number(result.std)}"
    return f"{text} {UNCONFIRMED_MARK}" if result.confidence == "unconfirmed" else text


def difference(cell: CellResult | None, result: PublishedResult | None) -> float | None:
    """Measured − published mean error, when both exist."""
    if cell is None or cell.mean is None or result is None:
        return None
    return cell.mean - result.mean


def _lookup(cells: Sequence[CellResult]) -> dict[tuple[str, str], CellResult]:
    return {(cell.cell, cell.method): cell for cell in cells}


def _row(method: str, group: _Group, found: dict[tuple[str, str], CellResult], published: Published) -> list[str]:
    row = [published.names.method(method)]
    for column in group.columns:
        cell = found.get((column.cell, method))
        row.append(format_measured(cell))
        if column.with_paper:
            result = published.get(column.cell, method)
            row.append(format_published(result, published.is_not_retrieved(column.cell, method)))
            diff = difference(cell, result)
            row.append(NONE if diff is None else _signed(diff))
    return row


def _notes(cells: Sequence[CellResult], published: Published, with_paper: bool) -> list[str]:
    windows = sorted({n for cell in cells for n in cell.median_of_last})
    last = ", ".join(str(n) for n in windows) if windows else "N"
    notes = [
        f"Test error (%) = 100 − median of the last {last} EMA-model test accuracies of a run; "
        "mean ± std over the finished folds, std = sample std (n−1), n/a with a single fold; "
        "(done/expected) folds; — = not run.",
    ]
    if with_paper:
        notes.append(
            "paper = Sohn et al. 2020, mean ± std over 5 folds (std type not stated in the paper), "
            "as transcribed with each number's sources and confidence in reports/published.yaml; "
            f"{UNCONFIRMED_MARK} = unconfirmed, check against the paper; "
            "n/r = reported in the paper but not retrieved. Δ = ours − paper. "
            "Rows without measured values are the paper's other methods, for reference.")
    for cell in cells:
        if cell.missing_folds:
            folds = ", ".join(str(fold) for fold in cell.missing_folds)
            notes.append(f"Incomplete: {published.names.cell(cell.dataset, cell.labels)} "
                         f"{published.names.method(cell.method)} is missing fold(s) {folds}.")
    return notes


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(cells: Sequence[CellResult], published: Published) -> str:
    """The result tables, one section per dataset, with their notes."""
    found = _lookup(cells)
    lines = ["# Test error rates (%)", ""]
    any_paper = False
    for group in _groups(cells, published):
        header = ["Method"]
        for column in group.columns:
            header.append(published.names.cell(column.dataset, column.labels))
            if column.with_paper:
                any_paper = True
                header += ["paper", "Δ"]
        rows = [_row(method, group, found, published) for method in group.methods + group.reference_methods]
        lines += [f"## {published.names.dataset(group.dataset)}", ""] + _markdown_table(header, rows) + [""]
    lines += [f"- {note}" for note in _notes(cells, published, any_paper)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "—": "---", MINUS: "$-$", "Δ": r"$\Delta$", UNCONFIRMED_MARK: r"\dag{}",
                  "Π": r"$\Pi$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the table's symbols (±, —, −, Δ, †, Π) to LaTeX."""
    return "".join(_LATEX_SPECIALS.get(char, _LATEX_SYMBOLS.get(char, char)) for char in text)


def render_latex(cells: Sequence[CellResult], published: Published) -> str:
    """The result tables as booktabs ``table`` environments (needs ``\\usepackage{booktabs}``)."""
    found = _lookup(cells)
    out = ["% Generated by fixmatch_bench.report.tables; requires \\usepackage{booktabs}."]
    for group in _groups(cells, published):
        spec = "l" + "".join("ccc" if column.with_paper else "c" for column in group.columns)
        top, sub, rules = ["Method"], [""], []
        position = 2
        for column in group.columns:
            name = latex_escape(published.names.cell(column.dataset, column.labels))
            if column.with_paper:
                top.append(rf"\multicolumn{{3}}{{c}}{{{name}}}")
                sub += ["ours", "paper", r"$\Delta$"]
                rules.append(rf"\cmidrule(lr){{{position}-{position + 2}}}")
                position += 3
            else:
                top.append(name)
                sub.append("ours")
                position += 1
        rows = [_row(method, group, found, published) for method in group.methods + group.reference_methods]
        notes = _notes([cell for cell in cells if cell.dataset == group.dataset], published,
                       any(column.with_paper for column in group.columns))
        out += [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{Test error rates (\%) on {latex_escape(published.names.dataset(group.dataset))}. "
            + latex_escape(" ".join(notes)) + "}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(top) + r" \\",
        ]
        if rules:
            out.append(" ".join(rules))
        out += [" & ".join(sub) + r" \\", r"\midrule"]
        out += [" & ".join(latex_escape(value) for value in row) + r" \\" for row in rows]
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def render_csv(cells: Sequence[CellResult], published: Published) -> str:
    """One row per cell × method with every field, including the published comparison."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for cell in cells:
        result = published.get(cell.cell, cell.method)
        writer.writerow([
            cell.dataset, cell.labels, cell.cell, cell.method, len(cell.folds_expected), cell.folds_done,
            cell.complete, ";".join(str(fold) for fold in cell.missing_folds),
            ";".join(f"{fold}:{error:.4f}" for fold, error in sorted(cell.fold_errors.items())),
            ";".join(str(n) for n in cell.median_of_last),
            _csv_number(cell.mean), _csv_number(cell.std), _csv_number(cell.mask_rate),
            _csv_number(cell.pseudo_label_accuracy),
            _csv_number(result.mean if result else None), _csv_number(result.std if result else None),
            result.confidence if result else "", ";".join(result.sources) if result else "",
            _csv_number(difference(cell, result)),
        ])
    return buffer.getvalue()


def _duration(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _totals_row(label: list[str], totals: CostTotals) -> list[str]:
    return label + [f"{totals.runs_done}/{totals.runs_expected}", str(totals.steps),
                    _duration(totals.wall_time_s), f"{totals.gpu_hours:.2f}"]


def render_cost_markdown(collected: Sequence[tuple[RunLike, RunResult | None]]) -> str:
    """Cost per run, per cell × method and for the whole suite (GPU-hours count GPU runs only)."""
    per_run = []
    for run, result in collected:
        if result is None:
            per_run.append([run_dir_name(run), "missing", NONE, NONE, NONE, NONE])
        else:
            per_run.append([run_dir_name(run), result.device, str(result.steps), _duration(result.wall_time_s),
                            f"{result.steps_per_s:.2f}", f"{result.gpu_hours:.2f}"])
    per_cell = [_totals_row([key], totals) for key, totals in cost_by_cell(collected).items()]
    lines = ["# Cost", "", "## Per run", ""]
    lines += _markdown_table(["Run", "Device", "Steps", "Wall time (h:mm:ss)", "Steps/s", "GPU-hours"], per_run)
    lines += ["", "## Per cell", ""]
    lines += _markdown_table(["Cell-method", "Runs done", "Steps", "Wall time (h:mm:ss)", "GPU-hours"], per_cell)
    lines += ["", "## Suite total", ""]
    lines += _markdown_table(["Suite", "Runs done", "Steps", "Wall time (h:mm:ss)", "GPU-hours"],
                             [_totals_row(["total"], cost_totals(collected))])
    lines += ["", "- GPU-hours = wall time / 3600 for runs on a GPU, 0 for CPU runs; totals count finished runs only."]
    return "\n".join(lines) + "\n"


def render_cost_csv(collected: Sequence[tuple[RunLike, RunResult | None]]) -> str:
    """One row per expected run: raw cost fields, empty for missing runs."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "dataset", "labels", "method", "fold", "finished", "device", "steps",
                     "wall_time_s", "steps_per_s", "gpu_hours"])
    for run, result in collected:
        base = [run_dir_name(run), run.dataset, run.labels, run.method, run.fold, result is not None]
        if result is None:
            writer.writerow(base + [""] * 5)
        else:
            writer.writerow(base + [result.device, result.steps, f"{result.wall_time_s:.3f}",
                                    f"{result.steps_per_s:.4f}", f"{result.gpu_hours:.6f}"])
    return buffer.getvalue()
