"""FixMatch (docs/protocol.md §4; BatchNorm: §7.1): a method of two views per unlabeled image.

Labeled, weak and strong images go through the network in ONE concatenated forward pass in
train mode (BatchNorm statistics come from all of them, as in the official code,
``fixmatch.py`` ``FixMatch.model``); pseudo-labels come from the weak view of that same pass
with a stop-gradient (no EMA teacher, no temperature); the mask is ``max p >= threshold``; the
unlabeled loss is averaged over all mu*B unlabeled images, not over the confident ones.

The official ablation scripts' variants are options of the block, off in the protocol:
``temperature`` and ``soft_targets`` (sharpening), ``pseudo_labels_from: ema`` (the mean
teacher), ``anchoring`` (which view gives the pseudo-label, which is trained), and
``distribution_alignment`` (FixMatch + DA, :mod:`.distribution_alignment`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import fail
from ..core.schema import Fraction, NonNegative, Params, Positive
from .base import Batch, LossLogs, Method, MethodParams, RunContext, View
from .distribution_alignment import DistributionAlignment
from .supervised import supervised_loss


class FixMatchParams(MethodParams):
    strong: Literal["randaugment", "ctaugment"]  # the strong view's policy
    threshold: Fraction  # tau: mask = max p >= threshold
    unlabeled_weight: NonNegative  # lambda_u
    # T: the mask from softmax(logits / T); 1 = no sharpening (ablation/ab_fixmatch_sharpen.py)
    temperature: Positive
    # true: the mask from the unsharpened distribution, the strong view trained towards softmax(logits / T)
    # (ablation/ab_fixmatch_sharpen_conditional_consistency.py)
    soft_targets: bool
    # model (the protocol: the weak view of the training pass) | ema: the EMA model in eval mode
    # (ablation/ab_fixmatch_meanteacher.py)
    pseudo_labels_from: Literal["model", "ema"]
    # <pseudo-label view>.<trained view> (ablation/ab_fixmatch_anchoring.py --anchoring)
    anchoring: Literal["weak.strong", "weak.weak", "strong.weak", "strong.strong"]
    distribution_alignment: bool  # ReMixMatch's alignment of the pseudo-label distribution (FixMatch + DA)


class FixMatchState(nn.Module):
    """A run's FixMatch state: the distribution-alignment buffer (FixMatch + DA), and how the weak view
    is forwarded (``speed.weak_no_grad``, not saved: it is part of the run's fingerprint)."""

    def __init__(self, alignment: DistributionAlignment | None, weak_no_grad: bool):
        super().__init__()
        self.alignment = alignment
        self.weak_no_grad = weak_no_grad


class FixMatch(Method):
    Params = FixMatchParams
    params: FixMatchParams

    @property
    def views(self) -> tuple[View, ...]:
        """(the pseudo-label view, the trained view): (weak, strong) in FixMatch, each drawn on its own."""
        pseudo_label_view, trained_view = self.params.anchoring.split(".")
        return pseudo_label_view, trained_view

    @property
    def strong(self) -> str:
        return self.params.strong

    @property
    def needs_teacher(self) -> bool:
        return self.params.pseudo_labels_from == "ema"

    def build_state(self, context: RunContext) -> FixMatchState:
        alignment = (DistributionAlignment(context.num_classes, context.class_distribution)
                     if self.params.distribution_alignment else None)
        return FixMatchState(alignment, context.weak_no_grad)

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: FixMatchState) -> tuple[Tensor, LossLogs]:
        if not batch.unlabeled:  # train.uratio = 0, allowed by allow_no_unlabeled_loss: the labeled loss alone
            return supervised_loss(forward, batch)
        align = state.alignment.align if state.alignment is not None else None
        return fixmatch_loss(forward, batch, self.params, teacher=teacher, align=align,
                             weak_no_grad=state.weak_no_grad)

    def after_step(self, state: FixMatchState, logs: LossLogs) -> None:
        if state.alignment is not None and "weak_probs" in logs:
            state.alignment.update(logs["weak_probs"])

    def check(self, params: Params) -> None:
        super().check(params)
        p = self.params
        if p.unlabeled_weight == 0:
            self.refuse_no_unlabeled_loss(f"methods.{self.name}.unlabeled_weight", 0.0)
        if p.distribution_alignment and (p.temperature != 1.0 or p.soft_targets):
            key, value = ("temperature", p.temperature) if p.temperature != 1.0 else ("soft_targets", True)
            fail(f"methods.{self.name}.{key}", value,
                 "the sharpening ablations are not defined with distribution alignment")
        if p.pseudo_labels_from == "ema" and params.speed.compile == "step":
            fail(f"methods.{self.name}.pseudo_labels_from", "ema",
                 "not supported with speed.compile = step (use model or none)")


