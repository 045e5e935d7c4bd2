"""Regression checks: measured cells against a reference, and one revision against another.

- Paper suites: the reference is the published mean and the tolerance
  ``max(k × published std, floor)`` (the floor alone when the paper gives no std).
- Quick suite: the reference is the baseline that ``make baseline`` wrote
  (:mod:`fixmatch_bench.tools.spread`, never edited by hand): each cell's mean with a
  tolerance derived from the measured spread of the suite under changes of the
  floating-point path, never below the floor.
- A cell with fewer finished folds than expected is ``incomplete``, never ``pass``; so is a
  baseline cell the suite did not run at all (a method left out of ``ssl_methods``).

The reference check is two-sided: the suite checks reproduction, and an error far
*below* the reference points to a protocol deviation (e.g. best-checkpoint
reporting) as surely as one far above. The revision check is one-sided: it fails
when the error rose by more than the tolerance.

CLI::

    python -m fixmatch_bench.report.check --against-rev REV --tolerance T [--summary reports/summary.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixmatch_bench.report.cells import CellResult
from fixmatch_bench.report.published import Published

SUMMARY_FILE = "reports/summary.json"
FOLDS_MISSING = "folds_missing"


@dataclass(frozen=True)
class Reference:
    """Expected error (%) of a cell × method; ``std`` is ``None`` when the source gives none.

    ``tolerance`` is set when the source derives its own (the quick suite's baseline).
    """

    mean: float
    std: float | None
    source: str
    tolerance: float | None = None


@dataclass(frozen=True)
class Tolerance:
    """Allowed |measured − reference| = max(k × reference std, floor); the floor when there is no std,
    max(the reference's own tolerance, floor) when it has one."""

    k: float
    floor: float

    def __post_init__(self) -> None:
        for name in ("k", "floor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"tolerance {name} = {value!r} is invalid; expected a finite number >= 0")

    def for_reference(self, reference: Reference) -> float:
        if reference.tolerance is not None:
            return max(reference.tolerance, self.floor)
        return self.floor if reference.std is None else max(self.k * reference.std, self.floor)


@dataclass(frozen=True)
class CheckResult:
    """Outcome for one cell × method: ``pass``, ``fail``, ``incomplete`` or ``unchecked`` (no reference)."""

    key: str
    status: str
    measured: float | None
    reference: Reference | None
    tolerance: float | None
    folds_done: int | None = None
    folds_expected: int | None = None
    missing_folds: tuple[int, ...] = ()

    def line(self) -> str:
        measured = "none" if self.measured is None else f"{self.measured:.2f}"
        text = f"{self.status.upper():<10} {self.key}: measured {measured}"
        if self.reference is not None:
            text += (f", reference {self.reference.mean:.2f} ({self.reference.source}), "
                     f"tolerance {self.tolerance:.2f}")
        if self.folds_expected is not None:
            text += f", folds {self.folds_done}/{self.folds_expected}"
        if self.missing_folds:
            text += f" (missing {', '.join(str(fold) for fold in self.missing_folds)})"
        return text


def paper_references(published: Published) -> dict[str, Reference]:
    """Published means keyed ``<cell>-<method>``, the source naming the confidence."""
    return {f"{result.cell}-{result.method}": Reference(result.mean, result.std, f"paper, {result.confidence}")
            for result in published.results}


def baseline_references(baseline: Mapping[str, Any]) -> dict[str, Reference]:
    """A baseline's cells (:mod:`fixmatch_bench.tools.spread`) as references with their derived tolerances."""
    return {key: Reference(cell["mean"], cell["sigma_mean"], "baseline", cell["tolerance"])
            for key, cell in baseline["cells"].items()}


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read a baseline written by ``make baseline``, checking that every cell has a mean and a tolerance."""
    with open(path, encoding="utf-8") as handle:
        baseline = json.load(handle)
    cells = baseline.get("cells") if isinstance(baseline, dict) else None
    if not isinstance(cells, dict) or not cells:
        raise ValueError(f"{path}: not a baseline (no cells); write it with `make baseline`")
    for key, cell in cells.items():
        for field in ("mean", "tolerance"):
            value = cell.get(field) if isinstance(cell, dict) else None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{path}: cell {key!r} field {field!r} = {value!r}; expected a finite number")
    return baseline


def check_against_reference(cells: Sequence[CellResult], reference: Mapping[str, Reference],
                            tolerance: Tolerance) -> list[CheckResult]:
    """One result per cell, in order; incomplete cells are never ``pass``."""
    results = []
    for cell in cells:
        ref = reference.get(cell.key)
        allowed = None if ref is None else tolerance.for_reference(ref)
        if ref is None:
            status = "unchecked"
        elif not cell.complete:
            status = "incomplete"
        else:
            status = "pass" if abs(cell.mean - ref.mean) <= allowed else "fail"
        results.append(CheckResult(cell.key, status, cell.mean, ref, allowed, cell.folds_done,
                                   len(cell.folds_expected), cell.missing_folds))
    return results


def check_cells_not_run(cells: Sequence[CellResult], reference: Mapping[str, Reference], tolerance: Tolerance,
                        folds: Sequence[int]) -> list[CheckResult]:
    """An ``incomplete`` result, every fold missing, for each reference cell that no cell measured: a
    baseline lists the cells of its suite, and a cell left out of the run is never a pass."""
    measured = {cell.key for cell in cells}
    return [CheckResult(key, "incomplete", None, ref, tolerance.for_reference(ref), 0, len(folds), tuple(folds))
            for key, ref in reference.items() if key not in measured]


def check_ratio_to_supervised(cells: Sequence[CellResult], max_ratio: float,
                              baseline_method: str = "supervised") -> list[CheckResult]:
    """Each other method at each dataset's smallest label count against the baseline method's run
    (``baseline`` in params: the supervised-only baseline).

    ``pass`` when its mean error is at most ``max_ratio`` times the baseline's mean error of
    the same cell; ``incomplete`` when either side is missing folds.
    """
    by_key = {cell.key: cell for cell in cells}
    smallest: dict[str, int] = {}
    for cell in cells:
        smallest[cell.dataset] = min(cell.labels, smallest.get(cell.dataset, cell.labels))
    results = []
    for cell in cells:
        if cell.method == baseline_method or cell.labels != smallest[cell.dataset]:
            continue
        baseline = by_key.get(f"{cell.dataset}_{cell.labels}-{baseline_method}")
        complete = cell.complete and baseline is not None and baseline.complete
        reference = None if baseline is None or baseline.mean is None else Reference(
            baseline.mean * max_ratio, None, f"{max_ratio:.3g} x {baseline_method}")
        if not complete or reference is None:
            status = "incomplete"
        else:
            status = "pass" if cell.mean <= reference.mean else "fail"
        results.append(CheckResult(f"{cell.key} vs {baseline_method}", status, cell.mean, reference, 0.0,
                                   cell.folds_done, len(cell.folds_expected), cell.missing_folds))
    return results


def report(results: Sequence[CheckResult]) -> tuple[str, int]:
    """The lines to print (failing and incomplete cells, then a count) and the exit code (1 if any)."""
    bad = [result for result in results if result.status in ("fail", "incomplete")]
    counts = {status: sum(r.status == status for r in results)
              for status in ("pass", "fail", "incomplete", "unchecked")}
    lines = [result.line() for result in bad]
    unchecked = [result.key for result in results if result.status == "unchecked"]
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    lines.append(f"{summary}" + (f" (no reference: {', '.join(unchecked)})" if unchecked else ""))
    return "\n".join(lines), 1 if bad else 0


def error_means(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary's top-level numbers: mean error (%) per ``<cell>-<method>``."""
    return {key: float(value) for key, value in summary.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def compare_revisions(old_summary: Mapping[str, Any], new_summary: Mapping[str, Any],
                      tolerance: float) -> list[CheckResult]:
    """Every old cell: ``fail`` if its error rose by more than ``tolerance`` or it is gone from the
    new summary, ``incomplete`` if it lost folds, else ``pass``; cells only in the new summary are
    ``unchecked``."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance = {tolerance!r} is invalid; expected a finite number >= 0")
    old, new = error_means(old_summary), error_means(new_summary)
    old_missing = old_summary.get(FOLDS_MISSING) or {}
    new_missing = new_summary.get(FOLDS_MISSING) or {}
    results = []
    for key, before in old.items():
        ref = Reference(before, None, "old revision")
        after = new.get(key)
        lost = int(new_missing.get(key, 0)) > int(old_missing.get(key, 0))
        if after is None:
            status = "fail"
        elif lost:
            status = "incomplete"
        else:
            status = "fail" if after - before > tolerance else "pass"
        results.append(CheckResult(key, status, after, ref, tolerance))
    results += [CheckResult(key, "unchecked", value, None, None) for key, value in new.items() if key not in old]
    return results


def summaries_from_metrics_diff(diff: Mapping[str, Any], target: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(old, new) summaries from ``dvc metrics diff --json --all`` output.

    DVC prints ``{file: {dotted_key: {"old": x, "new": y, "diff": d}}}`` with nested keys
    flattened to ``group.key`` and ``null`` where a side lacks the metric, in no fixed
    order: keys are sorted so that reports are reproducible.
    """
    entries = diff.get(target, {})
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for dotted, values in sorted(entries.items()):
        group, _, key = dotted.partition(".")
        for side, summary in (("old", old), ("new", new)):
            value = values.get(side)
            if value is None:
                continue
            if key:
                summary.setdefault(group, {})[key] = value
            else:
                summary[group] = value
    return old, new


def summaries_at_revision(rev: str, target: str, repo: str | Path = ".") -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary at ``rev``, summary in the workspace) through ``dvc metrics diff``."""
    command = [sys.executable, "-m", "dvc", "metrics", "diff", rev, "--targets", target, "--json", "--all"]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`dvc metrics diff {rev}` failed ({done.returncode}): {done.stderr.strip()}")
    old, new = summaries_from_metrics_diff(json.loads(done.stdout or "{}"), target)
    if not error_means(old):
        raise RuntimeError(f"revision {rev!r} has no error metrics in {target}")
    return old, new


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regression checks of the summary metrics.")
    parser.add_argument("--against-rev", metavar="REV", required=True,
                        help="fail if an error rose by more than --tolerance since REV")
    parser.add_argument("--summary", default=SUMMARY_FILE, help=f"summary metrics file (default: {SUMMARY_FILE})")
    parser.add_argument("--tolerance", type=float, required=True, help="allowed rise of an error, in points")
    parser.add_argument("--repo", default=".", help="DVC repository root (default: .)")
    args = parser.parse_args(argv)
    try:
        old, new = summaries_at_revision(args.against_rev, args.summary, args.repo)
        text, code = report(compare_revisions(old, new, args.tolerance))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
