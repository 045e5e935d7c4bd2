"""Pseudo-Labeling (official ``pseudo_label.py`` ``PseudoLabel.model``; docs/baselines_official.md §3).

One weak view of each unlabeled image, in its own training-mode pass that leaves BatchNorm's
running statistics alone (the labeled pass updates them). The target is the argmax of the same
logits that are trained (no stop-gradient is needed: it is an integer); the mask is a strict
``max p > threshold`` on the unsharpened softmax; the loss is averaged over all unlabeled
images, weighted by ``consistency_weight`` and the linear warm-up.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..core.schema import Fraction
from .base import Batch, LossLogs, View
from .common import Ramp, WarmedUp, WarmedUpParams, bn_frozen


class PseudoLabelingParams(WarmedUpParams):
    threshold: Fraction  # strict: max p > threshold


class PseudoLabeling(WarmedUp):
    Params = PseudoLabelingParams
    params: PseudoLabelingParams
    views: tuple[View, ...] = ("weak",)

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: Ramp) -> tuple[Tensor, LossLogs]:
        loss_x = self.labeled_loss(forward, batch)
        if not batch.unlabeled:
            return loss_x, {"loss": loss_x.detach(), "loss_x": loss_x.detach()}
        with bn_frozen(forward):
            logits_y = forward(batch.unlabeled[0])
        pseudo_labels = logits_y.argmax(1)
        mask = (logits_y.detach().softmax(1) > self.params.threshold).any(1).float()
        loss_u = (F.cross_entropy(logits_y, pseudo_labels, reduction="none") * mask).mean()
        loss = loss_x + state() * self.params.consistency_weight * loss_u
        logs = {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": mask.mean()}
        if batch.unlabeled_targets is not None:
            known = (batch.unlabeled_targets >= 0).float()
            logs["pseudo_label_correct"] = ((pseudo_labels == batch.unlabeled_targets).float() * mask * known).sum()
            logs["pseudo_label_count"] = (mask * known).sum()
        return loss, logs
