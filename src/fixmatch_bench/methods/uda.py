"""UDA (official ``uda.py`` ``UDA.model``; docs/baselines_official.md §6).

A weak and a strong view (RandAugment with cutout, FixMatch (RA)'s strong branch) of each of
``train.uratio`` × B unlabeled images, in one training-mode pass with the labeled batch, as in
FixMatch. The unlabeled loss is KL(softmax(weak / T) || softmax(strong)), with T on the target
only, masked where the unsharpened weak softmax reaches ``threshold`` (``>=``), averaged over all
unlabeled images and weighted by ``unlabeled_weight`` (no ramp-up); the entropy of the weak
view's prediction is added with ``entropy_weight`` (0 in the official defaults). Training
signal annealing (``--tsa``, off by default in ``uda.py``) is not ported.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.schema import Fraction, NonNegative, Positive
from .base import Batch, LossLogs, Method, MethodParams, View
from .supervised import supervised_loss


class UDAParams(MethodParams):
    strong: Literal["randaugment", "ctaugment"]
    threshold: Fraction  # confidence: mask = max softmax(weak) >= threshold
    temperature: Positive  # divides the target's logits only
    unlabeled_weight: NonNegative  # wu
    entropy_weight: NonNegative  # we


class UDA(Method):
    Params = UDAParams
    params: UDAParams
    views: tuple[View, ...] = ("weak", "strong")

    @property
    def strong(self) -> str:
        return self.params.strong

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: nn.Module | None) -> tuple[Tensor, LossLogs]:
        if not batch.unlabeled:
            return supervised_loss(forward, batch)
        weak, strong = batch.unlabeled
        n_x, n_u = len(batch.labeled), len(weak)
        logits_x, logits_weak, logits_strong = forward(torch.cat([batch.labeled, weak, strong])).split([n_x, n_u, n_u])
        loss_x = F.cross_entropy(logits_x, batch.targets)
        target = logits_weak.detach() / self.params.temperature
        mask = (logits_weak.detach().softmax(1).max(1).values >= self.params.threshold).float()
        kl = (target.softmax(1) * (target.log_softmax(1) - logits_strong.log_softmax(1))).sum(1)
        loss_u = (kl * mask).mean()
        entropy = -(logits_weak.softmax(1) * logits_weak.log_softmax(1)).sum(1).mean()
        loss = loss_x + self.params.unlabeled_weight * loss_u + self.params.entropy_weight * entropy
        return loss, {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                      "mask_rate": mask.mean()}
