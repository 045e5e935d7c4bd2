"""Throughput of full FixMatch steps: the peers' pipeline vs this suite's, on random data.

(a) ``peers``: what the popular PyTorch ports do. Per-image PIL augmentation
    (this suite's reference PIL RandAugment, ``impl="reference"``) in torch
    DataLoader workers, one worker per CPU core, batches copied to the device,
    fp32 eager model.
(b) ``suite``: the uint8 dataset on the device, batches drawn there, batched
    per-sample augmentation (``impl="batched"``) and, on CUDA, the speed
    options :data:`GPU_SPEED` (channels_last + bf16 autocast + ``compile: step`` +
    ``compile_augment``).
    The first configuration also measures (b) under each rung of
    :data:`GPU_LADDER` (each speed option added in turn; the
    algorithm-changing ``weak_no_grad`` reported on its own row); its (b)
    figure is the ladder's rung with the suite's options.

Both run the same step: augmentation, one forward/backward of the
labeled + weak + strong batch, the cosine learning rate, SGD, EMA update (and
CTAugment probes for CTAugment), with the EMA model evaluated on the test set every
``eval_every`` steps, included in the end-to-end figure. For (b) a second,
synchronised pass splits a step into augmentation, forward/backward and
optimizer+EMA (CUDA events on GPU, ``perf_counter`` on CPU).

On a CPU-only machine the reduced configuration runs (small network, tiny
batch, few steps): it exercises the code, its figures say nothing about GPUs.

CLI: ``python -m fixmatch_bench.bench [--out reports] [--reduced] [--only TEXT]``
writes ``throughput.md`` and ``throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .train.augment import make_augmenter
from .train.ema import ModelEMA
from .train.evaluation import accuracy, to_model_input
from .train.fixmatch import Batch, fixmatch_loss
from .train.optim import cosine_lr, make_optimizer, set_lr
from .train.sampling import IndexStream
from .train.speed import SpeedOptions, StepFunctions, fast_forward, prepare_model
from .train.wide_resnet import WideResNet

GPU_SPEED = SpeedOptions(channels_last=True, autocast_bf16=True, compile="step", compile_augment=True)
# (label, options): the suite's pipeline with each speed option added in turn.
GPU_LADDER: tuple[tuple[str, SpeedOptions], ...] = (
    ("fp32 eager", SpeedOptions()),
    ("+ bf16 autocast + channels_last", SpeedOptions(channels_last=True, autocast_bf16=True)),
    ("+ compile: model", replace(GPU_SPEED, compile="model", compile_augment=False)),
    ("+ compile: step", replace(GPU_SPEED, compile_augment=False)),
    ("+ compile_augment", GPU_SPEED),
    ("+ compile: step, CUDA graphs (compile_mode: reduce-overhead)", replace(GPU_SPEED, compile_mode="reduce-overhead")),
    ("compile: step + weak_no_grad (ALGORITHM-CHANGING, not the paper's method)", replace(GPU_SPEED, weak_no_grad=True)),
)
# On CPU the ladder has only the options that need no compiler time (it runs in CI).
CPU_LADDER: tuple[tuple[str, SpeedOptions], ...] = (
    ("fp32 eager", SpeedOptions()),
    ("+ channels_last", SpeedOptions(channels_last=True)),
)


@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration (random uint8 data, official step hyper-parameters)."""

    name: str
    network: dict[str, int]
    image_size: int = 32
    strong: str = "randaugment"
    batch: int = 64
    uratio: int = 7
    train_size: int = 50_000
    test_size: int = 10_000
    num_classes: int = 10
    steps: int = 200
    warmup: int = 20
    breakdown_steps: int = 50
    eval_every: int = 1024
    eval_batch: int = 1024
    peers: bool = True  # also measure pipeline (a)
    ladder: bool = False  # also measure (b) under each rung of the speed-option ladder

    @property
    def translate(self) -> int:
        return self.image_size // 8  # 12.5 % of the side, as in the dataset table

    @property
    def cutout(self) -> int:
        return 1 + int(self.image_size * 0.499) if self.strong == "ctaugment" else 16


