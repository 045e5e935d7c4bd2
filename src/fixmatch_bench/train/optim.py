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


class TFAdam(torch.optim.Optimizer):
    """TensorFlow 1's ``tf.train.AdamOptimizer``, as ablation/ab_fixmatch_adam.py uses it (``train.optimizer: adam``).

    With g the gradient plus ``weight_decay * w`` (the script's L2 term in the loss, kernels only):
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``. Unlike ``torch.optim.Adam``, eps is
    added to the uncorrected sqrt(v). eps is TF's default 1e-8, and 1e-4 when b2 = 0, as in the script.
    """

    def __init__(self, params: list[dict], lr: float, beta1: float, beta2: float) -> None:
        super().__init__(params, {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": 1e-4 if beta2 == 0 else 1e-8,
                                  "weight_decay": 0.0})
        for group in self.param_groups:  # TF creates the slots with the variables: no first-step branch
            for parameter in group["params"]:
                self.state[parameter].update(t=torch.zeros((), dtype=parameter.dtype, device=parameter.device),
                                             m=torch.zeros_like(parameter), v=torch.zeros_like(parameter))

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """One update. The step count and the bias correction are 0-d tensors on the parameter's
        device, and a tensor learning rate (``set_lr(as_tensor=True)``) is used as a tensor: no host
        synchronisation, and a compiled step does not recompile as the count grows."""
        for group in self.param_groups:
            beta1, beta2, eps, decay, lr = group["beta1"], group["beta2"], group["eps"], group["weight_decay"], group["lr"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                gradient = parameter.grad.add(parameter, alpha=decay) if decay else parameter.grad
                state = self.state[parameter]
                step = state["t"].add_(1)
                state["m"].mul_(beta1).add_(gradient, alpha=1 - beta1)
                state["v"].mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
                step_size = lr * torch.sqrt(1 - torch.pow(beta2, step)) / (1 - torch.pow(beta1, step))
                parameter.addcdiv_(state["m"] * -step_size, state["v"].sqrt().add_(eps))


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, *, momentum: float,
                    nesterov: bool, beta1: float, beta2: float, **impl: bool) -> torch.optim.Optimizer:
    """``train.optimizer``: ``sgd`` (the protocol, :func:`make_optimizer`) or ``adam`` (:class:`TFAdam`)."""
    if name == "adam":
        return TFAdam(weight_decay_groups(model, weight_decay), lr, beta1, beta2)
    return make_optimizer(model, lr, momentum, nesterov, weight_decay, **impl)


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
