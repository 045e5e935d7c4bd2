"""What a suite will cost, before it starts: ``python -m fixmatch_bench.tools.plan [-S key=value ...]``.

Prints, without training, the runs a suite trains (from conf/ composed with the same
overrides as ``dvc exp run -S``), their steps, the disk for data, models and
checkpoints, the memory each workload needs at least (:mod:`.train.memory`) and the
projected hours from the throughput figures this project has measured:
``reports/throughput.json`` (``make gpu-check``, ``python -m fixmatch_bench.tools.bench``)
and the steps/s that the suite's own runs recorded (``reports/runs.json``).
A workload with no figure is reported as not measured.

The train stage asks the same two questions of each run before it starts
(:func:`~fixmatch_bench.train.budget.refuse_unaffordable`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .compose import compose_params
from ..core.errors import ParamsError
from ..core.params import run_params, validate_params
from ..core.runs import Run, all_runs
from ..core.schema import Params
from ..report import gpu_hours
from ..train.budget import workload
from ..train.memory import GIB, estimate
from ..models.wide_resnet import WideResNet

MIB = 2**20


def run_figures(params: Params, runs_file: Path) -> dict[str, dict[str, gpu_hours.Figure]]:
    """Steps/s that the suite's finished runs recorded (``reports/runs.json``), per workload and device:
    ``{workload: {device: Figure}}``."""
    records = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    measured: dict[tuple[str, str], list[float]] = {}
    for run in all_runs(params):
        record = records.get(run.key)
        if record is not None:
            measured.setdefault((workload(params, run), record["device"]), []).append(record["steps_per_s"])
    figures: dict[str, dict[str, gpu_hours.Figure]] = {}
    for (key, device), rates in measured.items():
        figures.setdefault(key, {})[device] = gpu_hours.Figure(
            statistics.median(rates), f"median of {len(rates)} of this suite's runs on {device}")
    return figures


def load_throughput(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


@dataclass(frozen=True)
class Disk:
    prepared: int  # the datasets' arrays
    raw: int | None  # the downloaded archives, where they are on disk
    model: int  # one run's EMA weights
    checkpoint: int  # one unfinished run's checkpoint


def disk(params: Params, runs: Iterable[Run], data: Path) -> dict[str, Disk]:
    """Per dataset of ``runs``: its prepared arrays, its raw files if downloaded, a model and a checkpoint."""
    sizes = {}
    for dataset in dict.fromkeys(run.dataset for run in runs):
        facts = params.datasets[dataset]
        image = facts.channels * facts.image_size ** 2
        raw_dir = data / "raw" / dataset
        raw = sum(path.stat().st_size for path in raw_dir.rglob("*") if path.is_file()) if raw_dir.exists() else None
        model = WideResNet(num_classes=facts.num_classes, in_channels=facts.channels, **facts.network.kwargs())
        weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
        optimizer_state = 2 if params.train.optimizer == "adam" else 1
        sizes[dataset] = Disk(prepared=(facts.train_size + facts.unlabeled_size + facts.test_size) * image,
                              raw=raw, model=weights, checkpoint=weights * (2 + optimizer_state))
    return sizes


def _size(size: float) -> str:
    return f"{size / GIB:,.1f} GiB" if size >= GIB / 10 else f"{size / MIB:,.1f} MiB"


def _duration(hours: float) -> str:
    return f"{hours:,.1f} h" if hours >= 1 else f"{hours * 60:,.1f} min"


def render(params: Params, overrides: list[str], throughput: dict[str, Any] | None,
           own: dict[str, dict[str, gpu_hours.Figure]], data: Path) -> str:
    runs = all_runs(params)
    supervised = sum(run.method == params.baseline for run in runs)
    steps = sum(run_params(params, run).train.steps for run in runs)
    lines = [f"# Plan of the {params.suite_name!r} suite" + (f" ({' '.join(overrides)})" if overrides else ""), "",
             f"{len(runs)} runs ({supervised} {params.baseline}, {len(runs) - supervised} of other methods) on "
             f"{len(params.cells)} cells x {len(params.folds)} folds, {steps:,} steps in all.", "",
             "| workload | runs | steps | memory, at least | measured steps/s | projected time |",
             "|---|---|---|---|---|---|"]
    costs = gpu_hours.project(params, runs, throughput)
    total, unmeasured = 0.0, 0
    for cost in costs:
        run = next(run for run in runs if workload(params, run) == cost.workload)
        figure = cost.protocol or next(iter(own.get(cost.workload, {}).values()), None)
        if figure is None:
            unmeasured += cost.runs
            rate, hours = "not measured on this device", "not measured"
        else:
            total += cost.steps / figure.steps_per_s / 3600
            rate, hours = f"{figure.steps_per_s:.2f} ({figure.label})", _duration(cost.steps / figure.steps_per_s / 3600)
        lines.append(f"| {cost.workload} | {cost.runs} | {cost.steps:,} | "
                     f"{_size(estimate(run_params(params, run), run).total)} | {rate} | {hours} |")
    if unmeasured == len(runs):
        lines += ["", "Projected time: not measured (no steps/s measured on this device: run `make gpu-check`, "
                      "or one run of each workload)."]
    else:
        lines += ["", f"Projected time: {_duration(total)} of training"
                  + (f", plus {unmeasured} runs not measured on this device." if unmeasured else ".")]
    if throughput is not None and throughput.get("device_type") == "cuda":
        lines += ["", *gpu_hours.render(gpu_hours.summary(costs), throughput["device"])]
    sizes = disk(params, runs, data)
    raw = [size.raw for size in sizes.values()]
    raw_text = (f"{_size(sum(raw))} downloaded" if None not in raw else
                "not all downloaded yet (the archives are about the size of the prepared arrays)")
    lines += ["", "Disk:",
              f"- data: {_size(sum(size.prepared for size in sizes.values()))} of prepared arrays; raw archives: "
              f"{raw_text}",
              f"- models: {_size(sum(sizes[run.dataset].model for run in runs))} (the EMA weights of {len(runs)} runs)",
              f"- checkpoints: up to {_size(max(size.checkpoint for size in sizes.values()))} per run in training "
              "(removed when it finishes, unless checkpoints.keep_finished)",
              "- DVC's cache holds another copy of the data and models unless its cache.type links them"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override, as with `dvc exp run -S` (suite=paper, train.steps=2048, ...)")
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="where throughput.json and the runs' records (runs.json) are")
    parser.add_argument("--data", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    try:
        params = validate_params(compose_params(args.overrides))
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(render(params, args.overrides, load_throughput(args.reports / "throughput.json"),
                 run_figures(params, args.reports / "runs.json"), args.data), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
