"""MixMatch (official ``mixmatch.py`` ``MixMatch.guess_label`` and ``MixMatch.model``;
docs/baselines_official.md §5, quirks §9 #7).

- ``nu`` weak views of each of B unlabeled images (``uratio`` 1: ``ClassifySemi.train`` batches B).
- Label guess: each view in its own training-mode pass that leaves BatchNorm's running statistics
  alone, the softmaxes averaged over the views, sharpened with ``temperature`` (the official 0.5),
  under a stop-gradient (the passes run without gradient).
- MixUp (``MixMode('xxy.yxy')``, :func:`.mixup.mixup`) over the labeled batch (one-hot labels) and
  all views (each labelled with the guess): one permutation, per-image λ' = max(λ, 1 − λ),
  λ ~ Beta(``beta``, ``beta``).
- The nu + 1 mixed batches are interleaved (:func:`.mixup.interleave`), each goes through its own
  training-mode pass, and only interleaved batch 0 updates the running statistics; the logits are
  de-interleaved.
- ``loss_x``: soft-label cross-entropy on the mixed labeled batch (mean); ``loss_u``: the squared
  difference of the mixed guesses and the softmax, averaged over the unlabeled images AND the
  classes; ``loss = loss_x + w_match · ramp · loss_u``, the ramp linear over ``warmup_kimg`` × 1024
  images (16,384 steps at B = 64).

Without an unlabeled batch (``uratio: 0``, an ablation) the loss is the labeled cross-entropy.
The MixUp draws come from the method state's own generator (:class:`MixMatchState`), saved and
restored with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import fail
from ..core.schema import Count, NonNegative, Params, Positive, PositiveInt
from .base import Batch, LossLogs, Method, MethodParams, RunContext, View
from .common import Ramp, bn_frozen, sharpen
from .mixup import MixUpGenerator, interleaved_logits, mixup
from .supervised import supervised_loss


class MixMatchParams(MethodParams):
    uratio: Count  # unlabeled images per labeled one: 1 (ClassifySemi.train batches B), or 0 (ablation)
    nu: PositiveInt  # weak views per unlabeled image (model(..., nu=2))
    temperature: Positive  # T of the guess's sharpening (0.5, hard-coded in mixmatch.py)
    beta: Positive  # MixUp's Beta(beta, beta) (--beta)
    w_match: NonNegative  # weight of the L2 unlabeled loss (--w_match)
    warmup_kimg: Count  # w_match's linear ramp reaches 1 after warmup_kimg * 1024 images


class MixMatchState(nn.Module):
    """A run's MixMatch state: the ``w_match`` ramp's step and the MixUp generator (both checkpointed)."""

    def __init__(self, ramp_length: float, device: torch.device, seed: int):
        super().__init__()
        self.ramp = Ramp(ramp_length, device)
        self.mixup = MixUpGenerator(device, seed)

    @property
    def generator(self) -> torch.Generator:
        return self.mixup.generator


class MixMatch(Method):
    Params = MixMatchParams
    params: MixMatchParams

    @property
    def views(self) -> tuple[View, ...]:
        return ("weak",) * self.params.nu

    def uratio(self, params: Params) -> int:
        return self.params.uratio

    def build_state(self, context: RunContext) -> MixMatchState:
        # the official ramp counts images: clip(step * B / (warmup_kimg << 10), 0, 1)
        return MixMatchState(self.params.warmup_kimg * 1024 / context.batch, context.class_distribution.device,
                             context.seed)

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: MixMatchState) -> tuple[Tensor, LossLogs]:
        if not batch.unlabeled:  # uratio 0, allowed by allow_no_unlabeled_loss: the labeled loss alone
            return supervised_loss(forward, batch)
        p = self.params
        views, n = batch.unlabeled, batch.labeled.shape[0]
        with torch.no_grad(), bn_frozen(forward):  # the guess: stop-gradient, no running-statistics update
            probabilities = torch.stack([forward(view).softmax(1) for view in views]).mean(0)
            guess = sharpen(probabilities, p.temperature)
        labels_x = F.one_hot(batch.targets, guess.shape[1]).to(guess.dtype)
        images, labels = mixup(torch.cat([batch.labeled, *views]), torch.cat([labels_x, *[guess] * len(views)]),
                               p.beta, state.generator)
        logits = interleaved_logits(forward, images.split(n), n, bn_update=0)
        logits_x, logits_u = logits[0], torch.cat(logits[1:])
        labels_x, labels_u = labels[:n], labels[n:]
        loss_x = -(labels_x * logits_x.log_softmax(1)).sum(1).mean()
        loss_u = ((labels_u - logits_u.softmax(1)) ** 2).mean()
        loss = loss_x + p.w_match * state.ramp() * loss_u
        return loss, {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_u": loss_u.detach()}

    def after_step(self, state: MixMatchState, logs: LossLogs) -> None:
        state.ramp.advance()

    def check(self, params: Params) -> None:
        super().check(params)
        if self.params.uratio > 1:
            fail(f"methods.{self.name}.uratio", self.params.uratio,
                 "must be 1 (or 0, an ablation): the official interleave cuts the labeled batch and each "
                 "unlabeled view into the same groups, so they must have the same size")
        if self.params.w_match == 0:
            self.refuse_no_unlabeled_loss(f"methods.{self.name}.w_match", 0.0)