def fixmatch_loss(forward: nn.Module, batch: Batch, params: FixMatchParams, teacher: nn.Module | None = None,
                  align: Callable[[Tensor], Tensor] | None = None,
                  weak_no_grad: bool = False) -> tuple[Tensor, LossLogs]:
    """Return the loss to minimise and detached tensors to log; ``batch.unlabeled`` is
    (pseudo-label view, trained view).

    ``params.temperature`` alone: the mask is taken from ``softmax(logits_weak / T)``; the hard
    label, its argmax, does not change. With ``params.soft_targets``: the mask comes from the
    unsharpened distribution and the trained view is trained towards the sharpened distribution
    itself (soft cross-entropy). ``teacher`` (``pseudo_labels_from: ema``): the pseudo-labels and
    the mask come from ``teacher(weak)`` instead of the training pass; the weak view still goes
    through that pass, so BatchNorm sees the same images.

    ``align`` maps the weak-view class probabilities to the distribution the pseudo-label and the
    mask are taken from (distribution alignment); the un-aligned probabilities are returned as
    ``weak_probs`` for its update. ``weak_no_grad`` (speed.weak_no_grad, ALGORITHM-CHANGING) runs
    the weak view in its own forward pass under ``no_grad``: BatchNorm then sees the weak images'
    statistics separately.
    """
    weak, strong = batch.unlabeled
    n_x, n_u = batch.labeled.shape[0], weak.shape[0]
    if weak_no_grad:
        with torch.no_grad():
            logits_weak = forward(weak)
        logits_x, logits_strong = forward(torch.cat([batch.labeled, strong])).split([n_x, n_u])
    else:
        logits = forward(torch.cat([batch.labeled, weak, strong]))
        logits_x, logits_weak, logits_strong = logits.split([n_x, n_u, n_u])
    if teacher is not None:
        with torch.no_grad():
            logits_weak = teacher(weak)
    loss_x = F.cross_entropy(logits_x, batch.targets)

    temperature = params.temperature
    weak_probs = torch.softmax(logits_weak.detach().float(), dim=1)
    target_probs = align(weak_probs) if align is not None else weak_probs
    sharpened = torch.softmax(logits_weak.detach().float() / temperature, dim=1) if temperature != 1.0 else target_probs
    confidence, pseudo_labels = (target_probs if params.soft_targets else sharpened).max(dim=1)
    mask = (confidence >= params.threshold).float()
    targets = sharpened if params.soft_targets else pseudo_labels
    loss_u = (F.cross_entropy(logits_strong, targets, reduction="none") * mask).mean()
    loss = loss_x + params.unlabeled_weight * loss_u

    logs = {
        "loss": loss.detach(),
        "loss_x": loss_x.detach(),
        "loss_u": loss_u.detach(),
        "mask_rate": mask.mean(),
        "weak_probs": weak_probs,
    }
    if batch.unlabeled_targets is not None:
        known = (batch.unlabeled_targets >= 0).float()
        correct = (pseudo_labels == batch.unlabeled_targets).float()
        # Accuracy of the pseudo-labels that pass the threshold (the ones that are trained on).
        logs["pseudo_label_correct"] = (correct * mask * known).sum()
        logs["pseudo_label_count"] = (mask * known).sum()
    return loss, logs
