"""The official FixMatch "Wide-ResNet": class ``ResNet`` of ``libml/models.py``.

This is the exact graph, initialisation and BatchNorm setting of the TF1 code
(docs/protocol.md §2), so parameter counts match the paper's networks:

- WRN-28-2 (``filters=32, scales=3``), 10 classes: 1,469,642 parameters;
- WRN-28-8 (``filters=128, scales=3``), 100 classes: 23,409,092;
- "WRN-37-2" for STL-10 (``filters=32, scales=4``), 10 classes: 5,933,770.

Inputs are float images in [-1, 1], shape [N, C, H, W]; there is no
normalisation inside the network (``--whiten=False`` in the official code).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

PADDINGS = ("tf", "symmetric")

# Standard deviation of a unit normal truncated to [-2, 2]
# (scipy.stats.truncnorm.std(-2, 2)); TF's VarianceScaling divides by it so the
# truncated samples have the requested variance.
TRUNCATED_NORMAL_STD = 0.87962566103423978


def tf_same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF ``padding='same'`` along one axis.

    TF pads ``max((ceil(size / stride) - 1) * stride + kernel_size - size, 0)``
    in total and puts the odd pixel after: a 3x3 stride-2 conv on an even size
    pads (0, 1), a stride-1 3x3 conv pads (1, 1).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A square conv with bias, padded like TF ``'same'`` or symmetrically.

    ``padding="tf"`` pads a strided conv (k > 1) in ``forward`` with the
    input-size-dependent TF rule; a stride-1 conv of odd kernel and a 1x1 conv
    need no special case (TF's 'same' is then symmetric ``k // 2``).
    ``padding="symmetric"`` is PyTorch's usual ``padding=k // 2`` everywhere,
    which samples stride-2 outputs one pixel up/left of TF's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: str):
        pad_in_forward = padding == "tf" and stride > 1 and kernel_size > 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0 if pad_in_forward else kernel_size // 2,
            bias=True,
        )
        self.pad_in_forward = pad_in_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_in_forward:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = tf_same_padding(x.shape[-2], k, s)
            left, right = tf_same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ResidualBlock(nn.Module):
    """Pre-activation block ``residual`` of ``libml/models.py``.

    ``h = lrelu(BN(x))``; in the first block of the network (activate before
    residual) the shortcut also starts from ``h``, elsewhere from the
    un-activated ``x``. A 1x1 conv (with the block's stride) maps the shortcut
    when the channel count changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        activate_before_residual: bool,
        bn_momentum: float,
        bn_eps: float,
        leaky_slope: float,
        padding: str,
    ):
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.leaky_slope = leaky_slope
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=bn_momentum, eps=bn_eps)
        self.conv1 = Conv2dSame(in_channels, out_channels, 3, stride, padding)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum, eps=bn_eps)
        self.conv2 = Conv2dSame(out_channels, out_channels, 3, 1, padding)
        self.shortcut: nn.Module = (
            Conv2dSame(in_channels, out_channels, 1, stride, padding) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn1(x), self.leaky_slope)
        x0 = h if self.activate_before_residual else x
        h = self.conv1(h)
        h = self.conv2(F.leaky_relu(self.bn2(h), self.leaky_slope))
        return self.shortcut(x0) + h


def _require(condition: bool, name: str, value: object, allowed: str) -> None:
    if not condition:
        raise ValueError(f"{name}={value!r} is invalid: expected {allowed}")


class WideResNet(nn.Module):
    """The official FixMatch ResNet (``--arch=resnet``).

    Stem conv3x3(16) (no BN/activation after it); ``scales`` stages of width
    ``filters << scale``, each ``repeat`` pre-activation blocks, the first one
    strided (2, except stage 0); head lrelu(BN) -> global average pool ->
    Linear. ``scales`` is explicit: the official auto value
    ``ceil(log2(image size)) - 2`` is 3 for 32 px and 5 for 96 px, but STL-10
    runs used 4 (docs/protocol.md §2.2).

    ``padding="tf"`` (faithful) reproduces TF 'same' padding, which for the
    stride-2 3x3 convs pads 0 before and 1 after each spatial axis;
    ``padding="symmetric"`` (a named deviation) pads 1 on both sides as PyTorch
    ports do, a one-pixel sampling offset on every stride-2 conv.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        filters: int = 32,
        scales: int = 3,
        repeat: int = 4,
        bn_momentum: float = 0.001,
        bn_eps: float = 1e-3,
        leaky_slope: float = 0.1,
        padding: str = "tf",
        heads: Mapping[str, int] | None = None,
    ):
        super().__init__()
        _require(num_classes >= 1, "num_classes", num_classes, "an integer >= 1")
        _require(in_channels >= 1, "in_channels", in_channels, "an integer >= 1")
        _require(filters >= 1, "filters", filters, "an integer >= 1")
        _require(scales >= 1, "scales", scales, "an integer >= 1")
        _require(repeat >= 1, "repeat", repeat, "an integer >= 1")
        _require(0.0 < bn_momentum <= 1.0, "bn_momentum", bn_momentum, "a float in (0, 1] (PyTorch convention)")
        _require(bn_eps > 0.0, "bn_eps", bn_eps, "a float > 0")
        _require(leaky_slope >= 0.0, "leaky_slope", leaky_slope, "a float >= 0")
        _require(padding in PADDINGS, "padding", padding, f"one of {PADDINGS}")
        self.leaky_slope = leaky_slope

        self.stem = Conv2dSame(in_channels, 16, 3, 1, padding)
        blocks = []
        channels = 16
        for scale in range(scales):
            width = filters << scale
            for i in range(repeat):
                first = i == 0
                blocks.append(
                    ResidualBlock(
                        channels,
                        width,
                        stride=2 if first and scale > 0 else 1,
                        activate_before_residual=first and scale == 0,
                        bn_momentum=bn_momentum,
                        bn_eps=bn_eps,
                        leaky_slope=leaky_slope,
                        padding=padding,
                    )
                )
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels, momentum=bn_momentum, eps=bn_eps)
        self.fc = nn.Linear(channels, num_classes)
        # Extra dense heads on the same pooled features that a method asks for (ReMixMatch's rotation):
        # ``forward(x, head=name)``. None by default, and then the model is exactly the official one.
        self.heads = nn.ModuleDict({name: nn.Linear(channels, outputs) for name, outputs in (heads or {}).items()})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisers: conv N(0, sqrt(2/(k*k*f_out))), dense TF1
        glorot_normal (the extra heads too, as ReMixMatch's ``classify_rot``), all biases 0,
        BN gamma 1 / beta 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (k * module.out_channels)))
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                tf_glorot_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor, head: str | None = None) -> torch.Tensor:
        """The class logits, or those of the extra head ``head``."""
        h = self.blocks(self.stem(x))
        h = F.leaky_relu(self.bn(h), self.leaky_slope)
        features = h.mean(dim=(2, 3))
        return self.fc(features) if head is None else self.heads[head](features)


def tf_glorot_normal_(weight: torch.Tensor) -> torch.Tensor:
    """TF1 ``glorot_normal_initializer`` on a [out, in] Linear weight, in place.

    VarianceScaling(scale=1, mode='fan_avg', distribution='truncated_normal'):
    ``std = sqrt(1 / max(1, (fan_in + fan_out) / 2)) / 0.8796...``, truncated at
    two standard deviations, so the sample std is ``sqrt(2 / (fan_in + fan_out))``.
    """
    fan_out, fan_in = weight.shape
    std = math.sqrt(1.0 / max(1.0, (fan_in + fan_out) / 2.0)) / TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)
