"""How far a suite's numbers move when only the arithmetic changes, and the baseline tolerances that follow.

Training is deterministic on one machine, but another CPU's kernels round
differently, and a 1,024-step run on 20 labels amplifies a rounding difference
into points of error on a fold. ``make baseline`` (``python -m
fixmatch_bench.tools.spread``) measures that spread instead of guessing it: it
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
around its own mean, ``V − 1`` degrees of freedom per fold), estimated on the
plan's ``folds`` (more than the suite runs, for a steadier estimate; the study
draws their splits itself), and ``σ_mean = σ_run / √folds`` that of the cell's
mean over the suite's independent folds. The
fold-to-fold spread is recorded beside it: it is what separates folds, not what
moves one fold between machines, so it does not widen the tolerance.
"""

from __future__ import annotations

import argparse
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

from ..core.errors import ParamsError
from ..core.params import load_params, validate_params
from ..core.runs import Run, expected_runs, parse_cell
from ..core.schema import Params
from ..core.progress import progress

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
    """The variations, the factor on σ_mean, and the folds trained to estimate σ_run
    (empty: the suite's own folds)."""

    factor: float
    variations: tuple[Variation, ...]
    folds: tuple[int, ...] = ()


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
    folds = raw.get("folds") or []
    if not isinstance(folds, list) or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in folds):
        raise ParamsError(f"invalid spread plan {path}: folds = {folds!r} (a list of split seeds >= 1, or absent)")
    return SpreadPlan(float(factor), chosen, tuple(folds))


def spread_folds(plan: SpreadPlan, params: Params) -> list[int]:
    """The folds the study trains: the plan's, which must include every fold of the suite."""
    if not plan.folds:
        return list(params.folds)
    missing = sorted(set(params.folds) - set(plan.folds))
    if missing:
        raise ParamsError(f"invalid spread plan: folds {list(plan.folds)} lack the suite's folds {missing}")
    return list(plan.folds)


def apply_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """``params`` with dotted keys (``speed.channels_last``) replaced, validated; keys must exist."""
    result = params.model_dump()
    for dotted, value in overrides.items():
        node = result
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise ParamsError(f"invalid spread override: {dotted} is not a key of params.yaml")
        node[last] = value
    return validate_params(result)


def _train_run(params: Params, run: Run, variation: Variation, prepared: Path, splits: Path) -> dict:
    """Train one run in this (fresh) worker process and return its record (``splits``: the study's own)."""
    import torch

    from ..train.trainer import train

    if variation.threads is not None:
        torch.set_num_threads(variation.threads)
    with tempfile.TemporaryDirectory(prefix="spread-") as out:
        metrics = train(params, run, prepared / run.dataset, splits / f"{run.cell}-{run.fold}.json", Path(out),
                        progress=False)
    return {"variation": variation.name, "cell": run.name, "fold": run.fold, "error": metrics["error"],
            "threads": torch.get_num_threads(), "wall_time_s": metrics["wall_time_s"]}


# Which runs a suite lists, not how one run computes: left out of a record's key.
SUITE_LISTS = ("data", "cells", "baseline", "ssl_methods", "cell_methods", "folds", "runs")


