"""The training loop around :func:`fixmatch_loss`: data, augmentation, optimizer, EMA,
distribution alignment, CTAugment probes, evaluation, curves and checkpoints.

One call of :func:`train` trains one run (a method on one dataset@labels cell and
one fold), writes its outputs (``curves/`` and ``metrics.json``, and the EMA model's
weights where asked) and returns its metrics. It resumes from the run's checkpoint (a
folder keyed by the run's fingerprint, :mod:`.checkpoint`) when one exists, and
checkpoints every ``train.checkpoint_every`` steps and when asked to stop
(SIGTERM/SIGINT).
Under torchrun each process trains its share of the global batch
(:mod:`.distributed`, docs/multi_gpu.md).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..core.config import Run
from ..core.progress import progress as progress_bar
from ..core.stage import require_writable
from ..data.prepared import load_prepared
from ..data.splits import read_split
from .augment import make_augmenter
from .checkpoint import (CHECKPOINTS_ENV, RunLock, checkpoint_root, load_for_resume, run_checkpoint_dir, save_atomically,
                         save_checkpoint)
from .curves import Curves
from .distributed import SINGLE_PROCESS, World
from .distribution_alignment import DistributionAlignment
from .ema import ModelEMA
from .evaluation import accuracy, reported_error, to_model_input
from .fixmatch import Batch, fixmatch_loss
from .optim import cosine_lr, make_optimizer, set_lr
from .sampling import IndexStream
from .speed import SpeedOptions, StepFunctions, fast_forward, prepare_model
from .wide_resnet import WideResNet

# Settings that change how a run is executed or logged but not what it computes.
NOT_IN_FINGERPRINT = ("eval_batch", "log_every", "checkpoint_every", "device")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """Training stopped early on request after writing a checkpoint."""

    def __init__(self, signum: int | None, step: int):
        cause = signal.Signals(signum).name if signum is not None else "request"
        super().__init__(f"stopped by {cause} at step {step}; checkpoint written, re-run the stage to resume")
        self.signum = signum


@dataclass
class StopRequest:
    """Why and when to stop early: a signal (set by the handler) or a step count.

    The loop checkpoints and stops at the first step boundary where it is requested.
    """

    signum: int | None = None
    after_step: int | None = None

    def requested(self, step: int) -> bool:
        return self.signum is not None or (self.after_step is not None and step >= self.after_step)


@contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[StopRequest]:
    """Turn SIGTERM/SIGINT into a polite stop request for the duration of training."""
    def handler(signum, _frame):
        request.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class RunData:
    """A run's images (uint8 NCHW) and labels on the training device."""

    labeled_images: torch.Tensor
    labeled_targets: torch.Tensor
    unlabeled_images: torch.Tensor
    unlabeled_targets: torch.Tensor  # -1 where unknown (STL-10's unlabeled images)
    test_images: torch.Tensor
    test_targets: torch.Tensor
    class_distribution: torch.Tensor  # labeled-class distribution (p_data of distribution alignment)
    dataset_sha256: str
    split_sha256: str


