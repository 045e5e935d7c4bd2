"""Figures of a suite (PNG, matplotlib's Agg canvas, no pyplot state).

- error vs training step, one panel per cell, one line per method (mean over
  folds with a min–max band), the published value as a dashed line;
- error vs number of labels, one panel per dataset, measured (mean ± sample std)
  against published;
- mask rate and pseudo-label accuracy over training, one column per cell.

Folds are aligned on the evaluation steps they all have, so an unfinished fold
shortens the curve instead of skewing its end.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fixmatch_bench.report.cells import CellResult, RunLike, run_dir_name
from fixmatch_bench.report.published import Published, cell_id

CURVES_DIR = Path("curves")
PANEL_INCHES = (4.8, 3.6)
DPI = 100
MAX_COLUMNS = 3

CurveKey = tuple[str, int, str]
"""(dataset, labels, method) of a cell × method."""


@dataclass(frozen=True)
class Curve:
    """One run's logged metric: values at increasing training steps."""

    steps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Band:
    """Mean, min and max over folds at the steps every fold has."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    folds: int


def read_curve(path: str | Path) -> Curve | None:
    """A run's curve TSV (``step`` and the metric's basename), or ``None`` if absent.

    Columns are read by name. A repeated step (a resumed run re-logging it) keeps its last value.
    """
    path = Path(path)
    if not path.is_file():
        return None
    name = path.stem
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if reader.fieldnames is None or "step" not in reader.fieldnames or name not in reader.fieldnames:
            raise ValueError(f"{path}: expected columns 'step' and {name!r}, found {reader.fieldnames}")
        by_step = {int(row["step"]): float(row[name]) for row in reader}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return Curve(steps, np.array([by_step[step] for step in steps], dtype=np.float64))


def load_curves(expected: Iterable[RunLike], results_dir: str | Path, metric: str) -> dict[CurveKey, dict[int, Curve]]:
    """Curves of ``metric`` (e.g. ``eval/error``, ``train/mask_rate``) per cell × method and fold.

    Every expected cell × method gets an entry, possibly empty (no finished curve).
    """
    curves: dict[CurveKey, dict[int, Curve]] = {}
    for run in expected:
        folds = curves.setdefault((run.dataset, run.labels, run.method), {})
        curve = read_curve(Path(results_dir) / run_dir_name(run) / CURVES_DIR / f"{metric}.tsv")
        if curve is not None:
            folds[run.fold] = curve
    return curves


def fold_band(curves: Mapping[int, Curve]) -> Band | None:
    """Mean/min/max over the folds at their common steps; ``None`` without folds or common steps."""
    if not curves:
        return None
    common = set.intersection(*(set(curve.steps.tolist()) for curve in curves.values()))
    if not common:
        return None
    steps = np.array(sorted(common), dtype=np.int64)
    stacked = np.stack([curve.values[np.searchsorted(curve.steps, steps)] for curve in curves.values()])
    return Band(steps, stacked.mean(axis=0), stacked.min(axis=0), stacked.max(axis=0), len(curves))


def _layout(panels: int, rows_per_panel: int = 1) -> tuple[int, int]:
    """(rows, columns) of subplots: at most MAX_COLUMNS panels side by side."""
    columns = max(1, min(MAX_COLUMNS, panels))
    return max(1, math.ceil(panels / columns)) * rows_per_panel, columns


def figure_size_px(panels: int, rows_per_panel: int = 1) -> tuple[int, int]:
    """Pixel (width, height) of a saved figure with this many panels."""
    rows, columns = _layout(panels, rows_per_panel)
    return round(PANEL_INCHES[0] * DPI * columns), round(PANEL_INCHES[1] * DPI * rows)


def _figure(panels: int, rows_per_panel: int = 1) -> tuple[Figure, int, int]:
    rows, columns = _layout(panels, rows_per_panel)
    figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained")
    return figure, rows, columns


def _colors(methods: Sequence[str]) -> dict[str, str]:
    """One fixed colour per method, in the order given, so figures agree with each other."""
    return {method: f"C{index % 10}" for index, method in enumerate(methods)}


def _cells_in_order(keys: Iterable[CurveKey]) -> list[tuple[str, int]]:
    return list(dict.fromkeys((dataset, labels) for dataset, labels, _ in keys))


def _methods_in_order(keys: Iterable[CurveKey]) -> list[str]:
    return list(dict.fromkeys(method for _, _, method in keys))


def _draw_band(axes: Axes, band: Band, color: str, label: str, scale: float = 1.0) -> None:
    folds = "1 fold" if band.folds == 1 else f"mean of {band.folds} folds, min–max band"
    axes.plot(band.steps, band.mean * scale, color=color, label=f"{label} ({folds})")
    if band.folds > 1:
        axes.fill_between(band.steps, band.low * scale, band.high * scale, color=color, alpha=0.2, linewidth=0)


def _empty(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no finished runs", transform=axes.transAxes, ha="center", va="center", color="gray")


def plot_error_curves(curves: Mapping[CurveKey, Mapping[int, Curve]], published: Published, out: str | Path) -> Figure:
    """Test error vs training step, one panel per cell; dashed lines are published means."""
    cells = _cells_in_order(curves)
    colors = _colors(_methods_in_order(curves))
    figure, rows, columns = _figure(len(cells))
    for index, (dataset, labels) in enumerate(cells):
        axes = figure.add_subplot(rows, columns, index + 1)
        drawn = False
        for (d, n, method), folds in curves.items():
            if (d, n) != (dataset, labels):
                continue
            band = fold_band(folds)
            name = published.names.method(method)
            if band is not None:
                _draw_band(axes, band, colors[method], name)
                drawn = True
            result = published.get(cell_id(dataset, labels), method)
            if result is not None:
                axes.axhline(result.mean, color=colors[method], linestyle="--", linewidth=1,
                             label=f"{name}, paper {result.mean:.2f}")
        if not drawn:
            _empty(axes)
        axes.set_title(f"{published.names.cell(dataset, labels)}: test error of the EMA model")
        axes.set_xlabel("training step (iterations)")
        axes.set_ylabel("test error (%)")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    save_figure(figure, out)
    return figure


def plot_error_vs_labels(cells: Sequence[CellResult], published: Published, out: str | Path) -> Figure:
    """Final error vs number of labels, one panel per dataset: ours (mean ± std) vs paper."""
    datasets = list(dict.fromkeys(cell.dataset for cell in cells))
    colors = _colors(list(dict.fromkeys(cell.method for cell in cells)))
    figure, rows, columns = _figure(len(datasets))
    for index, dataset in enumerate(datasets):
        axes = figure.add_subplot(rows, columns, index + 1)
        mine = [cell for cell in cells if cell.dataset == dataset]
        for method in dict.fromkeys(cell.method for cell in mine):
            name = published.names.method(method)
            measured = sorted((c.labels, c.mean, c.std or 0.0)
                              for c in mine if c.method == method and c.mean is not None)
            if measured:
                x, y, err = zip(*measured, strict=True)
                axes.errorbar(x, y, yerr=err, color=colors[method], marker="o", capsize=3, label=f"{name} (ours)")
            paper = sorted((c.labels, r.mean, r.std or 0.0) for c in mine if c.method == method
                           for r in [published.get(c.cell, method)] if r is not None)
            if paper:
                x, y, err = zip(*paper, strict=True)
                axes.errorbar(x, y, yerr=err, color=colors[method], marker="s", markerfacecolor="none",
                              linestyle=":", capsize=3, label=f"{name} (paper)")
        labels = sorted({cell.labels for cell in mine})
        axes.set_xscale("log")
        axes.set_xticks(labels, [str(n) for n in labels])
        axes.minorticks_off()
        axes.set_title(f"{published.names.dataset(dataset)}: test error vs labels")
        axes.set_xlabel("number of labeled examples")
        axes.set_ylabel("test error (%), mean ± std over folds")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
        else:
            _empty(axes)
    save_figure(figure, out)
    return figure


def plot_methods(cells: Sequence[CellResult], published: Published, out: str | Path) -> Figure:
    """Error per method, one panel per cell: each fold's error as a dot, the mean over folds as a bar,
    and the published mean as a hollow square where the paper has one."""
    keys = list(dict.fromkeys((cell.dataset, cell.labels) for cell in cells))
    methods = list(dict.fromkeys(cell.method for cell in cells))
    colors = _colors(methods)
    figure, rows, columns = _figure(len(keys))
    for index, (dataset, labels) in enumerate(keys):
        axes = figure.add_subplot(rows, columns, index + 1)
        mine = {cell.method: cell for cell in cells if (cell.dataset, cell.labels) == (dataset, labels)}
        for x, method in enumerate(methods):
            cell = mine.get(method)
            if cell is not None and cell.mean is not None:
                axes.bar(x, cell.mean, color=colors[method], alpha=0.35, width=0.6)
                errors = [cell.fold_errors[fold] for fold in sorted(cell.fold_errors)]
                axes.plot([x] * len(errors), errors, "o", color=colors[method], markersize=4)
            result = published.get(cell_id(dataset, labels), method)
            if result is not None:
                axes.plot(x, result.mean, "s", markerfacecolor="none", color="black", markersize=7)
        axes.set_xticks(range(len(methods)), [published.names.method(m) for m in methods], rotation=30, ha="right")
        axes.set_title(f"{published.names.cell(dataset, labels)}: test error per method "
                       "(bar: mean over folds, dots: folds, square: paper)")
        axes.set_ylabel("test error (%)")
        axes.grid(alpha=0.3, axis="y")
    save_figure(figure, out)
    return figure


def plot_training_signals(mask_rate: Mapping[CurveKey, Mapping[int, Curve]],
                          pseudo_label_accuracy: Mapping[CurveKey, Mapping[int, Curve]],
                          published: Published, out: str | Path) -> Figure:
    """Mask rate above pseudo-label accuracy over training, one pair of panels per cell.

    Supervised-only runs have neither curve; their entries are empty and draw nothing.
    """
    keys = list(dict.fromkeys(list(mask_rate) + list(pseudo_label_accuracy)))
    cells = _cells_in_order(keys)
    colors = _colors(_methods_in_order(keys))
    figure, rows, columns = _figure(len(cells), rows_per_panel=2)
    signals = (("mask rate", "unlabeled images above threshold (%)", mask_rate),
               ("pseudo-label accuracy", "pseudo-label accuracy (%)", pseudo_label_accuracy))
    for index, (dataset, labels) in enumerate(cells):
        block, column = divmod(index, columns)
        for offset, (title, ylabel, curves) in enumerate(signals):
            axes = figure.add_subplot(rows, columns, (2 * block + offset) * columns + column + 1)
            drawn = False
            for (d, n, method), folds in curves.items():
                band = fold_band(folds) if (d, n) == (dataset, labels) else None
                if band is not None:
                    _draw_band(axes, band, colors[method], published.names.method(method), scale=100.0)
                    drawn = True
            if drawn:
                axes.legend(fontsize="small")
            else:
                _empty(axes)
            axes.set_title(f"{published.names.cell(dataset, labels)}: {title}")
            axes.set_xlabel("training step (iterations)")
            axes.set_ylabel(ylabel)
            axes.set_ylim(0, 100)
            axes.grid(alpha=0.3)
    save_figure(figure, out)
    return figure


def save_figure(figure: Figure, out: str | Path) -> Path:
    """Write ``figure`` as a PNG at :data:`DPI` (no tight bounding box: the pixel size stays fixed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=DPI)
    return out
