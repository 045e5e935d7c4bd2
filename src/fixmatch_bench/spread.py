"""How far a suite's numbers move when only the arithmetic changes, and the baseline tolerances that follow.

Training is deterministic on one machine, but another CPU's kernels round
differently, and a 1,024-step run on 20 labels amplifies a rounding difference
into points of error on a fold. ``make baseline`` (``python -m
fixmatch_bench.spread``) measures that spread instead of guessing it: it
retrains every run of the suite in params.yaml once per variation listed in
``conf/spread.yaml`` (thread count, memory format, seed: what
changes the floating-point path or the random draws, never the algorithm), each
run in a fresh process as a DVC stage would be, and writes to
``reports/baseline/``:

- ``<suite>.json``, the baseline the check stage reads: per cell, the mean over
  variations and its tolerance;
- ``<suite>_spread.json``: every run's error under every variation, the machine
  and the statistics;
- ``<suite>_spread.md`` and ``<suite>_spread.png``: the same as a table and a figure.

Tolerance of a cell: ``max(check.floor, factor × σ_mean)``. ``σ_run`` is the
pooled standard deviation of one fold's error across variations (each fold
around its own mean, ``V − 1`` degrees of freedom per fold), and ``σ_mean =
σ_run / √folds`` that of the cell's mean over independent folds. The
fold-to-fold spread is recorded beside it: it is what separates folds, not what
moves one fold between machines, so it does not widen the tolerance.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import multiprocessing
import platform
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .core.config import ParamsError, Run, expected_runs, load_params, validate_params
from .core.progress import progress

VARIATIONS_FILE = Path("conf/spread.yaml")
BASELINES = Path("reports/baseline")


@dataclass(frozen=True)
class Variation:
    """One way to run the suite: torch threads (``None``: torch's default) and dotted params overrides."""

    name: str
    threads: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpreadPlan:
    factor: float
    variations: tuple[Variation, ...]


def load_plan(path: str | Path = VARIATIONS_FILE, only: Sequence[str] = ()) -> SpreadPlan:
    """Read ``conf/spread.yaml``; ``only`` keeps the named variations (in file order)."""
    raw = yaml.safe_load(Path(path).read_text())
    factor = raw.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor > 0:
        raise ParamsError(f"invalid spread plan {path}: factor = {factor!r} (must be a number > 0)")
    variations = []
    for name, spec in (raw.get("variations") or {}).items():
        spec = dict(spec or {})
        threads = spec.pop("threads", None)
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ParamsError(f"invalid spread plan {path}: variations.{name}.threads = {threads!r} "
                              "(must be an integer >= 1, or absent for torch's default)")
        variations.append(Variation(str(name), threads, spec))
    unknown = sorted(set(only) - {variation.name for variation in variations})
    if unknown:
        raise ParamsError(f"invalid spread plan: no variation {', '.join(unknown)} in {path} "
                          f"(allowed: {', '.join(v.name for v in variations)})")
    chosen = tuple(v for v in variations if not only or v.name in only)
    if not chosen:
        raise ParamsError(f"invalid spread plan {path}: no variations")
    return SpreadPlan(float(factor), chosen)


def apply_overrides(params: dict, overrides: Mapping[str, Any]) -> dict:
    """A validated copy of ``params`` with dotted keys (``speed.channels_last``) replaced; keys must exist."""
    result = copy.deepcopy(params)
    for dotted, value in overrides.items():
        node = result
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise ParamsError(f"invalid spread override: {dotted} is not a key of params.yaml")
        node[last] = value
    validate_params(result)
    return result


def _train_run(params: dict, run: Run, variation: Variation, prepared: Path, splits: Path) -> dict:
    """Train one run in this (fresh) worker process and return its record."""
    import torch

    from .train.trainer import train

    if variation.threads is not None:
        torch.set_num_threads(variation.threads)
    with tempfile.TemporaryDirectory(prefix="spread-") as out:
        metrics = train(params, run, prepared / run.dataset, splits / f"{run.cell}-{run.fold}.json", Path(out),
                        progress=False)
    return {"variation": variation.name, "cell": run.name, "fold": run.fold, "error": metrics["error"],
            "threads": torch.get_num_threads(), "wall_time_s": metrics["wall_time_s"]}


def _task_key(params: dict, run: Run, variation: Variation) -> str:
    """What a finished record stands for: the run, its params after the overrides, its thread count."""
    text = json.dumps([params, run.key, variation.threads], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def measure(params: dict, plan: SpreadPlan, prepared: Path, splits: Path, partial: Path) -> list[dict]:
    """Every expected run under every variation, one at a time, each in a fresh process (as a DVC stage).

    One run at a time: two runs side by side would share the cores and change
    nothing but the time (OpenMP threads of two processes on the same cores
    slow both down severalfold). Each finished run is appended to ``partial``,
    and a rerun after an interruption skips the runs recorded there.
    """
    tasks = [(apply_overrides(params, v.overrides), run, v) for v in plan.variations for run in expected_runs(params)]
    keys = [_task_key(p, run, v) for p, run, v in tasks]
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            record = json.loads(line)
            done[record.pop("key")] = record
    context = multiprocessing.get_context("spawn")
    with progress(len(tasks), "spread", unit="run", initial=sum(key in done for key in keys)) as bar, \
            partial.open("a") as log:
        for key, (task_params, run, variation) in zip(keys, tasks):
            if key in done:
                continue
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                record = pool.submit(_train_run, task_params, run, variation, prepared, splits).result()
            log.write(json.dumps({"key": key, **record}) + "\n")
            log.flush()
            done[key] = record
            bar.set_postfix(last=f"{variation.name}/{run.key} {record['error']:.2f}")
            bar.update(1)
    return [done[key] for key in keys]


def cell_statistics(records: Sequence[Mapping[str, Any]], factor: float, floor: float) -> dict[str, dict]:
    """Per cell: the mean over variations, σ_run, σ_mean, the fold-to-fold std and the tolerance."""
    cells: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        cells.setdefault(record["cell"], {}).setdefault(record["fold"], {})[record["variation"]] = record["error"]
    statistics = {}
    for cell, folds in cells.items():
        variations = sorted({name for errors in folds.values() for name in errors})
        if any(set(errors) != set(variations) for errors in folds.values()):
            raise ValueError(f"spread: cell {cell} lacks some fold under some variation")
        table = np.array([[folds[fold][name] for name in variations] for fold in sorted(folds)])  # folds x variations
        n_folds, n_variations = table.shape
        squares = float(((table - table.mean(axis=1, keepdims=True)) ** 2).sum())
        sigma_run = math.sqrt(squares / (n_folds * (n_variations - 1))) if n_variations > 1 else None
        sigma_mean = sigma_run / math.sqrt(n_folds) if sigma_run is not None else None
        variation_means = table.mean(axis=0)
        mean = float(variation_means.mean())
        statistics[cell] = {
            "mean": round(mean, 4),
            "tolerance": round(max(floor, factor * sigma_mean) if sigma_mean is not None else floor, 4),
            "sigma_run": None if sigma_run is None else round(sigma_run, 4),
            "sigma_mean": None if sigma_mean is None else round(sigma_mean, 4),
            "fold_std": round(float(np.std(table.mean(axis=1), ddof=1)), 4) if n_folds > 1 else None,
            "largest_shift": round(float(np.abs(variation_means - mean).max()), 4),
            "folds": n_folds,
            "variations": n_variations,
            "variation_means": {name: round(float(value), 4) for name, value in zip(variations, variation_means)},
            "errors": {fold: folds[fold] for fold in sorted(folds)},
        }
    return statistics


def machine() -> dict[str, Any]:
    """What the spread was measured on (CPU kernels differ between machines)."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": multiprocessing.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def write_outputs(suite: str, plan: SpreadPlan, floor: float, records: list[dict], out_dir: Path) -> dict[str, Path]:
    """The baseline, the raw spread, its table and its figure, side by side in ``out_dir``."""
    from .report.spread_figure import spread_figure, spread_markdown

    statistics = cell_statistics(records, plan.factor, floor)
    rule = (f"tolerance = max(check.floor = {floor:g}, factor = {plan.factor:g} x sigma_mean); sigma_mean = "
            "sigma_run / sqrt(folds); sigma_run = pooled std of a fold's error across variations")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{suite}{suffix}" for name, suffix in
             (("baseline", ".json"), ("spread", "_spread.json"), ("table", "_spread.md"), ("figure", "_spread.png"))}
    baseline = {"suite": suite, "rule": rule, "derivation": paths["table"].name,
                "cells": {cell: {key: stats[key] for key in ("mean", "tolerance", "sigma_mean", "folds")}
                          for cell, stats in statistics.items()}}
    paths["baseline"].write_text(json.dumps(baseline, indent=2) + "\n")
    training_s = sum(record["wall_time_s"] for record in records)
    spread = {"suite": suite, "rule": rule, "machine": machine(), "training_time_s": round(training_s, 1),
              "variations": [asdict(v) for v in plan.variations], "statistics": statistics, "runs": records}
    paths["spread"].write_text(json.dumps(spread, indent=2) + "\n")
    paths["table"].write_text(spread_markdown(spread))
    spread_figure(statistics, records).savefig(paths["figure"], dpi=100)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--plan", type=Path, default=VARIATIONS_FILE, help="variations and factor")
    parser.add_argument("--only", nargs="+", default=(), metavar="VARIATION", help="run only these variations")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--out-dir", type=Path, default=BASELINES)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        plan = load_plan(args.plan, args.only)
        for variation in plan.variations:  # every override is checked before any training starts
            apply_overrides(params, variation.overrides)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        partial = args.out_dir / f"{params['suite_name']}_spread.partial.jsonl"
        records = measure(params, plan, args.prepared, args.splits, partial)
        paths = write_outputs(params["suite_name"], plan, params["check"]["floor"], records, args.out_dir)
        partial.unlink()
    except (ParamsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