def _task_key(params: Params, run: Run, variation: Variation) -> str:
    """What a finished record stands for: the run, its params after the overrides, its thread count."""
    computing = params.model_dump(exclude=set(SUITE_LISTS))
    text = json.dumps([computing, run.key, variation.threads], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_splits(params: Params, folds: Sequence[int], prepared: Path, out: Path) -> Path:
    """The labeled splits of every cell on ``folds``, drawn as the split stage draws them."""
    from ..data.prepared import load_prepared
    from ..data.splits import make_split, write_split

    for cell in params.cells:
        dataset, labels = parse_cell(cell, params.datasets)
        for fold in folds:
            write_split(make_split(load_prepared(prepared / dataset), labels, fold), out / f"{cell}-{fold}.json")
    return out


def measure(params: Params, plan: SpreadPlan, prepared: Path, partial: Path) -> list[dict]:
    """Every run of the suite, on the plan's folds, under every variation, one at a time, each in
    a fresh process (as a DVC stage).

    One run at a time: two runs side by side would share the cores and change
    nothing but the time (OpenMP threads of two processes on the same cores
    slow both down severalfold). Each finished run is appended to ``partial``,
    and a rerun after an interruption skips the runs recorded there.
    """
    folds = spread_folds(plan, params)
    runs = expected_runs(params.model_copy(update={"folds": folds}))
    tasks = [(apply_overrides(params, v.overrides), run, v) for v in plan.variations for run in runs]
    keys = [_task_key(p, run, v) for p, run, v in tasks]
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            record = json.loads(line)
            done[record.pop("key")] = record
    context = multiprocessing.get_context("spawn")
    with progress(len(tasks), "spread", unit="run", initial=sum(key in done for key in keys)) as bar, \
            partial.open("a") as log, tempfile.TemporaryDirectory(prefix="spread-splits-") as splits:
        splits = write_splits(params, folds, prepared, Path(splits))
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


def cell_statistics(records: Sequence[Mapping[str, Any]], factor: float, floor: float,
                    suite_folds: Sequence[int] | None = None) -> dict[str, dict]:
    """Per cell: the mean over variations, σ_run, σ_mean, the fold-to-fold std and the tolerance.

    σ_run pools every recorded fold; the mean, σ_mean (= σ_run / √folds), the fold-to-fold
    std and the variation means use the suite's folds (default: every recorded fold).
    """
    cells: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        cells.setdefault(record["cell"], {}).setdefault(record["fold"], {})[record["variation"]] = record["error"]
    statistics = {}
    for cell, folds in cells.items():
        variations = sorted({name for errors in folds.values() for name in errors})
        if any(set(errors) != set(variations) for errors in folds.values()):
            raise ValueError(f"spread: cell {cell} lacks some fold under some variation")
        every = np.array([[folds[fold][name] for name in variations] for fold in sorted(folds)])  # folds x variations
        squares = float(((every - every.mean(axis=1, keepdims=True)) ** 2).sum())
        n_variations = every.shape[1]
        sigma_run = math.sqrt(squares / (every.shape[0] * (n_variations - 1))) if n_variations > 1 else None
        chosen = sorted(folds) if suite_folds is None else sorted(suite_folds)
        if not set(chosen) <= set(folds):
            raise ValueError(f"spread: cell {cell} lacks the suite's folds {sorted(set(chosen) - set(folds))}")
        table = np.array([[folds[fold][name] for name in variations] for fold in chosen])
        n_folds = table.shape[0]
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
            "sigma_run_folds": every.shape[0],
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


def write_outputs(suite: str, plan: SpreadPlan, floor: float, records: list[dict], out_dir: Path,
                  suite_folds: Sequence[int]) -> dict[str, Path]:
    """The baseline, the raw spread, its table and its figure, side by side in ``out_dir``."""
    from ..report.spread_figure import spread_figure, spread_markdown

    statistics = cell_statistics(records, plan.factor, floor, suite_folds)
    estimated_on = sorted({record["fold"] for record in records})
    rule = (f"tolerance = max(check.floor = {floor:g}, factor = {plan.factor:g} x sigma_mean); sigma_mean = "
            f"sigma_run / sqrt(folds), over the suite's folds {list(suite_folds)}; sigma_run = pooled std of a "
            f"fold's error across variations, over folds {estimated_on}")
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
    parser.add_argument("--out-dir", type=Path, default=BASELINES)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        plan = load_plan(args.plan, args.only)
        for variation in plan.variations:  # every override is checked before any training starts
            apply_overrides(params, variation.overrides)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        partial = args.out_dir / f"{params.suite_name}_spread.partial.jsonl"
        records = measure(params, plan, args.prepared, partial)
        paths = write_outputs(params.suite_name, plan, params.check.floor, records, args.out_dir, params.folds)
        partial.unlink()
    except (ParamsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