def full_configs() -> list[BenchConfig]:
    """The GPU suite: WRN-28-2 with RandAugment (both pipelines) and CTAugment, WRN-28-8, WRN-37-2 at 96 px."""
    wrn_28_2 = {"filters": 32, "scales": 3, "repeat": 4}
    return [
        BenchConfig("WRN-28-2 32px RandAugment", wrn_28_2, steps=1024, warmup=50, eval_every=512, ladder=True),
        BenchConfig("WRN-28-2 32px CTAugment", wrn_28_2, strong="ctaugment", steps=1024, warmup=50,
                    eval_every=512, peers=False),
        BenchConfig("WRN-28-8 32px RandAugment", {"filters": 128, "scales": 3, "repeat": 4}, steps=256, warmup=20,
                    eval_every=128, peers=False),
        BenchConfig("WRN-37-2 96px RandAugment", {"filters": 32, "scales": 4, "repeat": 4}, image_size=96,
                    train_size=5_000, test_size=8_000, steps=256, warmup=20, eval_every=128, peers=False),
    ]


def reduced_configs() -> list[BenchConfig]:
    """The CPU smoke version: CIFAR-shaped images, a small network, B=2 (mu=7), a few steps."""
    return [BenchConfig("reduced CPU: ResNet filters 16, 2 scales x 1 block, 32px RandAugment, B=2, mu=7", {"filters": 16, "scales": 2, "repeat": 1},
                        batch=2, train_size=2048, test_size=256, steps=16, warmup=4, breakdown_steps=8,
                        eval_every=8, eval_batch=256, ladder=True)]


@dataclass
class RandomData:
    """Random uint8 NCHW images and labels of a config's shape."""

    train: Tensor
    train_targets: Tensor
    test: Tensor
    test_targets: Tensor

    @classmethod
    def make(cls, config: BenchConfig, seed: int = 0) -> RandomData:
        generator = torch.Generator().manual_seed(seed)
        shape = (3, config.image_size, config.image_size)
        return cls(torch.randint(0, 256, (config.train_size, *shape), dtype=torch.uint8, generator=generator),
                   torch.randint(0, config.num_classes, (config.train_size,), generator=generator),
                   torch.randint(0, 256, (config.test_size, *shape), dtype=torch.uint8, generator=generator),
                   torch.randint(0, config.num_classes, (config.test_size,), generator=generator))


class _PerImage(Dataset):
    """Per-image augmentation in the worker, as the peers do (one generator per worker process)."""

    def __init__(self, images: Tensor, targets: Tensor, config: BenchConfig, unlabeled: bool):
        self.images, self.targets, self.unlabeled = images, targets, unlabeled
        self.augmenter = make_augmenter("randaugment", "reference", True, config.translate, config.cutout)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Trainer:
    """Model, EMA, optimizer and evaluation shared by both pipelines."""

    config: BenchConfig
    device: torch.device
    speed: SpeedOptions
    test: Tensor
    test_targets: Tensor
    model: torch.nn.Module = field(init=False)

    def __post_init__(self) -> None:
        torch.manual_seed(0)
        torch.compiler.reset()  # each measurement compiles afresh (and stays under the recompile limit)
        self.model = prepare_model(WideResNet(self.config.num_classes, 3, **self.config.network).to(self.device),
                                   self.speed).train()
        self.ema = ModelEMA(self.model, 0.999)
        self.optimizer = make_optimizer(self.model, 0.03, 0.9, True, 5e-4, **self.speed.optimizer_kwargs())
        self.forward = fast_forward(self.model, self.speed, training=True)
        self.ema_forward = fast_forward(self.ema.module, self.speed)
        self.step_functions = StepFunctions.build(fixmatch_loss, self.optimizer, self.ema.update, self.speed)
        self.step = 0

    def loss_backward(self, batch: Batch) -> dict[str, Tensor]:
        loss, logs = self.step_functions.loss(self.forward, batch, 0.95, 1.0, weak_no_grad=self.speed.weak_no_grad)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return logs

    def optimizer_ema(self) -> None:
        set_lr(self.optimizer, cosine_lr(0.03, self.step, 2**20), as_tensor=self.speed.lr_as_tensor)
        self.step += 1
        self.step_functions.optimizer_step()
        self.step_functions.ema_update(self.model)

    def evaluate(self) -> Tensor:
        return accuracy(self.ema_forward, self.test, self.test_targets, self.config.eval_batch)


