"""Π-Model (official ``pi_model.py`` ``PiModel.model``; docs/baselines_official.md §2).

Two weak views of each unlabeled image; the labeled batch, view 0 and view 1 go through three
training-mode passes, and only the labeled pass updates BatchNorm's running statistics. The
target is the live model on view 0 under a stop-gradient; the consistency is the squared
softmax difference averaged over classes, weighted by ``consistency_weight`` and a linear
warm-up that reaches 1 at ``warmup_pos`` of training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Batch, LossLogs, View
from .common import Ramp, WarmedUp, bn_frozen, softmax_mse


class PiModel(WarmedUp):
    views: tuple[View, ...] = ("weak", "weak")

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: Ramp) -> tuple[Tensor, LossLogs]:
        loss_x = self.labeled_loss(forward, batch)
        if not batch.unlabeled:
            return loss_x, {"loss": loss_x.detach(), "loss_x": loss_x.detach()}
        view_0, view_1 = batch.unlabeled
        with bn_frozen(forward):
            with torch.no_grad():
                logits_teacher = forward(view_0)
            logits_student = forward(view_1)
        loss_u = softmax_mse(logits_teacher, logits_student)
        loss = loss_x + state() * self.params.consistency_weight * loss_u
        return loss, {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_u": loss_u.detach()}