def _nchw(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A memory-mapped NHWC array as an NCHW tensor on ``device`` (one read, one copy)."""
    return torch.from_numpy(np.array(array)).permute(0, 3, 1, 2).contiguous().to(device)


def load_run_data(data_dir: Path, split_path: Path, device: torch.device) -> RunData:
    """Move the prepared dataset and the run's labeled split onto ``device``."""
    dataset = load_prepared(data_dir)
    split = read_split(split_path, dataset)
    indices = np.asarray(split["indices"], np.int64)
    train_images = _nchw(dataset.train_images, device)
    train_targets = torch.from_numpy(np.array(dataset.train_labels)).to(device)
    unlabeled_images, unlabeled_targets = train_images, train_targets
    if dataset.unlabeled_images is not None:  # the unlabeled set is train + extra unlabeled images
        extra = _nchw(dataset.unlabeled_images, device)
        unlabeled_images = torch.cat([train_images, extra])
        unlabeled_targets = torch.cat([train_targets, torch.full((len(extra),), -1, device=device)])
    histogram = torch.tensor(split["class_histogram"], dtype=torch.float64)
    index = torch.from_numpy(indices).to(device)
    return RunData(
        labeled_images=train_images[index],
        labeled_targets=train_targets[index],
        unlabeled_images=unlabeled_images,
        unlabeled_targets=unlabeled_targets,
        test_images=_nchw(dataset.test_images, device),
        test_targets=torch.from_numpy(np.array(dataset.test_labels)).to(device),
        class_distribution=(histogram / histogram.sum()).float().to(device),
        dataset_sha256=dataset.sha256,
        split_sha256=hashlib.sha256(Path(split_path).read_bytes()).hexdigest(),
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(name)


def fingerprint(params: dict, run: Run, data: RunData) -> dict:
    """Everything that defines what a run computes; a checkpoint only resumes a run with the same one."""
    method = params["methods"][run.method]
    train_params = {key: value for key, value in params["train"].items() if key not in NOT_IN_FINGERPRINT}
    result = {
        "run": run.key,
        "train": train_params,
        "augment": params["augment"],
        "dataset": params["datasets"][run.dataset],
        "method": method,
        "speed": SpeedOptions.from_params(params.get("speed")).fingerprint(),
        "dataset_sha256": data.dataset_sha256,
        "split_sha256": data.split_sha256,
    }
    if method["unlabeled"]:
        result["threshold"] = params["threshold"]
    return result


def _rng_states() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].copy()), "pos": int(numpy_state[2])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_states(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy(), state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Window:
    """Training logs summed on the device between two reads (no per-step host sync)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    first_bad_step: torch.Tensor | None = None

    def add(self, step: int, logs: dict[str, torch.Tensor]) -> None:
        for name in ("loss", "loss_x", "loss_u", "mask_rate", "pseudo_label_correct", "pseudo_label_count"):
            if name in logs:
                value = logs[name].detach().double()
                self.sums[name] = self.sums[name] + value if name in self.sums else value
        bad = ~torch.isfinite(logs["loss"].detach())
        marker = torch.where(bad, step, -1)  # scalars, not device tensors: no host-to-device copy per step
        self.first_bad_step = marker if self.first_bad_step is None else torch.where(
            self.first_bad_step >= 0, self.first_bad_step, marker)
        self.steps += 1

    def check_finite(self, world: World = SINGLE_PROCESS) -> None:
        """Raise :class:`NonFiniteLoss` naming the first step whose loss was NaN or infinite (on any rank)."""
        if self.first_bad_step is None:
            return
        bad_step = world.first_marked(self.first_bad_step)
        if bad_step >= 0:
            raise NonFiniteLoss(f"the loss became non-finite at step {bad_step}; "
                                "stopping, the last good checkpoint is kept")

    def read(self, world: World = SINGLE_PROCESS) -> dict[str, float]:
        """Means over the window and over ranks, read from the device once; raises on a non-finite loss."""
        self.check_finite(world)
        if not self.steps:
            return {}
        names = sorted(self.sums)
        means = world.mean(torch.stack([self.sums[name] for name in names])).tolist() if names else []
        sums = dict(zip(names, means))
        values = {f"train/{name}": sums[name] / self.steps for name in ("loss", "loss_x", "loss_u", "mask_rate")
                  if name in sums}
        if sums.get("pseudo_label_count"):  # accuracy of the confident pseudo-labels; undefined when none
            values["train/pseudo_label_accuracy"] = sums["pseudo_label_correct"] / sums["pseudo_label_count"]
        self.sums, self.steps, self.first_bad_step = {}, 0, None
        return values

    def state_dict(self, world: World = SINGLE_PROCESS) -> dict:
        """The window with its sums averaged over ranks (a collective: call it on every rank).

        Every rank resumes from the averaged sums; as the logged values are means over
        ranks, adding each rank's later steps to them gives the same values as never stopping.
        """
        names = sorted(self.sums)
        sums = world.mean(torch.stack([self.sums[name] for name in names])).cpu() if names else []
        first_bad_step = None if self.first_bad_step is None else torch.tensor(world.first_marked(self.first_bad_step))
        return {"sums": dict(zip(names, sums)), "steps": self.steps, "first_bad_step": first_bad_step}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.steps = state["steps"]
        self.first_bad_step = None if state["first_bad_step"] is None else state["first_bad_step"].to(device)


METRICS_FILE, CURVES_DIR = "metrics.json", "curves"
# What metrics.json records (DVC metrics: one column each per run in `dvc exp show`): what the
# run measured and what it cost. Which run it is, its data and its settings are in dvc.lock.
RECORDED = ("error", "error_last", "error_best", "mask_rate", "pseudo_label_accuracy", "median_of_last", "steps",
            "wall_time_s", "steps_per_s", "device")


def train(params: dict, run: Run, data_dir: Path, split_path: Path, out_dir: Path,
          stop: StopRequest | None = None, progress: bool = True, world: World | None = None,
          model_path: Path | None = None) -> dict:
    """Train one run to completion (resuming if possible), write its curves and ``metrics.json``
    to ``out_dir`` and the EMA model's weights to ``model_path``, and return its metrics
    (those of ``metrics.json`` and more: the run, its hashes, its speed options).

    ``world`` is this process's rank under torchrun (:mod:`.distributed`); every rank
    returns the same metrics (timings aside), rank 0 alone writes outputs and checkpoints.
    Once the outputs are written the run's checkpoint folder is removed, unless
    ``checkpoints.keep_finished``. Rank 0 holds the folder's :class:`RunLock` meanwhile.
    """
    world = world or SINGLE_PROCESS
    root = checkpoint_root(params["checkpoints"]["dir"])
    if world.is_main:
        require_writable(root, "the checkpoint folder", f" (set checkpoints.dir or ${CHECKPOINTS_ENV})")
        require_writable(out_dir, "the run's output folder")
        if model_path is not None:
            require_writable(model_path.parent, "the model folder")
    device = world.place(resolve_device(params["train"]["device"]))
    data = load_run_data(data_dir, split_path, device)
    run_fingerprint = fingerprint(params, run, data)
    checkpoint_dir = run_checkpoint_dir(root, run.key, run_fingerprint)
    lock = RunLock(checkpoint_dir) if world.is_main else None
    try:
        return _train_run(params, run, data, device, run_fingerprint, checkpoint_dir, out_dir, stop or StopRequest(),
                          progress, world, model_path)
    finally:
        if lock is not None:
            lock.release()


def _train_run(params: dict, run: Run, data: RunData, device: torch.device, run_fingerprint: dict,
               checkpoint_dir: Path, out_dir: Path, stop: StopRequest, progress: bool, world: World,
               model_path: Path | None) -> dict:
    """:func:`train` once the run's data is on its device and its checkpoint folder is locked."""
    hp = params["train"]
    facts = params["datasets"][run.dataset]
    method = params["methods"][run.method]
    labeled_share = world.share(hp["batch"], "train.batch")
    unlabeled_share = world.share(hp["batch"] * hp["uratio"], "train.batch * train.uratio")
    state = load_for_resume(checkpoint_dir, run_fingerprint)

    seed = hp["seed"] * 1000 + run.fold
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    speed = SpeedOptions.from_params(params.get("speed"))
    if speed.compiles:
        torch.compiler.reset()  # compile afresh: the same graphs whether this process trained other runs or not
    model = WideResNet(num_classes=facts["num_classes"], in_channels=facts["channels"], **facts["network"]).to(device)
    prepare_model(model, speed)
    ema = ModelEMA(model, hp["ema"])
    optimizer = make_optimizer(model, hp["lr"], hp["momentum"], hp["nesterov"], facts["weight_decay"],
                               **speed.optimizer_kwargs())
    # EMA, probes and checkpoints use the plain modules; training goes through DDP when distributed.
    forward, ema_forward = fast_forward(world.wrap(model), speed, training=True), fast_forward(ema.module, speed)
    step_functions = StepFunctions.build(fixmatch_loss, optimizer, ema.update, speed)
    cutout = facts["cta_cutout"] if method["strong"] == "ctaugment" else facts["ra_cutout"]
    options = {"ra_translate_scale": facts["ra_translate_scale"]} if method["strong"] == "randaugment" else {}
    augmenter = make_augmenter(strong=method["strong"], impl=params["augment"]["impl"], flip=facts["flip"],
                               translate=facts["translate"], cutout=cutout, **options)
    if speed.compile_augment:
        augmenter.compile()
    alignment = (DistributionAlignment(facts["num_classes"], data.class_distribution)
                 if method["distribution_alignment"] else None)
    sample_generator = torch.Generator(device=device).manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)
    labeled_stream = IndexStream(len(data.labeled_targets), hp["batch"], sample_generator)
    unlabeled_stream = IndexStream(len(data.unlabeled_targets), hp["batch"] * hp["uratio"], sample_generator)
    uses_unlabeled = method["unlabeled"] and hp["uratio"] > 0
    window = Window()
    start_step, accuracies, elapsed = 0, [], 0.0

    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        augmenter.load_state_dict(state["augmenter"])
        if alignment is not None:
            alignment.load_state_dict(state["alignment"])
        sample_generator.set_state(state["generators"]["sample"])
        augment_generator.set_state(state["generators"]["augment"])
        labeled_stream.load_state_dict(state["streams"]["labeled"])
        unlabeled_stream.load_state_dict(state["streams"]["unlabeled"])
        window.load_state_dict(state["window"], device)
        _set_rng_states(state["rng"])
        start_step, accuracies, elapsed = state["step"], list(state["accuracies"]), state["elapsed_s"]
        if world.is_main:
            print(f"{run.key}: resuming at step {start_step} of {hp['steps']} from {checkpoint_dir}", flush=True)
    curves = Curves(out_dir / CURVES_DIR if world.is_main else None, state["curves"] if state is not None else None)

    def checkpoint(step: int, finished: bool) -> None:
        # Never replace a good checkpoint with diverged weights (the update after the last finite loss can overflow).
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        if not torch.stack([tensor.isfinite().all() for tensor in tensors]).all():
            raise NonFiniteLoss(f"the weights became non-finite by step {step}; stopping, "
                                "the last good checkpoint is kept")
        window_state = window.state_dict(world)
        if not world.is_main:
            world.barrier()
            return
        save_checkpoint(checkpoint_dir, {
            "fingerprint": run_fingerprint, "finished": finished, "step": step,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "augmenter": augmenter.state_dict(),
            "alignment": alignment.state_dict() if alignment is not None else None,
            "generators": {"sample": sample_generator.get_state(), "augment": augment_generator.get_state()},
            "streams": {"labeled": labeled_stream.state_dict(), "unlabeled": unlabeled_stream.state_dict()},
            "window": window_state, "rng": _rng_states(),
            "accuracies": accuracies, "curves": curves.history, "elapsed_s": elapsed + time.perf_counter() - started,
        })
        world.barrier()

    steps = hp["steps"]
    model.train()
    started = time.perf_counter()
    bar = progress_bar(steps, run.key, unit="step", initial=start_step, disable=not (progress and world.is_main))
    for step in range(start_step + 1, steps + 1):
        lr = cosine_lr(hp["lr"], step - 1, steps)
        set_lr(optimizer, lr, as_tensor=speed.lr_as_tensor)
        # The global batch and its augmentations are drawn identically on every rank; each rank
        # augments its share (the labeled weak view whole: CTAugment probes draw from all of it).
        labeled_index = labeled_stream.next()
        labeled = augmenter.weak(data.labeled_images[labeled_index], augment_generator)
        targets = data.labeled_targets[labeled_index][labeled_share]
        batch = Batch(labeled=to_model_input(labeled[labeled_share]), targets=targets)
        if uses_unlabeled:
            unlabeled_index = unlabeled_stream.next()
            unlabeled = data.unlabeled_images[unlabeled_index]
            batch = Batch(labeled=batch.labeled, targets=targets,
                          weak=to_model_input(augmenter.weak(unlabeled, augment_generator, unlabeled_share)),
                          strong=to_model_input(augmenter.strong(unlabeled, augment_generator, unlabeled_share)),
                          unlabeled_targets=data.unlabeled_targets[unlabeled_index][unlabeled_share])
        loss, logs = step_functions.loss(forward, batch, params["threshold"],
                                         hp["unlabeled_weight"] * uses_unlabeled,
                                         align=alignment.align if alignment is not None else None,
                                         weak_no_grad=speed.weak_no_grad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step_functions.optimizer_step()
        world.sync_buffers(model)
        step_functions.ema_update(model)
        if alignment is not None:
            alignment.update(logs["weak_probs"])
        if method["strong"] == "ctaugment":
            probes, policies = augmenter.probe(labeled, augment_generator, labeled_share)
            ema.module.eval()
            with torch.no_grad():
                probabilities = torch.softmax(ema_forward(to_model_input(probes)), dim=1)
            p_true = probabilities.gather(1, targets[:, None]).squeeze(1)
            augmenter.update(world.gather(policies), world.gather(p_true))
        window.add(step, logs)

        if step % hp["log_every"] == 0 or step == steps:
            values = window.read(world)
            values["train/lr"] = lr
            curves.log(step, values)
            bar.set_postfix(loss=f"{values.get('train/loss', float('nan')):.3f}",
                            mask=f"{values.get('train/mask_rate', 0.0):.2f}", refresh=False)
        if step % hp["eval_every"] == 0 or step == steps:
            value = world.from_main(
                lambda: float(accuracy(ema_forward, data.test_images, data.test_targets, hp["eval_batch"])))
            accuracies.append(value)
            curves.log(step, {"eval/accuracy": value, "eval/error": 100.0 - value})
            bar.set_postfix(error=f"{100.0 - value:.2f}", refresh=False)
        bar.update(1)
        if world.any(stop.requested(step)) and step != steps:
            window.check_finite(world)
            checkpoint(step, finished=False)
            bar.close()
            raise Interrupted(stop.signum, step)
        if step % hp["checkpoint_every"] == 0 and step != steps:
            checkpoint(step, finished=False)
    bar.close()
    wall_time = elapsed + time.perf_counter() - started
    checkpoint(steps, finished=True)

    mask_rates = curves.series("train/mask_rate")
    pseudo_accuracies = curves.series("train/pseudo_label_accuracy")
    metrics = {
        "run": run.name, "dataset": run.dataset, "labels": run.labels, "method": run.method, "fold": run.fold,
        "error": reported_error(accuracies, hp["median_of_last"]),
        "error_last": 100.0 - accuracies[-1],
        "error_best": 100.0 - max(accuracies),
        "median_of_last": hp["median_of_last"],
        "evaluations": len(accuracies),
        "steps": steps,
        "wall_time_s": wall_time,
        "steps_per_s": steps / wall_time if wall_time > 0 else float("nan"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world.world_size,
        "speed": asdict(speed),  # weak_no_grad changes the algorithm: such runs are reported separately
        "mask_rate": mask_rates[-1] if mask_rates else None,
        "pseudo_label_accuracy": pseudo_accuracies[-1] if pseudo_accuracies else None,
        "split_sha256": data.split_sha256,
        "dataset_sha256": data.dataset_sha256,
    }
    if world.is_main:
        write_outputs(out_dir, metrics, ema.module.state_dict(), model_path)
        if not params["checkpoints"]["keep_finished"]:
            shutil.rmtree(checkpoint_dir)
    return metrics


def write_outputs(out_dir: Path, metrics: dict, ema_weights: dict, model_path: Path | None) -> None:
    """``metrics.json`` (the :data:`RECORDED` fields) and the EMA weights."""
    if model_path is not None:
        save_atomically(model_path, ema_weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps({key: metrics[key] for key in RECORDED}, indent=2) + "\n")
