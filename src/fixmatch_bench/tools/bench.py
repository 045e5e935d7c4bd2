"""Throughput of the training step that `dvc repro` runs: the peers' pipeline vs this suite's, on random data.

Both pipelines time the trainer's own :func:`~fixmatch_bench.train.step.train_step`,
built by :func:`~fixmatch_bench.train.state.build_state` from the paper suite's params
(conf/ composed with ``suite=paper``: the dataset's row of the table, ``train``,
``threshold``, the method), on random uint8 images of the dataset's shape. They
differ only in where the batch comes from:

(a) ``peers``: what the popular PyTorch ports do. Per-image PIL augmentation
    (this suite's reference PIL RandAugment, ``impl="reference"``) in torch
    DataLoader workers, one worker per CPU core, batches copied to the device,
    fp32 eager model.
(b) ``suite``: the uint8 dataset on the device, batches drawn there by
    :func:`~fixmatch_bench.train.step.draw_batch` (batched per-sample augmentation)
    and, on CUDA, the speed options :data:`GPU_SPEED` (channels_last + bf16
    autocast + ``compile: step`` + ``compile_augment``). The first configuration
    also measures (b) under each rung of :data:`GPU_LADDER` (each speed option
    added in turn; TF32 and the algorithm-changing ``weak_no_grad`` on rows of
    their own); its (b) figure is the ladder's rung with the suite's options.
    Every configuration is also measured under the protocol's settings (fp32
    eager, TF32 off), and the report projects the paper suite's GPU-hours from
    the figures of each run's workload (:mod:`fixmatch_bench.report.gpu_hours`).

Both run in a process with the trainer's host-memory settings
(:func:`~fixmatch_bench.train.host_memory.keep_freed_memory`, set by :func:`run_benchmark`),
so they differ only in the pipeline.

A figure is the median steps/s over ``rounds`` timed windows of ``steps`` steps
(the EMA model's test evaluation every ``eval_every`` steps included), with the
rounds' spread. For (b) a second, synchronised pass splits a step into drawing the
batch (sampling and augmentation) and the update (loss, backward, SGD, EMA,
distribution alignment, CTAugment probes); CUDA events on GPU, ``perf_counter``
on CPU.

On a CPU-only machine the reduced configuration runs (small network, tiny
batch, few steps): it exercises the code, its figures say nothing about GPUs.

CLI: ``python -m fixmatch_bench.tools.bench [--out reports] [--reduced] [--only TEXT] [--quick]``
writes ``throughput.md`` and ``throughput.json``. ``--quick`` (what ``make gpu-check``
runs) times fewer, shorter rounds, without the periodic evaluation, and stops
measuring at a deadline, reporting what it did not reach.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .compose import compose_params
from ..core.params import validate_params
from ..core.runs import Run, all_runs
from ..core.schema import DatasetFacts, Params
from ..report import gpu_hours
from ..train.budget import workload
from ..augment.augmenter import make_augmenter
from ..train.distributed import SINGLE_PROCESS
from ..train.evaluation import accuracy, to_model_input
from ..methods.base import Batch
from ..methods.registry import run_method
from ..train.host_memory import keep_freed_memory
from ..train.run_data import RunData
from ..train.speed import SpeedOptions
from ..train.state import TrainState, build_state
from ..train.step import Drawn, StepPlan, draw_batch, train_step

GPU_SPEED = SpeedOptions(channels_last=True, autocast_bf16=True, compile="step", compile_augment=True)
# (label, options): the suite's pipeline with each speed option added in turn.
GPU_LADDER: tuple[tuple[str, SpeedOptions], ...] = (
    ("fp32 eager, deterministic kernels (the paper suite's settings)", SpeedOptions(deterministic=True)),
    ("+ nondeterministic kernels allowed (speed.deterministic: false)", SpeedOptions()),
    ("+ TF32 convolutions and matmuls (speed.tf32: not the paper protocol)", SpeedOptions(tf32=True)),
    ("fp32 + bf16 autocast + channels_last", SpeedOptions(channels_last=True, autocast_bf16=True)),
    ("+ compile: model", GPU_SPEED.model_copy(update={"compile": "model", "compile_augment": False})),
    ("+ compile: step", GPU_SPEED.model_copy(update={"compile_augment": False})),
    ("+ compile_augment", GPU_SPEED),
    ("+ compile: step, CUDA graphs (compile_mode: reduce-overhead)", GPU_SPEED.model_copy(update={"compile_mode": "reduce-overhead"})),
    ("compile: step + weak_no_grad (ALGORITHM-CHANGING, not the paper's method)", GPU_SPEED.model_copy(update={"weak_no_grad": True})),
)
# On CPU the ladder has only the options that need no compiler time (it runs in CI).
CPU_LADDER: tuple[tuple[str, SpeedOptions], ...] = (
    ("fp32 eager", SpeedOptions(deterministic=True)),
    ("+ channels_last", SpeedOptions(channels_last=True, deterministic=True)),
)
# The paper suite's speed options (conf/suite/paper.yaml), the first rung of each ladder.
PROTOCOL = GPU_LADDER[0][1]


@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration: a dataset row and a method of the paper suite, on random data.

    ``train`` and ``network`` override the paper suite's ``train`` block and the
    dataset's network (the reduced CPU configuration only).
    """

    name: str
    dataset: str
    method: str = "fixmatch_ra"
    train: dict[str, Any] = field(default_factory=dict)
    network: dict[str, int] = field(default_factory=dict)
    train_size: int | None = None  # None: the dataset's (random images of its shape)
    test_size: int | None = None
    steps: int = 200  # per round
    rounds: int = 5
    warmup: int = 20
    breakdown_steps: int = 50
    eval_every: int = 1024
    peers: bool = True  # also measure pipeline (a)
    ladder: bool = False  # also measure (b) under each rung of the speed-option ladder

    def params(self, paper: Params, options: SpeedOptions, device: torch.device) -> Params:
        """The paper suite's params with this configuration's overrides, the speed options and the device."""
        params = paper.model_dump()
        params["train"].update(self.train, device=device.type)
        params["datasets"][self.dataset]["network"].update(self.network)
        params["speed"] = options.model_dump()
        return validate_params(params)

    def run(self) -> Run:
        return Run(self.dataset, 4000, self.method, 1)

    def workload(self, paper: Params) -> str:
        """What a step costs (:func:`~fixmatch_bench.report.gpu_hours.workload`): runs of the same
        workload are projected from this configuration's figures."""
        return workload(self.params(paper, SpeedOptions(), torch.device("cpu")), self.run())

    def quick(self) -> BenchConfig:
        """``make gpu-check``'s timing: three short rounds, no evaluation inside them."""
        return replace(self, steps=min(self.steps, 32), rounds=3, warmup=min(self.warmup, 10), breakdown_steps=10,
                       eval_every=10**9)


