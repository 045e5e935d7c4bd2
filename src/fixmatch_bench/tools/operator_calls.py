"""Operator calls per training step, counted by ``torch.profiler`` on CPU: a figure that is the same on every machine.

A *call* is one aten operator dispatched from Python, not nested in another one
(views such as ``aten::view`` included). On a GPU nearly every call is a kernel
launch of its own, with a few microseconds of host time each, so the count bounds
the steps/s that eager execution can reach whatever the GPU.

The step is the trainer's: :func:`~fixmatch_bench.tools.bench.suite_step` (``draw_batch``
then ``train_step``, the paper suite's params composed with ``suite=paper``) on
random images of the dataset's shape, on CPU, fp32 eager, with the augmentation
in the dense form that CUDA runs (:meth:`~fixmatch_bench.augment.Augmenter.dense`).
The first step (cached tables) is not counted. Calls are split by phase:

- ``augmentation``: drawing the batch (indices, the weak and strong views, the
  conversion to the model's input) and CTAugment's probe views;
- ``forward + backward``: the loss (the network's forward included) and autograd's backward;
- ``optimizer + EMA``: the SGD step and the EMA update;
- ``other``: the rest (CTAugment's probe forward and rate update, the learning rate).

No count depends on the batch: the dense augmentation, the network and the
optimizer have no data-dependent control flow (``tests/test_operator_calls.py``
checks B = 1 against B = 2), so the counts at a small batch are those of the
paper's B = 64, mu = 7.

CLI: ``python -m fixmatch_bench.tools.operator_calls [--out reports] [--batch 2]`` writes
``operator_calls.md`` and ``operator_calls.json``, with the figures from before
issue 28's dense ops beside them.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import platform
from pathlib import Path
from typing import Any, Callable

import torch
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function

from .bench import BenchConfig, suite_step
from .compose import compose_params
from ..core.params import validate_params
from ..core.schema import Params
from ..augment import randaugment, tensor_ops
from ..augment.augmenter import make_augmenter
from ..augment.primitives import CUTOUT_STEP, cutout_step
from ..train.speed import SpeedOptions
from ..train.step import draw_batch, train_step

REPO = Path(__file__).resolve().parents[3]
PHASES = ("augmentation", "forward + backward", "optimizer + EMA", "other")
NETWORKS = (("WRN-28-2", "cifar10"), ("WRN-28-8", "cifar100"), ("WRN-37-2 (96 px)", "stl10"))
AUGMENTATIONS = (("RandAugment", "fixmatch_ra"), ("CTAugment", "fixmatch_cta"))
_BACKWARD = "autograd::engine::evaluate_function"
# What this module counted before issue 28's dense ops (commit 89af580, torch 2.13.0, B = 2): the
# augmentation per training step, the same for every network, and the dense calls below.
AUGMENTATION_BEFORE = {"fixmatch_ra": 2191, "fixmatch_cta": 3581}
VIEWS_BEFORE = {"weak view": 38, "RandAugment strong view": 2097, "CTAugment strong view": 2110,
                "CTAugment probe view": 1377, "the all-cutout step": 662}


def _phase(event: FunctionEvent) -> str | None:
    """The innermost phase around an aten call (autograd's backward: forward + backward), or None when the
    call is nested in another aten call."""
    phase, parent = None, event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return None
        if phase is None and parent.name in PHASES:
            phase = parent.name
        elif phase is None and parent.name.startswith(_BACKWARD):
            phase = "forward + backward"
        parent = parent.cpu_parent
    return phase or "other"


def top_level_calls(events: list[FunctionEvent]) -> collections.Counter[str]:
    """Calls per phase: every aten operator not nested in another."""
    phases = (_phase(event) for event in events if event.name.startswith("aten::"))
    return collections.Counter(phase for phase in phases if phase is not None)


def count_calls(function: Callable[[], Any]) -> collections.Counter[str]:
    """Top-level aten calls of one call of ``function`` on CPU, per phase (see :func:`top_level_calls`)."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    return top_level_calls(profiler.events())


def _in_phase(phase: str, function: Callable) -> Callable:
    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(phase):
            return function(*args, **kwargs)

    return wrapped


def paper_params() -> Params:
    return validate_params(compose_params(["suite=paper"], REPO / "conf"))


def step_calls(paper: Params, dataset: str, method: str, batch: int) -> dict[str, int]:
    """Calls of one training step of ``method`` on ``dataset``'s network at labeled batch ``batch`` (the
    paper's uratio), per phase and in total."""
    config = BenchConfig(f"{dataset} {method}", dataset, method, train={"batch": batch}, train_size=1024,
                         test_size=16)
    under_test = suite_step(config, paper, torch.device("cpu"), SpeedOptions())
    state, data, plan = under_test.state, under_test.data, under_test.plan
    state.augmenter.dense()
    state.augmenter.probe = _in_phase("augmentation", state.augmenter.probe)
    functions = state.functions
    state.functions = dataclasses.replace(functions, loss=_in_phase("forward + backward", functions.loss),
                                          optimizer_step=_in_phase("optimizer + EMA", functions.optimizer_step),
                                          ema_update=_in_phase("optimizer + EMA", functions.ema_update))
    draw = _in_phase("augmentation", draw_batch)

    def step() -> None:
        train_step(state, draw(state, data, plan), plan)

    step()  # builds the cached tables
    counts = count_calls(step)
    return {**{phase: counts[phase] for phase in PHASES}, "total": sum(counts.values())}


def view_calls(n: int = 14, size: int = 32, cutout: int = 16) -> dict[str, int]:
    """Calls of one dense view of ``n`` images of 3 x ``size`` x ``size`` (their draws included), and of
    the strong views' final all-cutout step alone (as the augmenters apply it)."""
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    ra = make_augmenter("randaugment", cutout=cutout).dense()
    cta = make_augmenter("ctaugment", cutout=cutout).dense()
    cut_ops, cut_args = cutout_step(n, size, size, cutout, generator)
    views = {
        "weak view": lambda: ra.weak(images, generator),
        "RandAugment strong view": lambda: ra.strong(images, generator),
        "CTAugment strong view": lambda: cta.strong(images, generator),
        "CTAugment probe view": lambda: cta.probe(images, generator),
        "the all-cutout step": lambda: tensor_ops.apply_steps(images, cut_ops, cut_args, randaugment.RA_FILL,
                                                              dense=True, vocabulary=(CUTOUT_STEP,)),
    }
    for view in views.values():
        view()  # builds the cached tables
    return {name: sum(count_calls(view).values()) for name, view in views.items()}


def measure(batch: int = 2) -> dict[str, Any]:
    paper = paper_params()
    rows = [{"network": network, "dataset": dataset, "strong": name, "method": method,
             **step_calls(paper, dataset, method, batch)}
            for network, dataset in NETWORKS for name, method in AUGMENTATIONS]
    return {"torch": torch.__version__, "python": platform.python_version(), "batch": batch,
            "uratio": paper.train.uratio, "rows": rows, "views": view_calls()}


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(report: dict[str, Any]) -> str:
    header = ["network", "dataset", "strong augmentation", "augmentation before", *PHASES, "total", "after / before"]
    lines = [
        "# Operator calls per training step",
        "",
        f"Generated by `python -m fixmatch_bench.tools.operator_calls` (torch {report['torch']}, "
        f"Python {report['python']}; its docstring says what is counted). Top-level aten calls of one training "
        f"step on CPU, dense augmentation forced, counted at B = {report['batch']}, mu = {report['uratio']}: the "
        "counts do not depend on the batch, so they are those of the paper's B = 64. \"Before\": the same module "
        "at commit 89af580, before issue 28's dense ops (the other phases did not change).",
        "",
        _row(header),
        "|" + "---|" * len(header),
    ]
    for row in report["rows"]:
        before = AUGMENTATION_BEFORE[row["method"]]
        lines.append(_row([row["network"], row["dataset"], row["strong"], f"{before:,}",
                           *(f"{row[key]:,}" for key in (*PHASES, "total")), f"{row['augmentation'] / before:.2f}"]))
    lines += ["", "The dense augmentation per call (14 images, 3 x 32 x 32; a view's draws included):", "",
              _row(["call", "before", "after"]), "|---|---|---|"]
    lines += [_row([name, f"{VIEWS_BEFORE[name]:,}", f"{calls:,}"]) for name, calls in report["views"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    report = measure(args.batch)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator_calls.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "operator_calls.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
