"""Projected GPU-hours of a suite, from the steps/s that the throughput benchmark measured.

A run's cost depends on its *workload*: the network and image shape of its dataset,
its method's views (supervised, RandAugment or CTAugment) and the batch. The
benchmark (``python -m fixmatch_bench.tools.bench``, ``make gpu-check``) records each
configuration's workload beside its figures in ``reports/throughput.json``; a run
is projected from the figure of its own workload only, never from another one's,
and a workload without a figure is reported as not measured.

Two settings are projected: the protocol's (the paper suite's speed options:
fp32 eager, TF32 off, deterministic kernels; the report names them) and the
fastest setting that keeps the algorithm (every speed option but
``weak_no_grad``, which changes BatchNorm's statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..core.params import run_params
from ..core.runs import Run
from ..core.schema import Params
from ..train.budget import workload

ALGORITHM_CHANGING = ("weak_no_grad",)


def keeps_the_algorithm(options: dict[str, Any]) -> bool:
    return not any(options.get(name) for name in ALGORITHM_CHANGING)


@dataclass(frozen=True)
class Figure:
    """A measured steps/s and the speed options it was measured with."""

    steps_per_s: float
    label: str


def measured_figures(throughput: dict[str, Any]) -> dict[str, dict[str, Figure]]:
    """``{workload: {"protocol": Figure, "fastest": Figure}}`` from a throughput report (CUDA only).

    ``fastest`` is the highest steps/s among the measurements that keep the algorithm.
    """
    if throughput.get("device_type") != "cuda":
        return {}
    protocol = throughput["protocol_options"]
    figures: dict[str, dict[str, Figure]] = {}
    for row in throughput.get("results", []):
        key = row.get("workload")
        measured = [(rung.get("label", "suite"), rung) for rung in row.get("ladder", [])]
        measured += [(name, row[name]) for name in ("protocol", "suite") if isinstance(row.get(name), dict)]
        for label, entry in measured:
            if key is None or "steps_per_s" not in entry or not keeps_the_algorithm(entry.get("speed_options", {})):
                continue
            figure = Figure(entry["steps_per_s"], label)
            own = figures.setdefault(key, {})
            if entry.get("speed_options") == protocol:
                own["protocol"] = figure
            if "fastest" not in own or figure.steps_per_s > own["fastest"].steps_per_s:
                own["fastest"] = figure
    return figures


@dataclass(frozen=True)
class WorkloadCost:
    workload: str
    runs: int
    steps: int  # all its runs together
    protocol: Figure | None
    fastest: Figure | None

    def hours(self, setting: str) -> float | None:
        figure = getattr(self, setting)
        return None if figure is None else self.steps / figure.steps_per_s / 3600.0


def project(params: Params, runs: Iterable[Run], throughput: dict[str, Any] | None) -> list[WorkloadCost]:
    """The runs grouped by workload, with their steps and the figures that project their hours."""
    figures = measured_figures(throughput or {})
    grouped: dict[str, list[int]] = {}
    for run in runs:
        grouped.setdefault(workload(params, run), []).append(run_params(params, run).train.steps)
    return [WorkloadCost(key, len(steps), sum(steps), figures.get(key, {}).get("protocol"),
                         figures.get(key, {}).get("fastest"))
            for key, steps in grouped.items()]


def summary(costs: list[WorkloadCost]) -> dict[str, Any]:
    """The projection as JSON-able data: per workload its runs, steps and hours at each setting
    (``None``: not measured), and the totals with the number of runs that have no figure."""
    def setting(cost: WorkloadCost, name: str) -> dict[str, Any] | None:
        figure = getattr(cost, name)
        return None if figure is None else {"steps_per_s": figure.steps_per_s, "label": figure.label,
                                             "hours": cost.hours(name)}

    totals = {name: {"hours": sum(cost.hours(name) or 0.0 for cost in costs),
                     "runs_not_measured": sum(cost.runs for cost in costs if cost.hours(name) is None)}
              for name in SETTINGS}
    return {"workloads": [{"workload": cost.workload, "runs": cost.runs, "steps": cost.steps,
                           **{name: setting(cost, name) for name in SETTINGS}} for cost in costs],
            "totals": totals}


SETTINGS = {"protocol": "protocol (the paper suite's speed options)",
            "fastest": "fastest setting that keeps the algorithm"}


def render(projection: dict[str, Any], device: str) -> list[str]:
    """Markdown lines of a :func:`summary`: one row per workload, then the totals."""
    def cell(entry: dict[str, Any] | None) -> str:
        if entry is None:
            return "not measured on this device"
        return f"{entry['hours']:,.1f} h at {entry['steps_per_s']:.2f} steps/s ({entry['label']})"

    lines = [f"Projected GPU-hours on {device} (a run's steps / the steps/s measured for its workload):", "",
             f"| workload | runs | steps | {SETTINGS['protocol']} | {SETTINGS['fastest']} |", "|---|---|---|---|---|"]
    lines += [f"| {row['workload']} | {row['runs']} | {row['steps']:,} | {cell(row['protocol'])} | "
              f"{cell(row['fastest'])} |" for row in projection["workloads"]]
    lines.append("")
    for name, text in SETTINGS.items():
        total = projection["totals"][name]
        missing = total["runs_not_measured"]
        note = f", plus {missing} runs with no figure on this device" if missing else ""
        lines.append(f"- Total at the {text}: {total['hours']:,.1f} GPU-hours{note}.")
    return lines