def _timed(config: BenchConfig, device: torch.device, step: Callable[[], None], evaluate: Callable[[], Any]) -> float:
    """Steps per second over ``config.steps`` steps after ``config.warmup``, evaluations included."""
    for _ in range(config.warmup):
        step()
    evaluate()  # compile / warm the evaluation path outside the timed window
    _sync(device)
    started = time.perf_counter()
    for index in range(1, config.steps + 1):
        step()
        if index % config.eval_every == 0:
            evaluate()
    _sync(device)
    return config.steps / (time.perf_counter() - started)


def measure_peers(config: BenchConfig, data: RandomData, device: torch.device, workers: int) -> dict[str, float]:
    """Pipeline (a): per-image PIL RandAugment in DataLoader workers, fp32 eager model."""
    labeled_workers = max(1, workers // 8)
    unlabeled_workers = max(1, workers - labeled_workers)
    loaders = []
    for unlabeled, batch, count in ((False, config.batch, labeled_workers),
                                    (True, config.batch * config.uratio, unlabeled_workers)):
        dataset = _PerImage(data.train, data.train_targets, config, unlabeled)
        sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)
        loaders.append(_endless(DataLoader(dataset, batch, sampler=sampler, num_workers=count, drop_last=True,
                                           pin_memory=device.type == "cuda", persistent_workers=True)))
    labeled_loader, unlabeled_loader = loaders
    trainer = _Trainer(config, device, SpeedOptions(), data.test.to(device), data.test_targets.to(device))

    def step() -> None:
        images, targets = next(labeled_loader)
        weak, strong = next(unlabeled_loader)
        move = lambda images: to_model_input(images.to(device, non_blocking=True))  # noqa: E731
        trainer.loss_backward(Batch(move(images), targets.to(device, non_blocking=True), move(weak), move(strong)))
        trainer.optimizer_ema()

    steps_per_s = _timed(config, device, step, trainer.evaluate)
    return {"steps_per_s": steps_per_s, "workers": labeled_workers + unlabeled_workers}


class _SuiteStep:
    """Pipeline (b): one step on device-resident uint8 data, phases callable separately for the breakdown."""

    def __init__(self, config: BenchConfig, data: RandomData, device: torch.device, speed: SpeedOptions):
        self.config, self.device = config, device
        self.images, self.targets = data.train.to(device), data.train_targets.to(device)
        self.trainer = _Trainer(config, device, speed, data.test.to(device), data.test_targets.to(device))
        self.augmenter = make_augmenter(config.strong, "batched", True, config.translate, config.cutout)
        if speed.compile_augment:
            self.augmenter.compile()
        self.sample_generator = torch.Generator(device=device).manual_seed(0)
        self.augment_generator = torch.Generator(device=device).manual_seed(1)
        self.labeled = IndexStream(config.train_size, config.batch, self.sample_generator)
        self.unlabeled = IndexStream(config.train_size, config.batch * config.uratio, self.sample_generator)
        self._labeled_images: Tensor | None = None

    def augment(self) -> Batch:
        index, unlabeled_index = self.labeled.next(), self.unlabeled.next()
        labeled = self.augmenter.weak(self.images[index], self.augment_generator)
        self._labeled_images = labeled
        unlabeled = self.images[unlabeled_index]
        return Batch(to_model_input(labeled), self.targets[index],
                     to_model_input(self.augmenter.weak(unlabeled, self.augment_generator)),
                     to_model_input(self.augmenter.strong(unlabeled, self.augment_generator)))

    def probes(self, targets: Tensor) -> None:
        """CTAugment's rate update from EMA-model predictions on probe images (counted as augmentation)."""
        if self.config.strong != "ctaugment":
            return
        probes, policies = self.augmenter.probe(self._labeled_images, self.augment_generator)
        with torch.no_grad():
            probabilities = torch.softmax(self.trainer.ema_forward(to_model_input(probes)), dim=1)
        self.augmenter.update(policies, probabilities.gather(1, targets[:, None]).squeeze(1))

    def __call__(self) -> None:
        batch = self.augment()
        self.trainer.loss_backward(batch)
        self.trainer.optimizer_ema()
        self.probes(batch.targets)


