"""Optimizer and learning-rate schedule of the official code (docs/protocol.md §5)."""

from __future__ import annotations

import math

import torch
from torch import nn


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Coupled L2 on conv and linear weights ("kernels") only; biases and BN parameters are not decayed."""
    decayed, other = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            is_kernel = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decayed if is_kernel else other).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                   **impl: bool) -> torch.optim.SGD:
    """SGD with Nesterov momentum; SGD's weight_decay adds wd*w to the gradient = d/dw of wd*||w||^2/2.

    ``impl`` picks the implementation (``foreach=`` / ``fused=``, see :mod:`.speed`), not the maths.
    """
    return torch.optim.SGD(weight_decay_groups(model, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov, dampening=0.0, **impl)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, as_tensor: bool = False) -> None:
    """Set every group's learning rate.

    ``as_tensor`` keeps it in a 0-d tensor on the parameters' device, updated in
    place (no host synchronisation after the first call), which a compiled
    ``optimizer.step`` reads instead of recompiling for every new value.
    """
    for group in optimizer.param_groups:
        current = group["lr"]
        if not as_tensor:
            group["lr"] = lr
        elif isinstance(current, torch.Tensor) and current.device == group["params"][0].device:
            current.fill_(lr)
        else:  # first call, or a state dict just loaded
            group["lr"] = torch.tensor(lr, dtype=torch.float32, device=group["params"][0].device)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """lr_k = lr * cos(7 pi k / (16 K)), no warm-up; ends at lr * cos(7 pi / 16)."""
    progress = min(max(step / total_steps, 0.0), 1.0)
    return base_lr * math.cos(7.0 * math.pi * progress / 16.0)


def linear_lr(base_lr: float, end_lr: float, step: int, total_steps: int) -> float:
    """lr_k = lr + (lr_end - lr) * clip(k / K, 0, 1): the official ablation's linear decay
    (ablation/ab_fixmatch_linearlr.py ``AB_FixMatch_LinearLR.model``)."""
    return base_lr + (end_lr - base_lr) * min(max(step / total_steps, 0.0), 1.0)


def scheduled_lr(schedule: str, base_lr: float, end_lr: float, step: int, total_steps: int) -> float:
    """The learning rate of step ``step`` under ``train.lr_schedule`` (cosine: the protocol's)."""
    if schedule == "linear":
        return linear_lr(base_lr, end_lr, step, total_steps)
    return cosine_lr(base_lr, step, total_steps)
