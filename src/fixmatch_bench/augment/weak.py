"""FixMatch's weak augmentation: random horizontal flip, then reflect-pad translation.

Official (``libml/augment.py`` ``augment_mirror`` + ``augment_shift``):
``tf.image.random_flip_left_right`` (p = 0.5) and then ``tf.pad(REFLECT, w)``
followed by a random crop, i.e. a shift uniform in {-w..w} per axis with
mirror-without-edge-repeat padding (numpy ``'reflect'``, not ``'symmetric'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FLIP_PROBABILITY = 0.5


@dataclass(frozen=True)
class WeakParams:
    """Per-image weak-view parameters: flip bool [N], shifts int64 [N] in {-w..w}."""

    flip: Tensor
    shift_y: Tensor
    shift_x: Tensor


def check_translate(translate: int, height: int, width: int) -> None:
    """Reflect padding needs ``0 <= translate < min(height, width)``."""
    if isinstance(translate, bool) or not isinstance(translate, int) or not 0 <= translate < min(height, width):
        raise ValueError(
            f"translate must be an int in [0, {min(height, width)}) for {height}x{width} images, got {translate!r}"
        )


def sample_weak(n: int, flip: bool, translate: int, generator: torch.Generator) -> WeakParams:
    """Draw flips (only when ``flip``) then the (row, col) shifts, on the generator's device."""
    device = generator.device
    if flip:
        flips = torch.rand(n, generator=generator, device=device) < FLIP_PROBABILITY
    else:
        flips = torch.zeros(n, dtype=torch.bool, device=device)
    shifts = torch.randint(-translate, translate + 1, (2, n), generator=generator, device=device)
    return WeakParams(flip=flips, shift_y=shifts[0], shift_x=shifts[1])
