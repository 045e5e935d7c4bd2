"""Threshold ablation (the paper's Fig. 3a) from ``dvc exp show --json``.

``dvc exp show --json`` (DVC 3.x) prints a list of rows: the workspace, then
each baseline commit, with its experiments nested under
``experiments[i]["revs"]``. Every row has ``rev``, ``name``, ``error`` and
``data`` = ``{"params": {file: {"data": {...}}}, "metrics": {file: {"data": {...}}}, ...}``.
A failed or queued experiment has an ``error`` or no ``data`` and is skipped.
The workspace row repeats the last applied experiment, so identical points are
kept once.

Usage::

    dvc exp show --json | python -m fixmatch_bench.report.ablation --exp-show-json - --out reports/threshold.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fixmatch_bench.report.plots import DPI, PANEL_INCHES, save_figure

SUMMARY_FILE = "reports/summary.json"
MASK_RATE_GROUP = "mask_rate"


@dataclass(frozen=True)
class ExperimentPoint:
    """One experiment (or commit, or the workspace): its param value and flattened metrics."""

    name: str
    value: float
    metrics: Mapping[str, float]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numeric metrics as dotted keys (``mask_rate.digits_20-fixmatch_ra``), like DVC shows them."""
    flat: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def _rows(rows: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for row in rows:
        yield row
        for group in row.get("experiments") or []:
            yield from _rows(group.get("revs") or [])


def experiment_points(exp_show: Sequence[Mapping[str, Any]], param: str = "threshold",
                      metrics_file: str = SUMMARY_FILE) -> list[ExperimentPoint]:
    """Points with the numeric ``param`` (dotted path, any params file) and ``metrics_file``."""
    if not isinstance(exp_show, list):
        raise ValueError(f"exp_show: expected the list printed by `dvc exp show --json`, got {type(exp_show).__name__}")
    points: list[ExperimentPoint] = []
    for row in _rows(exp_show):
        data = row.get("data")
        if row.get("error") or not isinstance(data, Mapping):
            continue
        values = [_lookup(params.get("data") or {}, param) for params in (data.get("params") or {}).values()]
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        metrics = ((data.get("metrics") or {}).get(metrics_file) or {}).get("data")
        if not values or not isinstance(metrics, Mapping):
            continue
        point = ExperimentPoint(row.get("name") or str(row.get("rev", "?"))[:7], float(values[0]), flatten(metrics))
        if not any(p.value == point.value and p.metrics == point.metrics for p in points):
            points.append(point)
    return points


def error_keys(points: Sequence[ExperimentPoint]) -> list[str]:
    """The summary's error keys: its top-level numbers (``<cell>-<method>``), in first-seen order."""
    return list(dict.fromkeys(key for point in points for key in point.metrics if "." not in key))


def _series(points: Sequence[ExperimentPoint], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All (value, metric) points of ``key`` and the per-value means through which the line runs."""
    pairs = sorted((point.value, point.metrics[key]) for point in points if key in point.metrics)
    x = np.array([value for value, _ in pairs])
    y = np.array([metric for _, metric in pairs])
    levels = np.unique(x)
    return x, y, levels, np.array([y[x == level].mean() for level in levels])


def plot_threshold_ablation(points: Sequence[ExperimentPoint], out: str | Path, keys: Sequence[str] | None = None,
                            param_label: str = "confidence threshold τ") -> Path:
    """Error (and mask rate, when the summary has it) against the param, one line per cell × method."""
    keys = list(keys) if keys else error_keys(points)
    if not points or not keys:
        raise ValueError("no experiment has both the param and an error metric to plot")
    missing = [key for key in keys if not any(key in point.metrics for point in points)]
    if missing:
        raise ValueError(f"metric {missing[0]!r} is in no experiment; available: {', '.join(error_keys(points))}")
    mask_keys = [key for key in keys if any(f"{MASK_RATE_GROUP}.{key}" in p.metrics for p in points)]
    panels = 2 if mask_keys else 1
    figure = Figure(figsize=(PANEL_INCHES[0] * panels, PANEL_INCHES[1]), dpi=DPI, layout="constrained")
    axes = figure.add_subplot(1, panels, 1)
    for index, key in enumerate(keys):
        x, y, levels, means = _series(points, key)
        axes.plot(levels, means, color=f"C{index % 10}", marker="o", label=key)
        axes.scatter(x, y, color=f"C{index % 10}", s=12, alpha=0.5)
    axes.set_title(f"Test error vs {param_label} ({len(points)} experiments)")
    axes.set_xlabel(param_label)
    axes.set_ylabel("test error (%), mean over folds")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if mask_keys:
        axes = figure.add_subplot(1, panels, 2)
        for index, key in enumerate(keys):
            if key in mask_keys:
                x, y, levels, means = _series(points, f"{MASK_RATE_GROUP}.{key}")
                axes.plot(levels, means * 100, color=f"C{index % 10}", marker="o", label=key)
                axes.scatter(x, y * 100, color=f"C{index % 10}", s=12, alpha=0.5)
        axes.set_title(f"Mask rate vs {param_label}")
        axes.set_xlabel(param_label)
        axes.set_ylabel("final mask rate (% of unlabeled images)")
        axes.set_ylim(0, 100)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return save_figure(figure, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-show-json", required=True, help="output of `dvc exp show --json`, or - for stdin")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--param", default="threshold", help="dotted params key on the x axis (default: threshold)")
    parser.add_argument("--metrics-file", default=SUMMARY_FILE, help=f"summary metrics file (default: {SUMMARY_FILE})")
    parser.add_argument("--metric", action="append", help="error key to plot, e.g. digits_20-fixmatch_ra "
                                                          "(repeatable; default: every error key)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.exp_show_json == "-" else Path(args.exp_show_json).read_text(encoding="utf-8")
    try:
        points = experiment_points(json.loads(text), args.param, args.metrics_file)
        if not points:
            raise ValueError(f"no experiment in the input has both the param {args.param!r} "
                             f"and metrics from {args.metrics_file!r}")
        label = "confidence threshold τ" if args.param == "threshold" else args.param
        out = plot_threshold_ablation(points, args.out, args.metric, param_label=label)
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(points)} experiments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
