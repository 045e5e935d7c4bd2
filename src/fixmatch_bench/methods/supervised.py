"""The supervised-only baseline: cross-entropy on the labeled batch, no unlabeled data (docs/protocol.md §4)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Batch, LossLogs, Method


def supervised_loss(forward: nn.Module, batch: Batch) -> tuple[Tensor, LossLogs]:
    """Cross-entropy of the labeled batch (also a semi-supervised method's loss when it draws no unlabeled batch)."""
    loss = F.cross_entropy(forward(batch.labeled), batch.targets)
    return loss, {"loss": loss.detach(), "loss_x": loss.detach()}


class Supervised(Method):
    """Labeled data only, through the same step, optimizer, EMA and evaluation as every method."""

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: nn.Module | None) -> tuple[Tensor, LossLogs]:
        return supervised_loss(forward, batch)