def full_configs() -> list[BenchConfig]:
    """The GPU suite: WRN-28-2 (CIFAR-10) with RandAugment (both pipelines) and CTAugment, WRN-28-8
    (CIFAR-100), WRN-37-2 (STL-10, 96 px), then each network's supervised step (the baselines' runs)."""
    return [
        BenchConfig("WRN-28-2 CIFAR-10 RandAugment", "cifar10", steps=256, warmup=50, eval_every=512, ladder=True),
        BenchConfig("WRN-28-2 CIFAR-10 CTAugment", "cifar10", "fixmatch_cta", steps=256, warmup=50, eval_every=512,
                    peers=False),
        BenchConfig("WRN-28-8 CIFAR-100 RandAugment", "cifar100", steps=64, warmup=20, eval_every=128, peers=False),
        BenchConfig("WRN-37-2 STL-10 96px RandAugment", "stl10", train_size=5_000, steps=64, warmup=20,
                    eval_every=128, peers=False),
        BenchConfig("WRN-28-8 CIFAR-100 CTAugment", "cifar100", "fixmatch_cta", steps=64, warmup=20, eval_every=128,
                    peers=False),
        BenchConfig("WRN-37-2 STL-10 96px CTAugment", "stl10", "fixmatch_cta", train_size=5_000, steps=64,
                    warmup=20, eval_every=128, peers=False),
        BenchConfig("WRN-28-2 CIFAR-10 supervised", "cifar10", "supervised", steps=256, warmup=50, eval_every=512,
                    peers=False),
        BenchConfig("WRN-28-8 CIFAR-100 supervised", "cifar100", "supervised", steps=64, warmup=20, eval_every=128,
                    peers=False),
        BenchConfig("WRN-37-2 STL-10 96px supervised", "stl10", "supervised", train_size=5_000, steps=64, warmup=20,
                    eval_every=128, peers=False),
    ]


