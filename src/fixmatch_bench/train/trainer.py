"""The loop around :func:`~.step.train_step`: cadence only (log, evaluate, checkpoint, stop).

One call of :func:`train` trains one run (a method on one dataset@labels cell and
one fold), writes its outputs (``curves/`` and ``metrics.json``, and the EMA model's
weights where asked) and returns its metrics. It resumes from the run's checkpoint (a
folder keyed by the run's fingerprint, :mod:`.checkpoint`) when one exists, and
checkpoints every ``train.checkpoint_every`` steps and when asked to stop
(SIGTERM/SIGINT). Under torchrun each process trains its share of the global batch
(:mod:`.distributed`, docs/multi_gpu.md).
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import contextmanager
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..core.errors import ParamsError
from ..core.params import validate_params
from ..core.runs import Run
from ..core.schema import Params
from ..methods.base import Method
from ..methods.registry import run_method
from ..core.progress import progress as progress_bar
from ..core.stage import require_writable, writing
from .checkpoint import (CHECKPOINT_NAME, CHECKPOINTS_ENV, RunLock, checkpoint_root, load_for_resume,
                         run_checkpoint_dir, save_atomically, save_checkpoint)
from .distributed import SINGLE_PROCESS, World
from .evaluation import accuracy, reported_error
from .host_memory import keep_freed_memory
from .run_data import RunData, load_run_data
from .run_log import NonFiniteLoss, RunLog
from .state import TrainState, build_state
from .step import StepPlan, draw_batch, train_step

# Settings that change how a run is executed or logged but not what it computes.
NOT_IN_FINGERPRINT = ("eval_batch", "log_every", "checkpoint_every", "device")
WAIT_POLL_S = 0.5  # how often a trainer waiting for another trainer of its run looks again
METRICS_FILE, CURVES_DIR = "metrics.json", "curves"
# What metrics.json records (DVC metrics: one column each per run in `dvc exp show`): what the
# run measured and what it cost. Which run it is, its data and its settings are in dvc.lock.
RECORDED = ("error", "error_last", "error_best", "mask_rate", "pseudo_label_accuracy", "median_of_last", "steps",
            "wall_time_s", "steps_per_s", "device", "tf32")
__all__ = ["Interrupted", "NonFiniteLoss", "StopRequest", "stop_on_signals", "train"]


class Interrupted(RuntimeError):
    """Training stopped early on request: after writing a checkpoint at ``step``, or (``step=None``)
    while it waited for another trainer of its run, before training."""

    def __init__(self, signum: int | None, step: int | None):
        cause = signal.Signals(signum).name if signum is not None else "request"
        where = (f"at step {step}; checkpoint written, re-run the stage to resume" if step is not None else
                 "while waiting for another trainer of this run, before training; re-run the stage")
        super().__init__(f"stopped by {cause} {where}")
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


def resolve_device(params: Params) -> torch.device:
    """``train.device`` on this machine, refused in one line before any work where the run cannot use it."""
    name = params.train.device
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("invalid params: train.device = 'cuda' (no CUDA device is available here: use cpu or auto)")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and params.augment.impl == "reference":
        raise ParamsError("invalid params: augment.impl = 'reference' (per-image PIL runs on the CPU only, and "
                          "train.device resolves to cuda here: use augment.impl=batched, or train.device=cpu)")
    return device


def fingerprint(params: Params, run: Run, data: RunData) -> dict:
    """Everything that defines what a run computes; a checkpoint only resumes a run with the same one."""
    return {
        "run": run.key,
        "train": params.train.model_dump(exclude=set(NOT_IN_FINGERPRINT)),
        "augment": params.augment.model_dump(),
        "dataset": params.datasets[run.dataset].model_dump(),
        # allow_no_unlabeled_loss is what is validated, not what is computed
        "method": params.methods[run.method].model_dump(exclude={"allow_no_unlabeled_loss"}),
        "speed": params.speed.fingerprint(),
        "dataset_sha256": data.dataset_sha256,
        "split_sha256": data.split_sha256,
        # A checkpoint resumes on the device type it was made on: the generators' states differ in kind
        # (CPU Mersenne Twister, CUDA Philox), so a run on another device type starts over.
        "device": data.test_images.device.type,
    }


def train(params: Params | Mapping, run: Run, data_dir: Path, split_path: Path, out_dir: Path,
          stop: StopRequest | None = None, progress: bool = True, world: World | None = None,
          model_path: Path | None = None) -> dict:
    """Train one run to completion (resuming if possible), write its curves and ``metrics.json``
    to ``out_dir`` and the EMA model's weights to ``model_path``, and return its metrics
    (those of ``metrics.json`` and more: the run, its hashes, its speed options).

    ``world`` is this process's rank under torchrun (:mod:`.distributed`); every rank
    returns the same metrics (timings aside), rank 0 alone writes outputs and checkpoints.
    Rank 0 holds the folder's :class:`RunLock` meanwhile; while another trainer of the run
    holds it, this one waits, then resumes from its checkpoint or reuses its finished one.
    Once the outputs are written the run's checkpoint folder is removed, unless
    ``checkpoints.keep_finished`` or another trainer of the run waits for it.
    ``params`` may be a plain mapping: it is validated first.
    """
    params, world = validate_params(params), world or SINGLE_PROCESS
    method = run_method(params, run.method)
    keep_freed_memory()
    root = checkpoint_root(params.checkpoints.dir)
    if world.is_main:
        require_writable(root, "the checkpoint folder", f" (set checkpoints.dir or ${CHECKPOINTS_ENV})")
        require_writable(out_dir, "the run's output folder")
        if model_path is not None:
            require_writable(model_path.parent, "the model folder")
    device = world.place(resolve_device(params))
    data = load_run_data(data_dir, split_path, device)
    run_fingerprint = fingerprint(params, run, data)
    checkpoint_dir = run_checkpoint_dir(root, run.key, run_fingerprint)
    stop = stop or StopRequest()
    lock = _claim(checkpoint_dir, run, stop, world)
    try:
        try:
            metrics, state = _train_run(params, run, method, data, run_fingerprint, checkpoint_dir, out_dir, stop,
                                        progress, world)
        except NonFiniteLoss as error:
            kept = ("the last good checkpoint is kept" if (checkpoint_dir / CHECKPOINT_NAME).exists()
                    else "no checkpoint was written before it")
            raise NonFiniteLoss(f"{error}, {kept}") from None
        if world.is_main:
            write_outputs(out_dir, metrics, state.ema.module.state_dict(), model_path)
            lock.finish(remove=not params.checkpoints.keep_finished)
        return metrics
    finally:
        if lock is not None:
            lock.release()


def _claim(checkpoint_dir: Path, run: Run, stop: StopRequest, world: World) -> RunLock | None:
    """Rank 0's :class:`RunLock` on the run, taken once no other trainer holds it; every rank waits
    meanwhile (in step, so that a long wait holds no collective open) and stops on a stop request."""
    lock = RunLock(checkpoint_dir) if world.is_main else None
    try:
        announced = False
        while not world.any(lock is not None and lock.try_acquire()):
            if lock is not None and not announced:
                print(f"{run.key}: waiting for another trainer of this run (pid {lock.holder()}) to finish or stop; "
                      f"then resuming from or reusing its checkpoint in {checkpoint_dir}", flush=True)
                announced = True
            if world.any(stop.signum is not None):
                raise Interrupted(stop.signum, None)
            time.sleep(WAIT_POLL_S)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def _train_run(params: Params, run: Run, method: Method, data: RunData, run_fingerprint: dict,
               checkpoint_dir: Path, out_dir: Path, stop: StopRequest, progress: bool,
               world: World) -> tuple[dict, TrainState]:
    """The steps from the checkpoint (or 0) to ``train.steps``; the run's metrics and final state."""
    device = data.test_images.device  # the run's device: its data is there
    plan, cadence = StepPlan.build(params, method, world), params.train
    state = build_state(params, run, method, data, device, world)
    saved = load_for_resume(checkpoint_dir, run_fingerprint)
    if saved is not None:
        state.load_state_dict(saved)
        if world.is_main:
            print(f"{run.key}: resuming at step {state.step} of {plan.steps} from {checkpoint_dir}", flush=True)
    log = RunLog(out_dir / CURVES_DIR if world.is_main else None, saved, device)

    def save(finished: bool) -> None:
        save_progress(checkpoint_dir, run_fingerprint, state, log, world, finished)

    def evaluate() -> float:
        return float(accuracy(state.ema_forward, data.test_images, data.test_targets, cadence.eval_batch))

    state.model.train()
    bar = progress_bar(plan.steps, run.key, unit="step", initial=state.step, disable=not (progress and world.is_main))
    for step in range(state.step + 1, plan.steps + 1):
        logs = train_step(state, draw_batch(state, data, plan), plan, world)
        log.window.add(step, logs)
        last = step == plan.steps
        if step % cadence.log_every == 0 or last:
            values = log.log_training(step, logs["lr"], world)
            bar.set_postfix(loss=f"{values.get('train/loss', float('nan')):.3f}",
                            mask=f"{values.get('train/mask_rate', 0.0):.2f}", refresh=False)
        if step % cadence.eval_every == 0 or last:
            bar.set_postfix(error=f"{log.log_evaluation(step, world.from_main(evaluate)):.2f}", refresh=False)
        bar.update(1)
        if world.any(stop.requested(step)) and not last:
            log.window.check_finite(world)
            save(finished=False)
            bar.close()
            raise Interrupted(stop.signum, step)
        if step % cadence.checkpoint_every == 0 and not last:
            save(finished=False)
    bar.close()
    wall_time = log.elapsed()
    save(finished=True)
    return _metrics(params, run, data, log, wall_time, world), state


