"""Distribution alignment (ReMixMatch) for the FixMatch+DA variant (docs/protocol.md §8).

The official FixMatch repository has no FixMatch+DA script; this follows the
spec of docs/protocol.md §8, built from ReMixMatch's rule
(``remixmatch_no_cta.py``, ``libml/layers.py`` ``PMovingAverage``):

    q~ = normalize(q * (1e-6 + p_data) / (1e-6 + p_model))

- ``q``: softmax of the weak unlabeled views;
- ``p_data``: the labeled split's class distribution (uniform for balanced splits),
  fixed; ReMixMatch's ``PData`` is a running average of the labeled batches'
  labels (a documented deviation);
- ``p_model``: the normalized mean of the last ``buffer_size`` (128) per-batch
  mean predictions, a FIFO initialised with 1/C in every slot and fed the
  un-aligned ``q`` after each step.

Both the pseudo-label (``argmax q~``) and the confidence mask
(``max q~ >= tau``) come from the aligned distribution, as in the first
author's later FixMatch+DA code (google-research/crest). Whether the paper's
CIFAR-100@400 number thresholded ``q~`` or the raw ``q`` is unconfirmed
(docs/protocol.md §8). Per step: ``q_tilde = da.align(q)`` first, then ``da.update(q)``
(the official update runs after the step, so ``align`` sees the buffer
without the current batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

# The constant of ReMixMatch's p_ratio; keeps empty classes finite.
EPSILON = 1e-6


class DistributionAlignment(nn.Module):
    """ReMixMatch distribution alignment with a FIFO of batch-mean predictions.

    A module only so that ``.to(device)`` and ``state_dict()`` /
    ``load_state_dict()`` cover its state (``p_data``, the ``history`` FIFO
    and its write ``position``) for exact resume; it has no parameters.
    ``align`` and ``update`` are tensor ops on the buffers' device with no
    host synchronisation; keep the module on the device of the
    probabilities.

    Under DDP the FIFO entry must be the mean over all ranks' unlabeled images.
    ``update`` all-reduces ``[sum of probs, count]`` (so unequal per-rank
    batches are still weighted per image) with ``reduce`` when given, else
    with ``torch.distributed.all_reduce`` (SUM) when a process group is
    initialised, else not at all. ``reduce`` must return the elementwise sum
    or mean of its argument over ranks; either gives the same ratio.
    """

    def __init__(
        self,
        num_classes: int,
        p_data: torch.Tensor,
        buffer_size: int = 128,
        *,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} is invalid: expected an integer >= 1")
        if buffer_size < 1:
            raise ValueError(f"buffer_size={buffer_size!r} is invalid: expected an integer >= 1")
        p_data = torch.as_tensor(p_data, dtype=torch.float32)
        if p_data.shape != (num_classes,):
            raise ValueError(f"p_data has shape {tuple(p_data.shape)}: expected ({num_classes},) (one per class)")
        if not bool(torch.isfinite(p_data).all()) or bool((p_data < 0).any()) or not bool(p_data.sum() > 0):
            raise ValueError(f"p_data={p_data.tolist()} is invalid: expected finite non-negative values, not all 0")
        self.num_classes = num_classes
        self.buffer_size = buffer_size
        self.reduce = reduce
        self.register_buffer("p_data", p_data / p_data.sum())
        self.register_buffer("history", torch.full((buffer_size, num_classes), 1.0 / num_classes, device=p_data.device))
        self.register_buffer("position", torch.zeros((), dtype=torch.long, device=p_data.device))

    def p_model(self) -> torch.Tensor:
        """The normalized mean of the FIFO, [C]."""
        mean = self.history.mean(dim=0)
        return mean / mean.sum()

    def _check(self, probs: torch.Tensor) -> None:
        if probs.dim() != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs has shape {tuple(probs.shape)}: expected [batch, {self.num_classes}]")

    @torch.no_grad()
    def align(self, probs: torch.Tensor) -> torch.Tensor:
        """The aligned, renormalized distribution q~ of ``probs`` [B, C] (float32)."""
        self._check(probs)
        ratio = (EPSILON + self.p_data) / (EPSILON + self.p_model())
        aligned = probs * ratio
        return aligned / aligned.sum(dim=1, keepdim=True)

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """Push the batch mean of the UN-aligned ``probs`` [B, C], dropping the oldest entry."""
        self._check(probs)
        stats = torch.cat([probs.float().sum(dim=0), probs.new_full((1,), probs.shape[0], dtype=torch.float32)])
        if self.reduce is not None:
            stats = self.reduce(stats)
        elif dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        mean = (stats[:-1] / stats[-1]).to(self.history.dtype)
        self.history.index_copy_(0, self.position.view(1), mean.unsqueeze(0))
        self.position.add_(1).remainder_(self.buffer_size)
