"""Pieces the methods share: ramps over training, BatchNorm passes that leave the running
statistics alone, sharpening and the consistency loss (MixUp and the interleave: :mod:`.mixup`).

The official code (google-research/fixmatch ``libml/``) runs several training-mode passes per
step in most baselines but keeps the BatchNorm update ops of one of them only (the others
normalise with their own batch statistics and update nothing): :func:`bn_frozen` is that.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.schema import Count, Fraction, NonNegative, Params
from .base import Batch, Method, MethodParams, RunContext


class Ramp(nn.Module):
    """The official linear warm-up of a loss weight, ``clip(step / length, 0, 1)`` (0 at the first
    step), from a step count kept on the run's device (saved and restored with the method's state;
    read without a host synchronisation). :meth:`advance` after each step."""

    def __init__(self, length: float, device: torch.device):
        super().__init__()
        self.length = max(length, 1e-12)
        self.register_buffer("step", torch.zeros((), dtype=torch.float32, device=device))

    def forward(self) -> Tensor:
        return (self.step / self.length).clamp(0.0, 1.0)

    def advance(self) -> None:
        self.step.add_(1.0)


@contextmanager
def bn_frozen(module: nn.Module) -> Iterator[None]:
    """Training-mode passes inside leave every BatchNorm's running statistics unchanged
    (momentum 0: running = 1 * running + 0 * batch, exactly), as the official passes whose
    update ops are not collected."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@contextmanager
def train_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in training mode inside (BatchNorm from the batch), restored after."""
    was_training = module.training
    module.train()
    try:
        yield
    finally:
        module.train(was_training)


def softmax_mse(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """The Π-Model / Mean Teacher consistency: squared softmax difference, mean over classes, then images."""
    return ((teacher_logits.softmax(1) - student_logits.softmax(1)) ** 2).mean(1).mean()


def sharpen(probabilities: Tensor, temperature: float) -> Tensor:
    """``p ** (1 / T)``, renormalised (MixMatch's label guess)."""
    sharpened = probabilities ** (1.0 / temperature)
    return sharpened / sharpened.sum(1, keepdim=True)


class WarmedUpParams(MethodParams):
    uratio: Count  # unlabeled images per labeled one (1: the official ClassifySemi.train batches B)
    consistency_weight: NonNegative
    warmup_pos: Fraction  # the warm-up reaches 1 at this fraction of training


class WarmedUp(Method):
    """A baseline of the official ``ClassifySemi.train`` (Π-Model, Pseudo-Labeling, Mean Teacher): its own
    unlabeled ratio, a consistency weight warmed up linearly over ``warmup_pos`` of training, and the
    labeled batch in a pass of its own, the one that updates BatchNorm's running statistics."""

    Params = WarmedUpParams
    params: WarmedUpParams

    def uratio(self, params: Params) -> int:
        return self.params.uratio

    def build_state(self, context: RunContext) -> Ramp:
        return Ramp(self.params.warmup_pos * context.steps, context.class_distribution.device)

    def after_step(self, state: Ramp, logs: dict[str, Tensor]) -> None:
        state.advance()

    @staticmethod
    def labeled_loss(forward: nn.Module, batch: Batch) -> Tensor:
        return F.cross_entropy(forward(batch.labeled), batch.targets)