def save_progress(directory: Path, run_fingerprint: dict, state: TrainState, log: RunLog, world: World,
                  finished: bool) -> None:
    """Checkpoint the state and the log (rank 0 writes, every rank waits); never replaces a good
    checkpoint with diverged weights (the update after the last finite loss can overflow)."""
    tensors = [t for t in state.model.state_dict().values() if t.is_floating_point()]
    if not torch.stack([tensor.isfinite().all() for tensor in tensors]).all():
        raise NonFiniteLoss(f"the weights became non-finite by step {state.step}; stopping")
    log_state = log.state_dict(world)
    if world.is_main:
        save_checkpoint(directory, {"fingerprint": run_fingerprint, "finished": finished,
                                    **state.state_dict(), **log_state})
    world.barrier()


def _metrics(params: Params, run: Run, data: RunData, log: RunLog, wall_time: float, world: World) -> dict:
    """What the run measured and cost (:data:`RECORDED`), and which run and data it was."""
    device, steps, median_of_last = data.test_images.device, params.train.steps, params.train.median_of_last
    speed = params.speed
    mask_rates = log.curves.series("train/mask_rate")
    pseudo_accuracies = log.curves.series("train/pseudo_label_accuracy")
    return {
        "run": run.name, "dataset": run.dataset, "labels": run.labels, "method": run.method, "fold": run.fold,
        "error": reported_error(log.accuracies, median_of_last),
        "error_last": 100.0 - log.accuracies[-1],
        "error_best": 100.0 - max(log.accuracies),
        "median_of_last": median_of_last,
        "evaluations": len(log.accuracies),
        "steps": steps,
        "wall_time_s": wall_time,
        "steps_per_s": steps / wall_time if wall_time > 0 else float("nan"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tf32": speed.tf32,
        "world_size": world.world_size,
        "speed": speed.model_dump(),  # weak_no_grad changes the algorithm: such runs are reported separately
        "mask_rate": mask_rates[-1] if mask_rates else None,
        "pseudo_label_accuracy": pseudo_accuracies[-1] if pseudo_accuracies else None,
        "split_sha256": data.split_sha256,
        "dataset_sha256": data.dataset_sha256,
    }


def write_outputs(out_dir: Path, metrics: dict, ema_weights: dict, model_path: Path | None) -> None:
    """``metrics.json`` (the :data:`RECORDED` fields) and the EMA weights, on the CPU (they load anywhere)."""
    if model_path is not None:
        save_atomically(model_path, {name: tensor.detach().cpu() for name, tensor in ema_weights.items()})
    text = json.dumps({key: metrics[key] for key in RECORDED}, indent=2) + "\n"
    with writing(out_dir / METRICS_FILE, needed=len(text)):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / METRICS_FILE).write_text(text)
