"""What a run has logged so far: the training-log window, the evaluations, the curves and the time.

Saved in a checkpoint beside the training state, so that a resumed run's curves and
reported number are those of an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .curves import Curves
from .distributed import SINGLE_PROCESS, World


class NonFiniteLoss(RuntimeError):
    """The loss (or the weights) became NaN or infinite; no checkpoint of that state is written."""


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
            raise NonFiniteLoss(f"the loss became non-finite at step {bad_step}; stopping")

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


class RunLog:
    """The window of training logs, the test accuracies, the curves and the training time of a run."""

    def __init__(self, curves_dir: Path | None, saved: dict | None, device: torch.device):
        """``saved``: the checkpoint to resume from (None: a new run); ``curves_dir=None``: keep, do not write."""
        self.window = Window()
        self.accuracies: list[float] = []
        self._elapsed_before = 0.0
        if saved is not None:
            self.window.load_state_dict(saved["window"], device)
            self.accuracies, self._elapsed_before = list(saved["accuracies"]), saved["elapsed_s"]
        self.curves = Curves(curves_dir, saved["curves"] if saved is not None else None)
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training, over every session of the run."""
        return self._elapsed_before + time.perf_counter() - self._started

    def log_training(self, step: int, lr: float, world: World = SINGLE_PROCESS) -> dict[str, float]:
        """Read the window (means since the last read, over ranks) into the curves."""
        values = {**self.window.read(world), "train/lr": lr}
        self.curves.log(step, values)
        return values

    def log_evaluation(self, step: int, accuracy: float) -> float:
        """Record the EMA model's test accuracy; returns the error in %."""
        self.accuracies.append(accuracy)
        self.curves.log(step, {"eval/accuracy": accuracy, "eval/error": 100.0 - accuracy})
        return 100.0 - accuracy

    def state_dict(self, world: World = SINGLE_PROCESS) -> dict:
        """A collective under torchrun (the window's sums are averaged over ranks): call it on every rank."""
        return {"window": self.window.state_dict(world), "accuracies": self.accuracies,
                "curves": self.curves.history, "elapsed_s": self.elapsed()}