def _breakdown(run: _SuiteStep, steps: int) -> dict[str, float]:
    """Mean ms per step of each phase, synchronised (so it slightly overstates the pipelined total)."""
    phases = ("augmentation_ms", "forward_backward_ms", "optimizer_ema_ms")
    totals = dict.fromkeys(phases, 0.0)
    cuda = run.device.type == "cuda"
    for _ in range(steps):
        if cuda:
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            marks[0].record()
        else:
            marks = [time.perf_counter()]
        batch = run.augment()
        marks[1].record() if cuda else marks.append(time.perf_counter())
        run.trainer.loss_backward(batch)
        marks[2].record() if cuda else marks.append(time.perf_counter())
        run.trainer.optimizer_ema()
        run.probes(batch.targets)  # CTAugment only; it is part of the augmentation policy's cost
        marks[3].record() if cuda else marks.append(time.perf_counter())
        if cuda:
            torch.cuda.synchronize(run.device)
            spans = [marks[i].elapsed_time(marks[i + 1]) for i in range(3)]
        else:
            spans = [(marks[i + 1] - marks[i]) * 1000.0 for i in range(3)]
        for phase, span in zip(phases, spans):
            totals[phase] += span
    return {phase: total / steps for phase, total in totals.items()}


def measure_suite(config: BenchConfig, data: RandomData, device: torch.device, speed: SpeedOptions) -> dict[str, Any]:
    """Pipeline (b): end-to-end steps/s, then the per-phase breakdown."""
    run = _SuiteStep(config, data, device, speed)
    steps_per_s = _timed(config, device, run, run.trainer.evaluate)
    return {"steps_per_s": steps_per_s, "speed_options": asdict(speed),
            "breakdown_ms": _breakdown(run, config.breakdown_steps)}