def reduced_configs() -> list[BenchConfig]:
    """The CPU smoke version: CIFAR-10-shaped images, a small network, B=2 (mu=7), a few steps."""
    return [BenchConfig("reduced CPU: CIFAR-10 shapes, ResNet filters 16, 2 scales x 1 block, RandAugment, B=2, mu=7",
                        "cifar10", train={"batch": 2, "eval_batch": 256},
                        network={"filters": 16, "scales": 2, "repeat": 1}, train_size=2048, test_size=256,
                        steps=8, rounds=5, warmup=4, breakdown_steps=8, eval_every=8, ladder=True)]


def random_data(config: BenchConfig, facts: DatasetFacts, device: torch.device, seed: int = 0) -> RunData:
    """Random uint8 images of the dataset's shape, all labeled (the pools' sizes do not change a step's cost)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (facts.channels, facts.image_size, facts.image_size)
    classes, train_size = facts.num_classes, config.train_size or facts.train_size
    test_size = config.test_size or facts.test_size
    images = torch.randint(0, 256, (train_size, *shape), dtype=torch.uint8, generator=generator).to(device)
    targets = torch.randint(0, classes, (train_size,), generator=generator).to(device)
    return RunData(labeled_images=images, labeled_targets=targets, unlabeled_images=images,
                   unlabeled_targets=targets,
                   test_images=torch.randint(0, 256, (test_size, *shape), dtype=torch.uint8,
                                             generator=generator).to(device),
                   test_targets=torch.randint(0, classes, (test_size,), generator=generator).to(device),
                   class_distribution=torch.full((classes,), 1.0 / classes, device=device),
                   dataset_sha256="random", split_sha256="random")


@dataclass
class StepUnderTest:
    """A real training state and the calls that advance it: what both pipelines time."""

    params: Params
    data: RunData
    state: TrainState
    plan: StepPlan
    step: Callable[[], object]  # one training step, the batch included
    device: torch.device

    def evaluate(self) -> Tensor:
        """The EMA model's accuracy on the test set, as the trainer evaluates it."""
        return accuracy(self.state.ema_forward, self.data.test_images, self.data.test_targets,
                        self.params.train.eval_batch)


def suite_step(config: BenchConfig, paper: Params, device: torch.device, options: SpeedOptions) -> StepUnderTest:
    """Pipeline (b): :func:`draw_batch` on device-resident data, then :func:`train_step`."""
    params, run = config.params(paper, options, device), config.run()
    data = random_data(config, params.datasets[config.dataset], device)
    method = run_method(params, run.method)
    state, plan = build_state(params, run, method, data, device, SINGLE_PROCESS), StepPlan.build(params, method)
    state.model.train()
    return StepUnderTest(params, data, state, plan, lambda: train_step(state, draw_batch(state, data, plan), plan),
                         device)


class _PerImage(Dataset):
    """Per-image augmentation in the worker, as the peers do (one generator per worker process)."""

    def __init__(self, images: Tensor, targets: Tensor, facts: DatasetFacts, unlabeled: bool):
        self.images, self.targets, self.unlabeled = images, targets, unlabeled
        self.augmenter = make_augmenter("randaugment", "reference", facts.flip, facts.translate, facts.ra_cutout,
                                        ra_translate_scale=facts.ra_translate_scale)
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        if self.generator is None:
            info = torch.utils.data.get_worker_info()
            self.generator = torch.Generator().manual_seed(1000 + (info.id if info is not None else 0))
        image = self.images[index:index + 1]
        weak = self.augmenter.weak(image, self.generator)[0]
        if not self.unlabeled:
            return weak, self.targets[index]
        return weak, self.augmenter.strong(image, self.generator)[0]


def _endless(loader: DataLoader):
    while True:
        yield from loader


