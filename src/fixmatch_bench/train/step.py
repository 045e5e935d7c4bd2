"""One training step of any method: draw and augment a batch, then one update of the whole state.

:func:`draw_batch` and :func:`train_step` are what `dvc repro` trains with and what
the benchmark times. Under torchrun every rank draws the same global batch from
identically seeded generators and augments its share of it (:class:`StepPlan`
holds the shares; docs/multi_gpu.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.schema import Params
from ..methods.base import Batch, Method, View
from .distributed import SINGLE_PROCESS, World
from .evaluation import to_model_input
from .optim import scheduled_lr, set_lr
from .run_data import RunData
from .state import TrainState


@dataclass(frozen=True)
class StepPlan:
    """What one step reads from params and the run's method, and this rank's shares of the global batch."""

    lr: float
    lr_schedule: str
    lr_end: float
    steps: int
    views: tuple[View, ...]  # the unlabeled views the method draws, in order; () without unlabeled data
    labeled_view: View
    ctaugment: bool  # update CTAugment's rates from the EMA model's predictions on probe images
    lr_as_tensor: bool
    labeled_share: slice  # this rank's part of the global labeled batch
    unlabeled_share: slice

    @classmethod
    def build(cls, params: Params, method: Method, world: World = SINGLE_PROCESS) -> StepPlan:
        train, uratio = params.train, method.uratio(params)
        views = method.views if uratio > 0 else ()
        # with only_cutout no view uses CTAugment: its rates would change nothing the model sees
        ctaugment = method.strong == "ctaugment" and params.augment.strong_branch != "only_cutout"
        return cls(lr=method.lr(params), lr_schedule=train.lr_schedule, lr_end=train.lr_end or 0.0, steps=train.steps,
                   views=views, labeled_view=method.labeled_view, ctaugment=ctaugment, lr_as_tensor=params.speed.lr_as_tensor,
                   labeled_share=world.share(train.batch, "train.batch"),
                   unlabeled_share=world.share(train.batch * uratio, "train.batch * train.uratio"))


@dataclass(frozen=True)
class Drawn:
    """This rank's batch, and the global labeled weak view (uint8) that CTAugment's probes start from."""

    batch: Batch
    labeled_view: Tensor


def draw_batch(state: TrainState, data: RunData, plan: StepPlan) -> Drawn:
    """The next global batch, drawn the same on every rank, with this rank's share augmented.

    The labeled images get a weak view (and the strong policy on it where the method trains a
    strong labeled view); the unlabeled images one view per entry of ``plan.views`` (weak or
    strong), each from its own draws, in that order.
    """
    labeled_index = state.labeled_stream.next()
    labeled = state.augmenter.weak(data.labeled_images[labeled_index], state.augment_generator)
    shown = (state.augmenter.policy(labeled, state.augment_generator, plan.labeled_share) if plan.labeled_view == "strong"
             else labeled[plan.labeled_share])
    batch = Batch(labeled=to_model_input(shown),
                  targets=data.labeled_targets[labeled_index][plan.labeled_share])
    if plan.views:
        index = state.unlabeled_stream.next()
        images, share, generator = data.unlabeled_images[index], plan.unlabeled_share, state.augment_generator
        views = tuple(to_model_input(_view(state, kind, images, generator, share)) for kind in plan.views)
        batch = Batch(labeled=batch.labeled, targets=batch.targets, unlabeled=views,
                      unlabeled_targets=data.unlabeled_targets[index][share])
    return Drawn(batch, labeled)


def _view(state: TrainState, kind: View, images: Tensor, generator: torch.Generator, share: slice) -> Tensor:
    augment = state.augmenter.strong if kind == "strong" else state.augmenter.weak
    return augment(images, generator, share)


def train_step(state: TrainState, drawn: Drawn, plan: StepPlan, world: World = SINGLE_PROCESS) -> dict:
    """One update: the method's loss, SGD (or Adam) at the step's learning rate, BN statistics from
    rank 0, the EMA, then the method's own state (:meth:`~..methods.base.Method.after_step`) and
    CTAugment's rates. Returns the loss's logs (device tensors, no host sync) and the learning rate."""
    state.functions.begin_step()
    lr = scheduled_lr(plan.lr_schedule, plan.lr, plan.lr_end, state.step, plan.steps)
    set_lr(state.optimizer, lr, as_tensor=plan.lr_as_tensor)
    teacher = state.ema_forward if state.method.needs_teacher else None
    loss, logs = state.functions.loss(state.forward, drawn.batch, teacher, state.method_state)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.functions.optimizer_step()
    world.sync_buffers(state.model)
    state.functions.ema_update(state.model)
    state.method.after_step(state.method_state, logs)
    if plan.ctaugment:
        update_ctaugment(state, drawn, plan, world)
    state.step += 1
    return {**logs, "lr": lr}


def update_ctaugment(state: TrainState, drawn: Drawn, plan: StepPlan, world: World) -> None:
    """CTAugment's rate update from the EMA model's confidence in the true label of probe images
    (one probe per labeled image of this rank's share; the rates see every rank's probes)."""
    probes, policies = state.augmenter.probe(drawn.labeled_view, state.augment_generator, plan.labeled_share)
    state.ema.module.eval()
    with torch.no_grad():
        probabilities = torch.softmax(state.ema_forward(to_model_input(probes)), dim=1)
    p_true = probabilities.gather(1, drawn.batch.targets[:, None]).squeeze(1)
    state.augmenter.update(world.gather(policies), world.gather(p_true))