def _attempt(what: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()``, or ``{"error": ...}`` when it raises: one failing option (a compiler error on
    some GPU, say) is reported in its row instead of losing the other measurements."""
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
                  workers: int | None = None, only: str | None = None) -> dict[str, Any]:
    """Measure every configuration (those whose name contains ``only``, if given); the full GPU
    suite on CUDA, the reduced one otherwise (by default)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reduced = device.type != "cuda" if reduced is None else reduced
    workers = workers or os.cpu_count() or 1
    cuda = device.type == "cuda"
    speed, ladder = (GPU_SPEED, GPU_LADDER) if cuda else (SpeedOptions(), CPU_LADDER)
    load_average = os.getloadavg()[0]  # other processes on the host skew every figure
    results = []
    for config in (reduced_configs() if reduced else full_configs()):
        if only is not None and only not in config.name:
            continue
        data = RandomData.make(config)
        row: dict[str, Any] = {"config": config.name, "settings": asdict(config)}
        suite = None  # (b) is the ladder's rung with the suite's options when there is one (measured once)
        if config.ladder:
            row["ladder"] = []
            for label, options in ladder:
                measured = _attempt(f"{config.name}: (b) {label}", lambda: measure_suite(config, data, device, options))
                row["ladder"].append(dict(label=label, **measured))
                if options == speed:
                    suite = measured
        row["suite"] = suite or _attempt(f"{config.name}: (b) suite", lambda: measure_suite(config, data, device, speed))
        if config.peers:
            row["peers"] = _attempt(f"{config.name}: (a) peers", lambda: measure_peers(config, data, device, workers))
            if "steps_per_s" in row["suite"] and "steps_per_s" in row["peers"]:
                row["ratio"] = row["suite"]["steps_per_s"] / row["peers"]["steps_per_s"]
        results.append(row)
    return {"device": device_name(device), "device_type": device.type, "reduced": reduced,
            "torch": torch.__version__, "cpu_cores": os.cpu_count(), "load_average_1min": load_average,
            "results": results}


def _figure(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:.2f}{unit}"


def _phases(measured: dict[str, Any]) -> str:
    if "error" in measured:
        return "— | — | —"
    breakdown = measured["breakdown_ms"]
    return (f"{breakdown['augmentation_ms']:.1f} | {breakdown['forward_backward_ms']:.1f} | "
            f"{breakdown['optimizer_ema_ms']:.1f}")


def _steps(measured: dict[str, Any] | None) -> str:
    if measured is None:
        return "—"
    return "failed (see throughput.json)" if "error" in measured else _figure(measured["steps_per_s"])


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
             "", "Made by `python -m fixmatch_bench.bench` (random uint8 data; a step = augmentation, "
             "forward/backward of labeled + weak + strong, cosine learning rate, SGD, EMA; periodic EMA "
             "evaluation included).",
             "(a) peers: per-image PIL RandAugment in DataLoader workers (one per core), fp32 eager. "
             "(b) suite: uint8 data on the device, batched per-sample augmentation"
             f"{', channels_last + bf16 autocast + compile: step + compile_augment' if gpu else ' (speed options off on CPU)'}.",
             "",
             "| configuration | (a) peers steps/s | (b) suite steps/s | ratio b/a | aug ms | fwd+bwd ms | opt+EMA ms |",
             "|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        lines.append(f"| {row['config']} | {_steps(row.get('peers'))} | {_steps(row['suite'])} | "
                     f"{_figure(row.get('ratio'), 'x')} | {_phases(row['suite'])} |")
    comparisons = _cta_vs_ra(report["results"])
    if comparisons:
        lines += [""] + comparisons
    for row in report["results"]:
        if "ladder" not in row:
            continue
        base = row["ladder"][0].get("steps_per_s")
        lines += ["", f"Speed options one by one, (b) on {row['config']}:", "",
                  "| speed options | steps/s | vs first row | aug ms | fwd+bwd ms | opt+EMA ms |",
                  "|---|---|---|---|---|---|"]
        for rung in row["ladder"]:
            ratio = rung["steps_per_s"] / base if base and "steps_per_s" in rung else None
            lines.append(f"| {rung['label']} | {_steps(rung)} | {_figure(ratio, 'x')} | {_phases(rung)} |")
    if not gpu:
        lines += ["", "GPU figures: not measured (no GPU on this machine). On a GPU host run "
                  "`uv run python -m fixmatch_bench.bench` to measure the full suite "
                  "(WRN-28-2 RA/CTA with the speed-option ladder, WRN-28-8, WRN-37-2 at 96 px)."]
    lines += ["", "The breakdown is a separate synchronised pass of (b); its sum can exceed 1000 / steps/s "
              "because phases no longer overlap."]
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
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    device = None if args.device == "auto" else torch.device(args.device)
    report = run_benchmark(device, reduced=True if args.reduced else None, only=args.only)
    if not report["results"]:
        parser.error(f"--only {args.only!r} matches no configuration")
    write_report(report, args.out)
    print(render_markdown(report))


if __name__ == "__main__":
    main()