def worker_split(workers: int) -> tuple[int, int]:
    """DataLoader workers of the labeled and the unlabeled stream (1 : 7, as their batches)."""
    labeled = max(1, workers // 8)
    return labeled, max(1, workers - labeled)


def peers_step(config: BenchConfig, paper: Params, device: torch.device, workers: int) -> StepUnderTest:
    """Pipeline (a): per-image PIL RandAugment in DataLoader workers feeding :func:`train_step`, fp32 eager
    under PyTorch's default precision, as the peers run: cuDNN convolutions may use TF32, matmuls do not."""
    under_test = suite_step(config, paper, device, SpeedOptions())
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # PyTorch's defaults
    state, plan, hyper = under_test.state, under_test.plan, under_test.params.train
    facts = under_test.params.datasets[config.dataset]
    data = random_data(config, facts, torch.device("cpu"))
    loaders = []
    for unlabeled, size, count in zip((False, True), (hyper.batch, hyper.batch * hyper.uratio),
                                      worker_split(workers)):
        dataset = _PerImage(data.labeled_images, data.labeled_targets, facts, unlabeled)
        sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)
        loaders.append(_endless(DataLoader(dataset, size, sampler=sampler, num_workers=count, drop_last=True,
                                           pin_memory=device.type == "cuda", persistent_workers=True)))
    labeled_loader, unlabeled_loader = loaders

    def step() -> None:
        images, targets = next(labeled_loader)
        weak, strong = next(unlabeled_loader)
        images, weak, strong = (part.to(device, non_blocking=True) for part in (images, weak, strong))
        batch = Batch(to_model_input(images), targets.to(device, non_blocking=True),
                      (to_model_input(weak), to_model_input(strong)))
        train_step(state, Drawn(batch, images), plan)

    return replace(under_test, step=step)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(config: BenchConfig, under_test: StepUnderTest) -> list[float]:
    """Steps per second of each of ``config.rounds`` windows of ``config.steps`` steps after
    ``config.warmup`` steps, the periodic evaluation included."""
    for _ in range(config.warmup):
        under_test.step()
    under_test.evaluate()  # compile / warm the evaluation path outside the timed windows
    rounds, done = [], 0
    for _ in range(config.rounds):
        _sync(under_test.device)
        started = time.perf_counter()
        for _ in range(config.steps):
            under_test.step()
            done += 1
            if done % config.eval_every == 0:
                under_test.evaluate()
        _sync(under_test.device)
        rounds.append(config.steps / (time.perf_counter() - started))
    return rounds


def _summary(rounds: list[float]) -> dict[str, Any]:
    return {"steps_per_s": statistics.median(rounds), "steps_per_s_rounds": rounds,
            "steps_per_s_stdev": statistics.stdev(rounds) if len(rounds) > 1 else 0.0}


