"""Whether a run can be afforded, asked before it starts: memory on its device, and time.

A run's cost depends on its *workload* (:func:`workload`): the network and image
shape of its dataset, its method's views and the batch. The train stage refuses,
before any work and in one line (:func:`refuse_unaffordable`):

- a run whose memory lower bound (:mod:`.memory`) exceeds its device's memory, with
  the estimate and the largest batch that would fit;
- a run projected to take longer than ``max_run_hours`` on its device, from the
  steps/s measured there for its workload: the protocol figure of
  ``reports/throughput.json`` (``make gpu-check``) or the run's own earlier result
  (``reports/runs.json``). Where neither exists nothing is projected and the run is not
  refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..core.errors import ParamsError
from ..core.params import run_params
from ..core.runs import Run
from ..core.schema import Params
from ..methods.registry import build_method
from .memory import GIB, MemoryEstimate, estimate


def workload(params: Params, run: Run) -> str:
    """What a step of ``run`` costs depends on: its network, image shape, views and batch."""
    params = run_params(params, run)
    facts, method, train = params.datasets[run.dataset], build_method(params, run.method), params.train
    network = facts.network
    uratio = method.uratio(params)
    views = method.strong if method.views and uratio > 0 else "supervised"
    unlabeled = f", mu={uratio}" if views != "supervised" else ""
    return (f"ResNet filters={network.filters} scales={network.scales} repeat={network.repeat}, "
            f"{facts.channels}x{facts.image_size}x{facts.image_size}, {views}, B={train.batch}{unlabeled}")


def device_memory(device: torch.device) -> tuple[str, int]:
    """The device's name (as runs record it) and its total memory (the host's for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory
    return "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measured_steps_per_s(params: Params, run: Run, device: str, root: Path) -> float | None:
    """Steps/s measured on ``device`` for ``run``'s workload: the benchmark's protocol figure, else the
    run's own earlier result; None where neither exists."""
    throughput = root / "reports/throughput.json"
    if throughput.exists():
        report = json.loads(throughput.read_text())
        for row in report.get("results", []) if report.get("device") == device else []:
            if row.get("workload") == workload(params, run) and "steps_per_s" in row.get("protocol", {}):
                return row["protocol"]["steps_per_s"]
    runs = root / "reports/runs.json"
    earlier = json.loads(runs.read_text()).get(run.key) if runs.exists() else None
    if earlier is not None and earlier.get("device") == device and earlier.get("steps_per_s"):
        return earlier["steps_per_s"]
    return None


def refuse_unaffordable(params: Params, run: Run, device: torch.device, world_size: int = 1,
                        root: Path = Path(".")) -> None:
    """Raise :class:`ParamsError` when ``run`` cannot fit its device, or would take longer than
    ``max_run_hours`` on it; ``world_size`` ranks share each step's batch."""
    params = run_params(params, run)
    name, available = device_memory(device)
    needed = estimate(params, run)
    share = MemoryEstimate(needed.resident, needed.activations_per_image, -(-needed.images_per_step // world_size))
    if share.total > available:
        method = build_method(params, run.method)
        fits = share.largest_batch(available, method.uratio(params), len(method.views)) * world_size
        raise ParamsError(f"invalid params: train.batch = {params.train.batch} (needs at least "
                          f"{share.total / GIB:.1f} GiB on {name}, which has {available / GIB:.1f} GiB: "
                          f"a batch of at most {fits} fits)")
    rate = measured_steps_per_s(params, run, name, root)
    hours = None if rate is None else params.train.steps / rate / 3600
    if hours is not None and hours > params.max_run_hours:
        raise ParamsError(f"invalid params: train.steps = {params.train.steps} (projected {hours:,.0f} hours on "
                          f"{name} at the {rate:.1f} steps/s measured there, over max_run_hours = "
                          f"{params.max_run_hours:g}: raise max_run_hours to run it)")
