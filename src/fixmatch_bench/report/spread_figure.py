"""The spread study (:mod:`fixmatch_bench.tools.spread`) as a Markdown table and a figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

PANEL_INCHES = (4.8, 3.6)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def spread_markdown(spread: Mapping[str, Any]) -> str:
    """Per cell: each fold's error under each variation, the variation means, and the statistics."""
    host = spread["machine"]
    lines = [f"# Spread of the {spread['suite']} suite under changes of the arithmetic", "",
             f"Measured on {host['cpu']} ({host['cores']} cores), torch {host['torch']}, "
             f"by `make baseline`: {len(spread['runs'])} runs, {spread['training_time_s'] / 60:.1f} min of training.", "",
             f"Rule: {spread['rule']}.", "", "Variations:", ""]
    for variation in spread["variations"]:
        threads = "torch's default threads" if variation["threads"] is None else f"{variation['threads']} thread(s)"
        overrides = ", ".join(f"`{k}={v}`" for k, v in variation["overrides"].items()) or "no overrides"
        lines.append(f"- `{variation['name']}`: {threads}, {overrides}")
    names = [variation["name"] for variation in spread["variations"]]
    for cell, stats in spread["statistics"].items():
        lines += ["", f"## {cell}", "", "| fold | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for fold, by_variation in stats["errors"].items():
            lines.append(f"| {fold} | " + " | ".join(_number(by_variation.get(name)) for name in names) + " |")
        lines.append("| mean | " + " | ".join(_number(stats["variation_means"].get(name)) for name in names) + " |")
        lines += ["", f"Baseline {stats['mean']:.2f} ± {stats['tolerance']:.2f} (tolerance); "
                      f"σ_run {_number(stats['sigma_run'])} (over {stats['sigma_run_folds']} folds), "
                      f"σ_mean {_number(stats['sigma_mean'])} (over the suite's {stats['folds']}), "
                      f"largest shift of a variation's mean {stats['largest_shift']:.2f}, "
                      f"fold-to-fold std {_number(stats['fold_std'])}."]
    return "\n".join(lines) + "\n"


def spread_figure(statistics: Mapping[str, Mapping[str, Any]], records: Sequence[Mapping[str, Any]]) -> Figure:
    """One panel per cell: each fold's error per variation, each variation's mean, and the tolerance band."""
    cells = list(statistics)
    figure = Figure(figsize=(PANEL_INCHES[0] * len(cells), PANEL_INCHES[1]), layout="constrained")
    axes = figure.subplots(1, len(cells), squeeze=False)[0]
    variations = sorted({record["variation"] for record in records})
    colours = {name: f"C{i % 10}" for i, name in enumerate(variations)}
    for ax, cell in zip(axes, cells):
        stats = statistics[cell]
        folds = sorted({record["fold"] for record in records if record["cell"] == cell})
        offsets = np.linspace(-0.25, 0.25, len(variations)) if len(variations) > 1 else np.zeros(1)
        for offset, name in zip(offsets, variations):
            by_fold = {r["fold"]: r["error"] for r in records if r["cell"] == cell and r["variation"] == name}
            ax.scatter([folds.index(f) + offset for f in folds], [by_fold[f] for f in folds], s=14,
                       color=colours[name], label=name)
            ax.scatter([len(folds) + offset], [stats["variation_means"][name]], s=22, marker="D", color=colours[name])
        low, high = stats["mean"] - stats["tolerance"], stats["mean"] + stats["tolerance"]
        ax.fill_between([len(folds) - 0.4, len(folds) + 0.4], low, high, color="0.85", zorder=0,
                        label="baseline ± tolerance")
        ax.axhline(stats["mean"], color="0.5", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(folds) + 1), [f"fold {f}" for f in folds] + ["mean"])
        ax.set_title(cell, fontsize=10)
        ax.set_ylabel("test error (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return figure
