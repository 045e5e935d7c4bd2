"""Aggregation of finished runs into table cells, cost rows and the summary metrics.

The expected runs come from the params (cells × methods × folds), never from
globbing ``results/``: a fold that did not finish is named as missing, and a
cell is marked incomplete instead of being silently averaged over fewer folds.
The std across folds is the sample std (ddof=1); with one fold it is undefined
(``None``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

METRICS_FILE = "metrics.json"
_REQUIRED_METRICS = {
    "error": float, "median_of_last": int, "steps": int, "wall_time_s": float, "steps_per_s": float, "device": str,
}


class RunLike(Protocol):
    """What aggregation needs to know about an expected run (the lead's ``config.Run``)."""

    dataset: str
    labels: int
    method: str
    fold: int

    @property
    def key(self) -> str:
        """``digits_20-fixmatch_ra-1``, with an ablation variant's changes after it."""


class ResultsError(ValueError):
    """A run's ``metrics.json`` is unreadable or belongs to another run."""


def run_dir_name(run: RunLike) -> str:
    """Results folder of a run: its key, ``digits_20-fixmatch_ra-1``."""
    return run.key


def cell_method_key(dataset: str, labels: int, method: str) -> str:
    """Summary key of a cell × method: ``digits_20-fixmatch_ra``."""
    return f"{dataset}_{labels}-{method}"


@dataclass(frozen=True)
class RunResult:
    """The fields of one run's ``metrics.json`` that reports use."""

    dataset: str
    labels: int
    method: str
    fold: int
    error: float
    median_of_last: int
    steps: int
    wall_time_s: float
    steps_per_s: float
    device: str
    mask_rate: float | None = None
    pseudo_label_accuracy: float | None = None

    @property
    def is_gpu(self) -> bool:
        """The contract writes ``cpu`` for CPU runs and the GPU's name otherwise."""
        return self.device != "cpu"

    @property
    def gpu_hours(self) -> float:
        return self.wall_time_s / 3600 if self.is_gpu else 0.0


def _check_type(path: Path, field: str, value: Any, kind: type) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ResultsError(f"{path}: field {field!r} = {value!r} is invalid; expected {kind.__name__}")


def _read_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_run(run: RunLike, results_dir: str | Path) -> RunResult | None:
    """The finished run's metrics, or ``None`` when its folder or ``metrics.json`` is absent.

    The run is the folder's; identity fields in the file, where an older file has them, must match it.
    """
    path = Path(results_dir) / run_dir_name(run) / METRICS_FILE
    if not path.is_file():
        return None
    data = _read_object(path)
    for field, kind in _REQUIRED_METRICS.items():
        if field not in data:
            raise ResultsError(f"{path}: field {field!r} is missing")
        _check_type(path, field, data[field], kind)
    expected = {"dataset": run.dataset, "labels": run.labels, "method": run.method, "fold": run.fold}
    for field, value in expected.items():
        if field in data and data[field] != value:
            raise ResultsError(f"{path}: field {field!r} = {data[field]!r} does not match the run folder ({value!r})")
    optional = {}
    for field in ("mask_rate", "pseudo_label_accuracy"):
        if data.get(field) is not None:
            _check_type(path, field, data[field], float)
            optional[field] = float(data[field])
    return RunResult(
        run.dataset, run.labels, run.method, run.fold, float(data["error"]), data["median_of_last"],
        data["steps"], float(data["wall_time_s"]), float(data["steps_per_s"]), data["device"], **optional)


def run_records(expected: Iterable[RunLike], results_dir: str | Path) -> dict[str, dict]:
    """``{run: its metrics.json}`` for every finished expected run (``reports/runs.json``: what each run
    measured and cost, in git beside the tables; the runs' own files are DVC-cached outputs)."""
    paths = {run_dir_name(run): Path(results_dir) / run_dir_name(run) / METRICS_FILE for run in expected}
    return {name: _read_object(path) for name, path in paths.items() if path.is_file()}


def collect_runs(expected: Iterable[RunLike], results_dir: str | Path) -> list[tuple[RunLike, RunResult | None]]:
    """Every expected run with its result (``None`` if missing), in the given order."""
    return [(run, load_run(run, results_dir)) for run in expected]


@dataclass(frozen=True)
class CellResult:
    """One table cell: a method on a dataset@labels, over its expected folds."""

    dataset: str
    labels: int
    method: str
    fold_errors: Mapping[int, float]
    folds_expected: tuple[int, ...]
    median_of_last: tuple[int, ...]
    mask_rate: float | None
    pseudo_label_accuracy: float | None

    @property
    def cell(self) -> str:
        return f"{self.dataset}_{self.labels}"

    @property
    def key(self) -> str:
        return cell_method_key(self.dataset, self.labels, self.method)

    @property
    def folds_done(self) -> int:
        return len(self.fold_errors)

    @property
    def missing_folds(self) -> tuple[int, ...]:
        return tuple(fold for fold in self.folds_expected if fold not in self.fold_errors)

    @property
    def complete(self) -> bool:
        return not self.missing_folds

    @property
    def mean(self) -> float | None:
        """Mean error (%) over the finished folds; ``None`` when none finished."""
        return float(np.mean(list(self.fold_errors.values()))) if self.fold_errors else None

    @property
    def std(self) -> float | None:
        """Sample std (ddof=1) over the finished folds; ``None`` (undefined) below two folds."""
        return float(np.std(list(self.fold_errors.values()), ddof=1)) if self.folds_done >= 2 else None


def _mean_of(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def aggregate_cells(collected: Sequence[tuple[RunLike, RunResult | None]]) -> list[CellResult]:
    """Group runs by cell × method, in order of first appearance."""
    groups: dict[tuple[str, int, str], list[tuple[RunLike, RunResult | None]]] = {}
    for run, result in collected:
        groups.setdefault((run.dataset, run.labels, run.method), []).append((run, result))
    cells = []
    for (dataset, labels, method), members in groups.items():
        folds = tuple(run.fold for run, _ in members)
        if len(set(folds)) != len(folds):
            key = cell_method_key(dataset, labels, method)
            raise ValueError(f"expected runs: fold list {folds} of {key} repeats a fold")
        done = [result for _, result in members if result is not None]
        cells.append(CellResult(
            dataset, labels, method,
            fold_errors={result.fold: result.error for result in done},
            folds_expected=folds,
            median_of_last=tuple(sorted({result.median_of_last for result in done})),
            mask_rate=_mean_of([result.mask_rate for result in done]),
            pseudo_label_accuracy=_mean_of([result.pseudo_label_accuracy for result in done]),
        ))
    return cells


@dataclass(frozen=True)
class CostTotals:
    """Cost of a group of runs (a cell × method, or the whole suite)."""

    runs_done: int
    runs_expected: int
    steps: int
    wall_time_s: float
    gpu_hours: float


def cost_totals(collected: Sequence[tuple[RunLike, RunResult | None]]) -> CostTotals:
    """Sums over the finished runs of ``collected``."""
    done = [result for _, result in collected if result is not None]
    return CostTotals(len(done), len(collected), sum(result.steps for result in done),
                      sum(result.wall_time_s for result in done), sum(result.gpu_hours for result in done))


def cost_by_cell(collected: Sequence[tuple[RunLike, RunResult | None]]) -> dict[str, CostTotals]:
    """Cost totals per cell × method key, in order of first appearance."""
    groups: dict[str, list[tuple[RunLike, RunResult | None]]] = {}
    for run, result in collected:
        groups.setdefault(cell_method_key(run.dataset, run.labels, run.method), []).append((run, result))
    return {key: cost_totals(members) for key, members in groups.items()}


def summary(cells: Sequence[CellResult]) -> dict[str, Any]:
    """The summary metrics (``reports/summary.json``): one error per cell × method.

    Shape: ``{"<cell>-<method>": mean error %, ..., "folds_missing": {key: n},
    "mask_rate": {key: mean final mask rate}}``. Cells with no finished fold have
    no error key; ``folds_missing`` lists every cell, 0 meaning complete.
    Errors are rounded to 4 decimals so that unchanged results diff as unchanged.
    """
    out: dict[str, Any] = {}
    for cell in cells:
        if cell.mean is not None:
            out[cell.key] = round(cell.mean, 4)
    out["folds_missing"] = {cell.key: len(cell.missing_folds) for cell in cells}
    mask = {cell.key: round(cell.mask_rate, 4) for cell in cells if cell.mask_rate is not None}
    if mask:
        out["mask_rate"] = mask
    return out
