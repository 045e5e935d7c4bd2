"""Test-set evaluation and the paper's reported number (docs/protocol.md §9)."""

from __future__ import annotations

import statistics

import torch
from torch import Tensor, nn


def to_model_input(images: Tensor) -> Tensor:
    """uint8 [N, C, H, W] -> float in [-1, 1], the official preprocessing (no per-channel normalisation)."""
    return images.float().mul_(2.0 / 255.0).sub_(1.0)


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """Top-1 accuracy in % of ``model`` in eval mode, as a device tensor (no host sync)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for start in range(0, len(labels), batch_size):
        logits = model(to_model_input(images[start:start + batch_size]))
        correct += (logits.argmax(dim=1) == labels[start:start + batch_size]).sum()
    model.train(was_training)
    return correct.double() * (100.0 / len(labels))


def reported_error(accuracies: list[float], median_of_last: int) -> float:
    """The paper's metric: 100 - median of the last N EMA-model test accuracies (%).

    With fewer than N evaluations the median is over all of them.
    """
    if not accuracies:
        raise ValueError("no evaluation was run, so there is no error to report")
    return 100.0 - statistics.median(accuracies[-median_of_last:])