def measure_peers(config: BenchConfig, paper: Params, device: torch.device, workers: int) -> dict[str, Any]:
    """Pipeline (a): steps/s (median over rounds, with their spread)."""
    rounds = timed_rounds(config, peers_step(config, paper, device, workers))
    return {**_summary(rounds), "workers": sum(worker_split(workers)),
            "precision": {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                          "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}}


def _breakdown(config: BenchConfig, under_test: StepUnderTest) -> dict[str, float]:
    """Mean ms per step of drawing the batch and of the update, synchronised (so it slightly
    overstates the pipelined total)."""
    state, plan, device = under_test.state, under_test.plan, under_test.device
    totals = {"batch_ms": 0.0, "update_ms": 0.0}
    for _ in range(config.breakdown_steps):
        _sync(device)
        started = time.perf_counter()
        drawn = draw_batch(state, under_test.data, plan)
        _sync(device)
        drawn_at = time.perf_counter()
        train_step(state, drawn, plan)
        _sync(device)
        totals["batch_ms"] += (drawn_at - started) * 1000.0
        totals["update_ms"] += (time.perf_counter() - drawn_at) * 1000.0
    return {phase: total / config.breakdown_steps for phase, total in totals.items()}


def measure_suite(config: BenchConfig, paper: Params, device: torch.device, options: SpeedOptions) -> dict[str, Any]:
    """Pipeline (b): steps/s (median over rounds, with their spread), then the per-phase breakdown."""
    under_test = suite_step(config, paper, device, options)
    summary = _summary(timed_rounds(config, under_test))
    return {**summary, "speed_options": options.model_dump(), "breakdown_ms": _breakdown(config, under_test)}


NOT_REACHED = "not measured: the time budget was spent"


def _attempt(what: str, measure: Callable[[], dict[str, Any]], deadline: float | None = None) -> dict[str, Any]:
    """``measure()``, or ``{"error": ...}`` when it raises: one failing option (a compiler error on
    some GPU, say) is reported in its row instead of losing the other measurements. Past ``deadline``
    (``time.monotonic()``), ``{"skipped": ...}`` without measuring."""
    if deadline is not None and time.monotonic() > deadline:
        print(f"skipping {what}: {NOT_REACHED}", file=sys.stderr, flush=True)
        return {"skipped": NOT_REACHED}
    print(f"measuring {what}", file=sys.stderr, flush=True)
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - reported in the table and the JSON
        print(f"  failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return {"error": f"{type(error).__name__}: {error}"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def run_benchmark(device: torch.device | None = None, reduced: bool | None = None,
                  workers: int | None = None, only: str | None = None, quick: bool = False,
                  deadline: float | None = None) -> dict[str, Any]:
    """Measure every configuration (those whose name contains ``only``, if given); the full GPU
    suite on CUDA, the reduced one otherwise (by default). ``quick``: :meth:`BenchConfig.quick`
    timing; ``deadline`` (``time.monotonic()``): what is not reached by then is reported as such."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reduced = device.type != "cuda" if reduced is None else reduced
    workers = workers or os.cpu_count() or 1
    cuda = device.type == "cuda"
    speed, ladder = (GPU_SPEED, GPU_LADDER) if cuda else (PROTOCOL, CPU_LADDER)
    load_average = os.getloadavg()[0]  # other processes on the host skew every figure
    keep_freed_memory()  # as the trainer does
    paper = validate_params(compose_params(["suite=paper"]))
    results = []
    for config in (reduced_configs() if reduced else full_configs()):
        if only is not None and only not in config.name:
            continue
        config = config.quick() if quick else config

        def measure(label: str, options: SpeedOptions) -> dict[str, Any]:
            return _attempt(f"{config.name}: (b) {label}", lambda: measure_suite(config, paper, device, options),
                            deadline)

        row: dict[str, Any] = {"config": config.name, "workload": config.workload(paper), "settings": asdict(config)}
        measured: dict[SpeedOptions, dict[str, Any]] = {}  # each option set once: the ladder's rung is reused
        if config.ladder:
            row["ladder"] = []
            for label, options in ladder:
                measured[options] = measure(label, options)
                row["ladder"].append(dict(label=label, **measured[options]))
        row["protocol"] = measured.get(PROTOCOL) or measure("the paper suite's settings", PROTOCOL)
        measured[PROTOCOL] = row["protocol"]
        row["suite"] = measured.get(speed) or measure("suite", speed)
        if config.peers:
            row["peers"] = _attempt(f"{config.name}: (a) peers", lambda: measure_peers(config, paper, device, workers),
                                    deadline)
            if "steps_per_s" in row["suite"] and "steps_per_s" in row["peers"]:
                row["ratio"] = row["suite"]["steps_per_s"] / row["peers"]["steps_per_s"]
        results.append(row)
    report = {"device": device_name(device), "device_type": device.type, "reduced": reduced, "quick": quick,
              "protocol_options": PROTOCOL.model_dump(),
              "torch": torch.__version__, "cpu_cores": os.cpu_count(), "load_average_1min": load_average,
              "results": results}
    report["paper_suite"] = gpu_hours.summary(gpu_hours.project(paper, all_runs(paper), report))
    return report


def _figure(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:.2f}{unit}"


def _phases(measured: dict[str, Any]) -> str:
    if "breakdown_ms" not in measured:
        return "— | —"
    breakdown = measured["breakdown_ms"]
    return f"{breakdown['batch_ms']:.1f} | {breakdown['update_ms']:.1f}"


def _steps(measured: dict[str, Any] | None) -> str:
    """Median steps/s ± the rounds' standard deviation."""
    if measured is None:
        return "—"
    if "error" in measured:
        return "failed (see throughput.json)"
    if "skipped" in measured:
        return measured["skipped"]
    return f"{measured['steps_per_s']:.2f} ± {measured['steps_per_s_stdev']:.2f}"


def _cta_vs_ra(results: list[dict[str, Any]]) -> list[str]:
    """CTAugment's steps/s as a fraction of RandAugment's on the same network (goal: within 15 %)."""
    by_name = {row["config"]: row["suite"] for row in results}
    lines = []
    for name, suite in by_name.items():
        ra = by_name.get(name.replace("CTAugment", "RandAugment"))
        if "CTAugment" in name and ra and "steps_per_s" in ra and "steps_per_s" in suite:
            lines.append(f"- {name.replace(' CTAugment', '')}: CTAugment runs at "
                         f"{suite['steps_per_s'] / ra['steps_per_s']:.2f} of RandAugment's steps/s.")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The throughput report as markdown (GPU figures marked "not measured" without a GPU)."""
    gpu = report["device_type"] == "cuda"
    lines = ["# Throughput of full FixMatch steps", "",
             f"Device: {report['device']}; torch {report['torch']}; "
             f"{'full GPU suite' if not report['reduced'] else 'REDUCED configuration (smoke test, not a GPU figure)'}; "
             f"host load average at start {report['load_average_1min']:.2f}.",
             "", "Made by `python -m fixmatch_bench.tools.bench`: the trainer's own step (`train/step.py` "
             "`train_step`, built from the paper suite's params) on random uint8 data of the dataset's shape; "
             f"{'no evaluation inside the timed rounds (quick timing)' if report.get('quick') else 'periodic EMA evaluation included'}. "
             "Steps/s: median over the rounds ± their standard deviation.",
             "(a) peers: per-image PIL RandAugment in DataLoader workers (one per core), fp32 eager under "
             "PyTorch's default precision (cuDNN convolutions may use TF32, matmuls do not), as the peers run. "
             "(b) suite: uint8 data on the device, `draw_batch` (batched per-sample augmentation)"
             f"{', channels_last + bf16 autocast + compile: step + compile_augment (IEEE float32 outside autocast)' if gpu else ' (speed options off on CPU)'}; "
             "the protocol's settings are the paper suite's (fp32 eager, TF32 off, deterministic kernels).",
             "",
             "| configuration | (a) peers steps/s | (b) suite steps/s | ratio b/a | batch ms | update ms | "
             "(b) at the protocol's settings |",
             "|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        lines.append(f"| {row['config']} | {_steps(row.get('peers'))} | {_steps(row['suite'])} | "
                     f"{_figure(row.get('ratio'), 'x')} | {_phases(row['suite'])} | {_steps(row.get('protocol'))} |")
    comparisons = _cta_vs_ra(report["results"])
    if comparisons:
        lines += [""] + comparisons
    for row in report["results"]:
        if "ladder" not in row:
            continue
        base = row["ladder"][0].get("steps_per_s")
        lines += ["", f"Speed options one by one, (b) on {row['config']}:", "",
                  "| speed options | steps/s | vs first row | batch ms | update ms |",
                  "|---|---|---|---|---|"]
        for rung in row["ladder"]:
            ratio = rung["steps_per_s"] / base if base and "steps_per_s" in rung else None
            lines.append(f"| {rung['label']} | {_steps(rung)} | {_figure(ratio, 'x')} | {_phases(rung)} |")
    if gpu and "paper_suite" in report:
        lines += ["", "## The paper suite's cost", ""] + gpu_hours.render(report["paper_suite"], report["device"])
    if not gpu:
        lines += ["", "GPU figures: not measured (no GPU on this machine). On a GPU host run "
                  "`uv run python -m fixmatch_bench.tools.bench` to measure the full suite "
                  "(WRN-28-2 RA/CTA with the speed-option ladder, WRN-28-8, WRN-37-2 at 96 px)."]
    lines += ["", "The breakdown is a separate synchronised pass of (b): `draw_batch` (sampling, augmentation) "
              "and `train_step` (loss, backward, SGD, EMA, distribution alignment, CTAugment probes); its "
              "sum can exceed 1000 / steps/s because the phases no longer overlap."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dict(report, gpu_figures="measured" if report["device_type"] == "cuda" else "not measured")
    (out_dir / "throughput.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "throughput.md").write_text(render_markdown(report))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for throughput.md/.json")
    parser.add_argument("--reduced", action="store_true", help="the small CPU configuration even on a GPU")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--only", metavar="TEXT", help="measure only the configurations whose name contains TEXT")
    parser.add_argument("--quick", action="store_true", help="three short rounds per figure (make gpu-check)")
    parser.add_argument("--budget-s", type=float, help="stop measuring after this many seconds; the rest is "
                        "reported as not measured")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    device = None if args.device == "auto" else torch.device(args.device)
    deadline = time.monotonic() + args.budget_s if args.budget_s is not None else None
    report = run_benchmark(device, reduced=True if args.reduced else None, only=args.only, quick=args.quick,
                           deadline=deadline)
    if not report["results"]:
        parser.error(f"--only {args.only!r} matches no configuration")
    write_report(report, args.out)
    print(render_markdown(report))


if __name__ == "__main__":
    main()
