"""One FixMatch training step: draw and augment a batch, then one update of the whole state.

:func:`draw_batch` and :func:`fixmatch_step` are what `dvc repro` trains with and what
the benchmark times. Under torchrun every rank draws the same global batch from
identically seeded generators and augments its share of it (:class:`StepParams`
holds the shares; docs/multi_gpu.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.runs import Run
from ..core.schema import Params
from .distributed import SINGLE_PROCESS, World
from .evaluation import to_model_input
from .fixmatch import Batch
from .optim import scheduled_lr, set_lr
from .run_data import RunData
from .state import TrainState


@dataclass(frozen=True)
class StepParams:
    """What one step reads from params (``train``, ``threshold``, the run's method) and this rank's shares."""

    lr: float
    lr_schedule: str
    lr_end: float
    steps: int
    threshold: float
    temperature: float  # the sharpening ablations (1.0, False: the FixMatch loss)
    soft_targets: bool
    ema_pseudo_labels: bool  # the mean-teacher ablation: pseudo-labels from the EMA model
    pseudo_label_view: str  # augment.anchoring: "weak" or "strong" for each unlabeled view (weak, strong: FixMatch)
    trained_view: str
    unlabeled_weight: float
    uses_unlabeled: bool  # semi-supervised method and uratio > 0
    ctaugment: bool  # update CTAugment's rates from the EMA model's predictions on probe images
    weak_no_grad: bool
    lr_as_tensor: bool
    labeled_share: slice  # this rank's part of the global labeled batch
    unlabeled_share: slice

    @classmethod
    def build(cls, params: Params, run: Run, world: World = SINGLE_PROCESS) -> StepParams:
        hp, method, speed, augment = params.train, params.methods[run.method], params.speed, params.augment
        uses_unlabeled = method.unlabeled and hp.uratio > 0
        pseudo_label_view, trained_view = augment.anchoring.split(".")
        return cls(lr=hp.lr, lr_schedule=hp.lr_schedule, lr_end=hp.lr_end or 0.0, steps=hp.steps,
                   threshold=params.threshold, temperature=hp.sharpen_temperature, soft_targets=hp.soft_pseudo_labels,
                   ema_pseudo_labels=hp.pseudo_labels_from == "ema", pseudo_label_view=pseudo_label_view,
                   trained_view=trained_view,
                   unlabeled_weight=hp.unlabeled_weight * uses_unlabeled, uses_unlabeled=uses_unlabeled,
                   # with only_cutout no view uses CTAugment: its rates would change nothing the model sees
                   ctaugment=method.strong == "ctaugment" and augment.strong_branch != "only_cutout",
                   weak_no_grad=speed.weak_no_grad,
                   lr_as_tensor=speed.lr_as_tensor, labeled_share=world.share(hp.batch, "train.batch"),
                   unlabeled_share=world.share(hp.batch * hp.uratio, "train.batch * train.uratio"))


@dataclass(frozen=True)
class Drawn:
    """This rank's batch, and the global labeled weak view (uint8) that CTAugment's probes start from."""

    batch: Batch
    labeled_view: Tensor


def draw_batch(state: TrainState, data: RunData, hp: StepParams) -> Drawn:
    """The next global batch, drawn the same on every rank, with this rank's share augmented.

    The unlabeled images give two views, each from its own weak draw: ``batch.weak`` is the
    pseudo-label view and ``batch.strong`` the trained view. In FixMatch they are a weak and a
    strong view; under the anchoring ablation, whichever ``augment.anchoring`` names.
    """
    labeled_index = state.labeled_stream.next()
    labeled = state.augmenter.weak(data.labeled_images[labeled_index], state.augment_generator)
    batch = Batch(labeled=to_model_input(labeled[hp.labeled_share]),
                  targets=data.labeled_targets[labeled_index][hp.labeled_share])
    if hp.uses_unlabeled:
        index = state.unlabeled_stream.next()
        images, share, generator = data.unlabeled_images[index], hp.unlabeled_share, state.augment_generator
        batch = Batch(labeled=batch.labeled, targets=batch.targets,
                      weak=to_model_input(_view(state, hp.pseudo_label_view, images, generator, share)),
                      strong=to_model_input(_view(state, hp.trained_view, images, generator, share)),
                      unlabeled_targets=data.unlabeled_targets[index][share])
    return Drawn(batch, labeled)


def _view(state: TrainState, kind: str, images: Tensor, generator: torch.Generator, share: slice) -> Tensor:
    augment = state.augmenter.strong if kind == "strong" else state.augmenter.weak
    return augment(images, generator, share)


def fixmatch_step(state: TrainState, drawn: Drawn, hp: StepParams, world: World = SINGLE_PROCESS) -> dict:
    """One update: the loss (:func:`~.fixmatch.fixmatch_loss`; pseudo-labels from the EMA model
    under the mean-teacher ablation), SGD at the step's cosine learning rate, BN statistics from
    rank 0, the EMA, then the distribution-alignment buffer and CTAugment's rates. Returns the
    loss's logs (device tensors, no host sync) and the learning rate."""
    state.functions.begin_step()
    lr = scheduled_lr(hp.lr_schedule, hp.lr, hp.lr_end, state.step, hp.steps)
    set_lr(state.optimizer, lr, as_tensor=hp.lr_as_tensor)
    align = state.alignment.align if state.alignment is not None else None
    loss, logs = state.functions.loss(state.forward, drawn.batch, hp.threshold, hp.unlabeled_weight,
                                      align=align, weak_no_grad=hp.weak_no_grad, temperature=hp.temperature,
                                      soft_targets=hp.soft_targets,
                                      teacher=state.ema_forward if hp.ema_pseudo_labels else None)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.functions.optimizer_step()
    world.sync_buffers(state.model)
    state.functions.ema_update(state.model)
    if state.alignment is not None:
        state.alignment.update(logs["weak_probs"])
    if hp.ctaugment:
        update_ctaugment(state, drawn, hp, world)
    state.step += 1
    return {**logs, "lr": lr}


def update_ctaugment(state: TrainState, drawn: Drawn, hp: StepParams, world: World) -> None:
    """CTAugment's rate update from the EMA model's confidence in the true label of probe images
    (one probe per labeled image of this rank's share; the rates see every rank's probes)."""
    probes, policies = state.augmenter.probe(drawn.labeled_view, state.augment_generator, hp.labeled_share)
    state.ema.module.eval()
    with torch.no_grad():
        probabilities = torch.softmax(state.ema_forward(to_model_input(probes)), dim=1)
    p_true = probabilities.gather(1, drawn.batch.targets[:, None]).squeeze(1)
    state.augmenter.update(world.gather(policies), world.gather(p_true))
