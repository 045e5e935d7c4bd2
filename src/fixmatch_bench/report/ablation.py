"""Ablation figures and tables: error against the swept params, from a suite's ablation runs or
from a set of DVC experiments, through one function (:func:`plot_ablation`).

- A suite's ``ablations`` (conf/suite/ablation.yaml, quick_ablation.yaml): the aggregate stage
  calls :func:`suite_points` per axis and writes ``reports/ablation/<axis>.png`` and a table.
- Queued experiments (``dvc exp run --queue -S threshold=0.8 ...``): ``dvc exp show --json``
  piped into this module's CLI gives the same figure from :func:`experiment_points`::

      dvc exp show --json | python -m fixmatch_bench.report.ablation --exp-show-json - --out reports/threshold.png

``dvc exp show --json`` (DVC 3.x) prints a list of rows: the workspace, then each baseline
commit, with its experiments nested under ``experiments[i]["revs"]``. Every row has ``rev``,
``name``, ``error`` and ``data`` = ``{"params": {file: {"data": {...}}}, "metrics": {file:
{"data": {...}}}, ...}``. A failed or queued experiment has an ``error`` or no ``data`` and is
skipped; the workspace row repeats the last applied experiment, so identical points are kept once
(the experiment's).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fixmatch_bench.core.params import with_variant
from fixmatch_bench.core.runs import Run, expected_runs, format_value
from fixmatch_bench.core.schema import Params
from fixmatch_bench.report.cells import load_run
from fixmatch_bench.report.plots import DPI, PANEL_INCHES, save_figure
from fixmatch_bench.report.published import Published, PublishedAblation

SUMMARY_FILE = "reports/summary.json"
MASK_RATE_GROUP = "mask_rate"
PROTOCOL = "protocol"


@dataclass(frozen=True)
class AblationPoint:
    """One measured setting of an ablation: one line or bar group per ``series`` (a cell × method).

    ``settings`` holds the swept params' values, ``changes`` what the run changed from the suite
    (``{}`` for the protocol's own run; ``None`` where not known, as for an experiment).
    """

    series: str
    settings: Mapping[str, Any]
    error: float | None
    mask_rate: float | None = None
    changes: Mapping[str, Any] | None = None
    folds: tuple[int, int] = (1, 1)  # (done, expected)
    label: str = ""

    @property
    def is_protocol(self) -> bool:
        return self.changes == {}


# ------------------------------------------------------------ points from a suite's runs


def _value(data: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def _settings(params: Params, changes: Mapping[str, Any], keys: Sequence[str], method: str,
              axis: str) -> dict[str, Any]:
    """The values of the axis's ``keys`` in the run's params (``method.<key>``: the run's method block)."""
    values = (with_variant(params, changes, where=f"ablations.{axis}", method=method) if changes else params).model_dump()
    return {key: _value(values, f"methods.{method}.{key.removeprefix('method.')}" if key.startswith("method.") else key)
            for key in keys}


def axis_keys(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    """The params an axis changes, in first-seen order."""
    return list(dict.fromkeys(key for variant in variants for key in variant))


def suite_points(params: Params, axis: str, results_dir: str | Path) -> list[AblationPoint]:
    """The protocol's runs and one point per variant of ``axis``, for every semi-supervised cell ×
    method of the suite: the mean error over the folds that finished (``None`` when none did)."""
    variants = params.ablations[axis]
    keys = axis_keys(variants)
    bases = [run for run in expected_runs(params) if run.method in params.ssl_methods]
    points = []
    for changes in [{}, *variants]:
        for series in dict.fromkeys(run.name for run in bases):
            runs = [Run(run.dataset, run.labels, run.method, run.fold, tuple(changes.items()))
                    for run in bases if run.name == series]
            settings = _settings(params, changes, keys, runs[0].method, axis)
            results = [result for result in (load_run(run, results_dir) for run in runs) if result is not None]
            masks = [result.mask_rate for result in results if result.mask_rate is not None]
            points.append(AblationPoint(
                series, settings, float(np.mean([r.error for r in results])) if results else None,
                float(np.mean(masks)) if masks else None, dict(changes), (len(results), len(runs)),
                label=describe(changes)))
    return points


def describe(changes: Mapping[str, Any]) -> str:
    """``threshold=0.8, optimizer=adam`` (the last part of each key), or ``protocol``."""
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}" for key, value in changes.items()) or PROTOCOL


# ------------------------------------------------------------ points from experiments


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


def _rows(rows: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for row in rows:
        yield row
        for group in row.get("experiments") or []:
            yield from _rows(group.get("revs") or [])


def experiment_points(exp_show: Sequence[Mapping[str, Any]], params: Sequence[str] = ("threshold",),
                      metrics_file: str = SUMMARY_FILE, series: Sequence[str] | None = None) -> list[AblationPoint]:
    """One point per experiment and summary error key (``<cell>-<method>``, or those in ``series``)
    for the experiments that have every one of ``params`` (dotted keys, any params file)."""
    if not isinstance(exp_show, list):
        raise ValueError(f"exp_show: expected the list printed by `dvc exp show --json`, got {type(exp_show).__name__}")
    points: list[AblationPoint] = []
    for row in sorted(_rows(exp_show), key=lambda row: row.get("rev") == "workspace"):  # named rows first
        data = row.get("data")
        if row.get("error") or not isinstance(data, Mapping):
            continue
        files = [(file.get("data") or {}) for file in (data.get("params") or {}).values()]
        settings = {key: next((_value(file, key) for file in files if _value(file, key) is not None), None)
                    for key in params}
        metrics = ((data.get("metrics") or {}).get(metrics_file) or {}).get("data")
        if any(value is None or isinstance(value, (dict, list)) for value in settings.values()) \
                or not isinstance(metrics, Mapping):
            continue
        flat = flatten(metrics)
        for key in series or [key for key in flat if "." not in key]:
            if key in flat:
                point = AblationPoint(key, settings, flat[key], flat.get(f"{MASK_RATE_GROUP}.{key}"),
                                      label=row.get("name") or str(row.get("rev", "?"))[:9])
                if not any((p.series, p.settings, p.error) == (point.series, point.settings, point.error)
                           for p in points):
                    points.append(point)
    return points


# ------------------------------------------------------------ the one plotting function


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class _Layout:
    """Lines against one numeric param (one line per series and value of a second), or bars."""

    kind: str
    x: str | None = None
    group: str | None = None
    bars: list[str] = field(default_factory=list)


def _layout(points: Sequence[AblationPoint]) -> _Layout:
    swept_points = [p for p in points if not p.is_protocol] or list(points)
    keys = list(dict.fromkeys(key for point in swept_points for key in point.settings))
    swept = [k for k in keys if len({json.dumps(p.settings.get(k)) for p in swept_points}) > 1]
    if swept and len(swept) <= 2 and all(_is_number(p.settings.get(k)) for k in swept for p in swept_points):
        distinct = {k: len({p.settings.get(k) for p in swept_points}) for k in swept}
        x = max(swept, key=lambda k: (distinct[k], -swept.index(k)))
        return _Layout("line", x, next((k for k in swept if k != x), None))
    return _Layout("bars", bars=list(dict.fromkeys(p.label or describe(p.settings) for p in points)))


def _on_line(point: AblationPoint, points: Sequence[AblationPoint], layout: _Layout) -> bool:
    """Whether the protocol's point belongs on the lines: it shares every value the swept points hold fixed."""
    fixed = [k for k in point.settings if k not in (layout.x, layout.group)]
    others = [p for p in points if not p.is_protocol]
    return _is_number(point.settings.get(layout.x)) and all(
        p.settings.get(k) == point.settings.get(k) for p in others for k in fixed)


def plot_ablation(points: Sequence[AblationPoint], out: str | Path, title: str,
                  published: Sequence[PublishedAblation] = ()) -> Figure:
    """Error (and mask rate, where known) against the swept params: lines for one or two numeric
    params, bars otherwise. The protocol's run is a point on the lines where it fits, else a dashed
    line; published values (matched on the run's changes) are black diamonds."""
    points = [point for point in points if point.error is not None]
    if not points:
        raise ValueError(f"{title}: no finished run or experiment to plot")
    layout = _layout(points)
    series = list(dict.fromkeys(point.series for point in points))
    with_mask = any(point.mask_rate is not None for point in points)
    panels = 2 if with_mask else 1
    wide = 1.5 if layout.kind == "bars" and len(layout.bars) > 4 else 1.0
    figure = Figure(figsize=(PANEL_INCHES[0] * panels * wide, PANEL_INCHES[1]), dpi=DPI, layout="constrained")
    for panel, (metric, label) in enumerate([("error", "test error (%)"), ("mask_rate", "mask rate (%)")][:panels]):
        axes = figure.add_subplot(1, panels, panel + 1)
        values = {id(p): (p.error if metric == "error" else None if p.mask_rate is None else p.mask_rate * 100)
                  for p in points}
        positions = {}
        for index, name in enumerate(series):
            color = f"C{index % 10}"
            mine = [p for p in points if p.series == name and values[id(p)] is not None]
            if layout.kind == "bars":
                width = 0.8 / len(series)
                for p in mine:
                    positions[id(p)] = layout.bars.index(p.label or describe(p.settings)) + (index - (len(series) - 1) / 2) * width
                    axes.bar(positions[id(p)], values[id(p)], width, color=color, alpha=0.9 if not p.is_protocol else 0.5,
                             label=name if p is mine[0] else None)
                continue
            groups = dict.fromkeys(p.settings.get(layout.group) for p in mine if not p.is_protocol)
            for number, group in enumerate(groups):
                line = sorted((p for p in mine if (not p.is_protocol and p.settings.get(layout.group) == group)
                               or (p.is_protocol and _on_line(p, points, layout)
                                   and (layout.group is None or p.settings.get(layout.group) == group))),
                              key=lambda p: p.settings[layout.x])
                for p in line:
                    positions[id(p)] = p.settings[layout.x]
                suffix = f", {layout.group.rsplit('.', 1)[-1]}={format_value(group)}" if layout.group else ""
                axes.plot([p.settings[layout.x] for p in line], [values[id(p)] for p in line], color=color,
                          marker="os^vD<>"[number % 7], label=f"{name}{suffix}")
            for p in mine:
                if p.is_protocol:
                    if id(p) in positions:
                        axes.scatter([positions[id(p)]], [values[id(p)]], s=120, marker="*", color=color, zorder=3,
                                     label=f"{PROTOCOL} ({name})")
                    else:
                        axes.axhline(values[id(p)], color=color, linestyle="--", label=f"{PROTOCOL} ({name})")
        if metric == "error":
            shown = False
            for entry in published:
                for p in points:
                    if p.changes == entry.settings and p.series == entry.series and id(p) in positions:
                        axes.scatter([positions[id(p)]], [entry.error], marker="D", facecolors="none",
                                     edgecolors="black", s=50, zorder=4, label=None if shown else "published")
                        shown = True
        if layout.kind == "bars":
            axes.set_xticks(range(len(layout.bars)), layout.bars, rotation=20, ha="right", fontsize="small")
        else:
            axes.set_xlabel(layout.x)
        axes.set_ylabel(label + (", mean over folds" if metric == "error" else ""))
        axes.set_title(f"{title}: {'error' if metric == 'error' else 'final mask rate'}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    save_figure(figure, out)
    return figure


# ------------------------------------------------------------ the suite's tables


def write_suite_ablations(params: Params, results_dir: str | Path, published: Published, out: str | Path) -> list[Path]:
    """``<out>/ablation.md`` (every axis's table) and one figure per axis with a finished run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    lines = [f"# Ablations ({params.suite_name} suite)", ""]
    if not params.ablations:
        lines.append("This suite sweeps no ablation axis (`ablations` in params.yaml is empty).")
    written = []
    for axis in params.ablations:
        points = suite_points(params, axis, results_dir)
        lines += [f"## {axis}", "", "| setting | " + " | ".join(dict.fromkeys(p.series for p in points)) + " |",
                  "|---" * (1 + len(dict.fromkeys(p.series for p in points))) + "|"]
        for label in dict.fromkeys(p.label for p in points):
            cells = []
            for p in (p for p in points if p.label == label):
                reference = next((e for e in published.ablations if e.settings == p.changes
                                  and e.series == p.series), None)
                text = "not run yet" if p.error is None else f"{p.error:.2f} ({p.folds[0]}/{p.folds[1]})"
                if p.mask_rate is not None:
                    text += f", mask {p.mask_rate:.2f}"
                if reference is not None:
                    text += f"; published {reference.error:.2f} [{', '.join(reference.result.sources)}]"
                cells.append(text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        if any(p.error is not None for p in points):
            plot_ablation(points, out / f"{axis}.png", axis, published.ablations)
            written.append(out / f"{axis}.png")
            lines += [f"![{axis}]({axis}.png)", ""]
    if params.ablations:
        lines += ["Error: % test error of the EMA model (median of the last evaluations), mean over the folds that "
                  "finished (done/expected); published values with their sources' keys in reports/published.yaml."]
    (out / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-show-json", required=True, help="output of `dvc exp show --json`, or - for stdin")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--param", action="append", help="dotted params key swept by the experiments "
                                                         "(repeatable; default: threshold)")
    parser.add_argument("--metrics-file", default=SUMMARY_FILE, help=f"summary metrics file (default: {SUMMARY_FILE})")
    parser.add_argument("--metric", action="append", help="error key to plot, e.g. digits_20-fixmatch_ra "
                                                          "(repeatable; default: every error key)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.exp_show_json == "-" else Path(args.exp_show_json).read_text(encoding="utf-8")
    swept = args.param or ["threshold"]
    try:
        points = experiment_points(json.loads(text), swept, args.metrics_file, args.metric)
        if not points:
            raise ValueError(f"no experiment in the input has the params {', '.join(swept)} "
                             f"and {'the metrics ' + ', '.join(args.metric) if args.metric else 'metrics'} "
                             f"from {args.metrics_file!r}")
        plot_ablation(points, args.out, ", ".join(swept))
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({len({p.label for p in points})} experiments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
