"""PIL's geometry and resampling constants, shared by the bucketed (:mod:`.tensor_ops`) and the dense
(:mod:`.dense_ops`) batched ops: rotation matrices and 22-bit fixed-point resampling weights.

Both are made on the CPU (Python floats, CPU tensors), so they are the same for every device the
ops run on and never pass through a compiler.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .primitives import MAX_ROTATE_DEGREES, RESCALE_METHODS

FIXED_ONE = 1 << 16  # PIL's affine fixed point
RESAMPLE_BITS = 22  # PIL's 8-bit resampling precision (32 - 8 - 2)
ANGLES = range(-MAX_ROTATE_DEGREES, MAX_ROTATE_DEGREES + 1)  # the integer rotations the policies draw


def rotation_matrix(degrees: int, height: int, width: int) -> list[float]:
    """PIL ``Image.rotate``'s inverse matrix (a, b, c, d, e, f) for an integer angle."""
    angle = degrees % 360.0
    if angle == 0:
        return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    center_x, center_y = width / 2, height / 2
    radians = -math.radians(angle)
    a, b = round(math.cos(radians), 15), round(math.sin(radians), 15)
    d, e = round(-math.sin(radians), 15), round(math.cos(radians), 15)
    c = a * -center_x + b * -center_y + 0.0 + center_x
    f = d * -center_x + e * -center_y + 0.0 + center_y
    return [a, b, c, d, e, f]


_SUPPORTS = (3.0, 2.0, 1.0, 0.5, 1.0)  # lanczos, bicubic, bilinear, box, hamming
# Pillow writes the Hamming window with float literals (0.54f, 0.46f).
_HAMMING_A = float(torch.tensor(0.54, dtype=torch.float32))
_HAMMING_B = float(torch.tensor(0.46, dtype=torch.float32))


def _sinc(x: Tensor) -> Tensor:
    scaled = x * math.pi
    return torch.where(x == 0, 1.0, torch.sin(scaled) / torch.where(x == 0, 1.0, scaled))


def _resample_filters(x: Tensor) -> Tensor:
    """PIL's filters (lanczos, bicubic, bilinear, box, hamming) stacked on dim 0."""
    ax = x.abs()
    lanczos = torch.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)
    a = -0.5
    bicubic = torch.where(
        ax < 1.0,
        ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1,
        torch.where(ax < 2.0, (((ax - 5) * ax + 8) * ax - 4) * a, 0.0),
    )
    bilinear = torch.where(ax < 1.0, 1.0 - ax, 0.0)
    box = torch.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)
    hamming_inner = _sinc(ax) * (_HAMMING_A + _HAMMING_B * torch.cos(ax * math.pi))
    hamming = torch.where(ax == 0, 1.0, torch.where(ax >= 1.0, 0.0, hamming_inner))
    return torch.stack([lanczos, bicubic, bilinear, box, hamming])


def _nearest_scale_table(size: int) -> Tensor:
    """int64 [size + 1, size]: PIL's NEAREST resize source index from a crop of each width.

    PIL walks the row accumulating ``x += crop / size`` in double from
    ``crop / (2 size)``, so exact ties (e.g. 64 -> 96 px) land on the lower pixel;
    a direct ``(x + 0.5) * crop / size`` would round them up.
    """
    rows = []
    for crop in range(size + 1):
        step, position, row = crop / size, crop / size * 0.5, []
        for _ in range(size):
            row.append(int(position))
            position += step
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


def _crop_resize_weights(size: int, crops: Tensor) -> Tensor:
    """Fixed-point weights [6, M, size, size] of PIL's resize of a crop of width ``crops[m]``
    (crop coordinates, columns >= the width are 0) back to ``size``, per method."""
    m = crops.shape[0]
    crop = crops.to(torch.float64).view(m, 1, 1)
    out_pos = torch.arange(size, dtype=torch.float64).view(1, size, 1)
    in_pos = torch.arange(size).view(1, 1, size)
    center = (out_pos + 0.5) * (crop / size)
    support = torch.tensor(_SUPPORTS, dtype=torch.float64).view(-1, 1, 1, 1)
    low = torch.trunc(center - support + 0.5).clamp(min=0)
    high = torch.minimum(torch.trunc(center + support + 0.5), crop)
    inside = (in_pos >= low) & (in_pos < high)
    weights = torch.where(inside, _resample_filters((in_pos - center) + 0.5), 0.0)
    total = weights.sum(dim=-1, keepdim=True)
    weights = torch.where(total != 0, weights / torch.where(total != 0, total, 1.0), weights)
    scaled = weights * float(1 << RESAMPLE_BITS)
    fixed = torch.where(scaled < 0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5))
    nearest_src = _nearest_scale_table(size)[crops].view(m, size, 1)
    nearest = torch.where(in_pos == nearest_src, float(1 << RESAMPLE_BITS), 0.0)
    return torch.cat([fixed, nearest.unsqueeze(0)])


def min_crop(size: int) -> int:
    """Narrowest crop a fraction <= 0.25 can give (rounding included)."""
    return max(1, size // 2 - 1)


@functools.lru_cache(maxsize=None)
def resample_table(size: int) -> Tensor:
    """:func:`_crop_resize_weights` for every reachable crop width, float64 [widths, methods, size (out),
    size (in)] on the CPU (do not modify it); the methods of :data:`RESCALE_METHODS`."""
    return _crop_resize_weights(size, torch.arange(min_crop(size), size + 1)).transpose(0, 1).contiguous()
