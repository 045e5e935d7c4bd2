"""How much memory a run needs at least, before it starts: the figure that refuses a batch too large.

The estimate is a lower bound, computed without a GPU and without running a step:

- resident: the run's images on its device (uint8: the training set, the unlabeled
  pool when it holds extra images, the test set), and the weights, their gradients,
  the optimizer's state and the EMA copy (float32);
- activations: the tensors autograd keeps for the backward pass of one training
  forward (labeled + unlabeled weak + strong images, in the training's one concatenated
  pass), counted on PyTorch's meta device with ``saved_tensors_hooks``.

A run also needs the backward pass's transient gradients, the augmentation's
temporaries, cuDNN's workspace and the CUDA context, so the measured peak is higher
(``make gpu-check`` records both); a run is refused only when the lower bound alone
exceeds the device's memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..core.runs import Run
from ..core.schema import Params
from ..methods.registry import build_method
from ..models.wide_resnet import WideResNet

FLOAT32 = 4
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    resident: int  # bytes held for the whole run
    activations_per_image: int  # bytes autograd keeps per image of a training forward
    images_per_step: int

    @property
    def total(self) -> int:
        return self.resident + self.activations_per_image * self.images_per_step

    def largest_batch(self, available: int, uratio: int, views: int) -> int:
        """The largest labeled batch B (B (1 + views uratio) images per step) whose estimate fits ``available``."""
        per_labeled = self.activations_per_image * (1 + views * uratio)
        return max(0, (available - self.resident) // per_labeled)


@functools.lru_cache(maxsize=None)
def _activations_per_image(network: tuple, channels: int, size: int, classes: int) -> int:
    """Bytes of the tensors autograd saves for one image's backward (a batch of 8 on the meta device)."""
    model = WideResNet(num_classes=classes, in_channels=channels, **dict(network)).to("meta").train()
    weights = {id(parameter) for parameter in model.parameters()}  # saved too, but resident anyway
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in weights:
            saved[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(torch.empty(8, channels, size, size, device="meta"))
    return sum(saved.values()) // 8


def estimate(params: Params, run: Run) -> MemoryEstimate:
    """The lower bound for ``run`` (its dataset's network and image size, the method's views, the batch)."""
    facts, train = params.datasets[run.dataset], params.train
    method = build_method(params, run.method)
    views = len(method.views)
    image = facts.channels * facts.image_size ** 2
    unlabeled_pool = facts.train_size + facts.unlabeled_size if facts.unlabeled_size else 0  # a copy with extras
    data = (facts.train_size + unlabeled_pool + facts.test_size) * image
    model = WideResNet(num_classes=facts.num_classes, in_channels=facts.channels, **facts.network.kwargs())
    weights = sum(parameter.numel() for parameter in model.parameters()) * FLOAT32
    optimizer_state = 2 if train.optimizer == "adam" else 1
    images = train.batch * (1 + views * method.uratio(params))
    per_image = _activations_per_image(tuple(sorted(facts.network.kwargs().items())), facts.channels,
                                       facts.image_size, facts.num_classes)
    return MemoryEstimate(resident=data + weights * (3 + optimizer_state), activations_per_image=per_image,
                          images_per_step=images)
