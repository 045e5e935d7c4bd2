"""Mean Teacher (official ``mean_teacher.py`` ``MeanTeacher.model``; docs/baselines_official.md §4).

As the Π-Model, but the target comes from the teacher: the evaluation EMA of the weights
(``train.ema``), run in training mode (BatchNorm from its own batch, no running-statistics
update) on view 0. The student is the live model on view 1; only the labeled pass updates
BatchNorm's running statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.errors import fail
from ..core.schema import Params
from .base import Batch, LossLogs
from .common import Ramp, bn_frozen, softmax_mse, train_mode
from .pi_model import PiModel


class MeanTeacher(PiModel):
    needs_teacher = True

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: Ramp) -> tuple[Tensor, LossLogs]:
        loss_x = self.labeled_loss(forward, batch)
        if not batch.unlabeled:
            return loss_x, {"loss": loss_x.detach(), "loss_x": loss_x.detach()}
        view_0, view_1 = batch.unlabeled
        with torch.no_grad(), train_mode(teacher), bn_frozen(teacher):
            logits_teacher = teacher(view_0)
        with bn_frozen(forward):
            logits_student = forward(view_1)
        loss_u = softmax_mse(logits_teacher, logits_student)
        loss = loss_x + state() * self.params.consistency_weight * loss_u
        return loss, {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_u": loss_u.detach()}

    def check(self, params: Params) -> None:
        super().check(params)
        if params.speed.compile == "step":
            fail(f"methods.{self.name}.impl", self.params.impl,
                 "the teacher's training-mode pass is not supported with speed.compile = step (use model or none)")
