"""Exponential moving average of the weights, as the official code keeps it (docs/protocol.md §6).

``tf.train.ExponentialMovingAverage(0.999)`` over the trainable variables
(conv kernels and biases, BN gamma/beta, dense), run after every optimizer
step, starting from the initial weights, without ``num_updates`` (so no
debiasing or warm-up). BN moving statistics are not trainable: the EMA model
reads the LIVE model's statistics, so here they are copied, not averaged.
The EMA model serves evaluation and CTAugment probes, and pseudo-labels only under the
mean-teacher ablation (``methods.<m>.pseudo_labels_from: ema``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A deep copy of ``model`` whose parameters track an EMA of the live ones.

    Pass the plain module (not a DDP or ``torch.compile`` wrapper) both here
    and to ``update``. The averaged model is ``.module``; it starts in eval
    mode and callers keep it there. ``update`` is two fused multi-tensor ops
    and never synchronises with the host.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay!r} is invalid: expected a float in [0, 1] (official value 0.999)")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self._params = list(self.module.parameters())
        self._buffers = list(self.module.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``shadow -= (1 - decay) * (shadow - param)`` (TF's form of
        ``decay * shadow + (1 - decay) * param``) for parameters; copy buffers."""
        params = list(model.parameters())
        buffers = list(model.buffers())
        if len(params) != len(self._params) or len(buffers) != len(self._buffers):
            raise ValueError(
                f"model has {len(params)} parameters and {len(buffers)} buffers: expected "
                f"{len(self._params)} and {len(self._buffers)}, as in the model the EMA was built from"
            )
        torch._foreach_lerp_(self._params, params, 1.0 - self.decay)
        if buffers:
            torch._foreach_copy_(self._buffers, buffers)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict (parameters and copied buffers)."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore the averaged model in place (the shadow tensors keep their identity)."""
        self.module.load_state_dict(state_dict)
