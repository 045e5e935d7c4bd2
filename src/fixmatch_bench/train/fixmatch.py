"""The FixMatch objective for one step: a pure function of model, batch and params.

docs/protocol.md §4 (BatchNorm: §7.1): labeled, weak and strong images go through the
network in ONE concatenated forward pass in train mode (BatchNorm statistics
come from all of them, as in the official code); pseudo-labels come from the
weak view of that same pass with a stop-gradient (no EMA teacher, no
temperature); the mask is ``max p >= threshold``; the unlabeled loss is
averaged over all mu*B unlabeled images, not over the confident ones. The
supervised-only baseline is the same function with no unlabeled images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Batch:
    """Images as float in [-1, 1]; ``unlabeled_targets`` only measures pseudo-label accuracy (-1 = unknown)."""

    labeled: Tensor
    targets: Tensor
    weak: Tensor | None = None
    strong: Tensor | None = None
    unlabeled_targets: Tensor | None = None


def fixmatch_loss(
    model: nn.Module,
    batch: Batch,
    threshold: float,
    unlabeled_weight: float,
    align: Callable[[Tensor], Tensor] | None = None,
    weak_no_grad: bool = False,
    temperature: float = 1.0,
    soft_targets: bool = False,
    teacher: nn.Module | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Return the loss to minimise and detached tensors to log.

    ``temperature`` and ``soft_targets`` are the official sharpening ablations (off: T = 1,
    hard labels, the FixMatch loss). ``temperature`` alone (ablation/ab_fixmatch_sharpen.py):
    the mask is taken from ``softmax(logits_weak / T)``; the hard label, its argmax, does not
    change. With ``soft_targets`` (ab_fixmatch_sharpen_conditional_consistency.py): the mask
    comes from the unsharpened distribution and the strong view is trained towards the
    sharpened distribution itself (soft cross-entropy).

    ``teacher`` (the mean-teacher ablation, ablation/ab_fixmatch_meanteacher.py): the pseudo-labels
    and the mask come from ``teacher(batch.weak)`` (the EMA model, in eval mode) instead of the
    training pass; the weak view still goes through that pass, so BatchNorm sees the same images.

    ``align`` maps the weak-view class probabilities to the distribution the
    pseudo-label and the mask are taken from (distribution alignment); the
    un-aligned probabilities are returned as ``weak_probs`` for its update.
    ``weak_no_grad`` (ALGORITHM-CHANGING speed option, off in the official
    method) runs the weak view in its own forward pass under ``no_grad``: BatchNorm
    then sees the weak images' statistics separately (see :mod:`.speed`).
    """
    if batch.weak is None:
        logits_x = model(batch.labeled)
        loss = F.cross_entropy(logits_x, batch.targets)
        return loss, {"loss": loss.detach(), "loss_x": loss.detach()}

    n_x, n_u = batch.labeled.shape[0], batch.weak.shape[0]
    if weak_no_grad:
        with torch.no_grad():
            logits_weak = model(batch.weak)
        logits_x, logits_strong = model(torch.cat([batch.labeled, batch.strong])).split([n_x, n_u])
    else:
        logits = model(torch.cat([batch.labeled, batch.weak, batch.strong]))
        logits_x, logits_weak, logits_strong = logits.split([n_x, n_u, n_u])
    if teacher is not None:
        with torch.no_grad():
            logits_weak = teacher(batch.weak)
    loss_x = F.cross_entropy(logits_x, batch.targets)

    weak_probs = torch.softmax(logits_weak.detach().float(), dim=1)
    target_probs = align(weak_probs) if align is not None else weak_probs
    sharpened = torch.softmax(logits_weak.detach().float() / temperature, dim=1) if temperature != 1.0 else target_probs
    confidence, pseudo_labels = (target_probs if soft_targets else sharpened).max(dim=1)
    mask = (confidence >= threshold).float()
    targets = sharpened if soft_targets else pseudo_labels
    loss_u = (F.cross_entropy(logits_strong, targets, reduction="none") * mask).mean()
    loss = loss_x + unlabeled_weight * loss_u

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
