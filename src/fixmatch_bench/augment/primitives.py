"""The explicit-parameter vocabulary shared by the reference and batched paths.

Both RandAugment and CTAugment are compiled down to a sequence of *steps*; a
step applies one primitive op per image with fully resolved parameters:

- ``ops``  int64 [N, K]: a :class:`Op` per image and step (``IDENTITY`` for
  "not applied"),
- ``args`` float64 [N, K, 3]: that op's parameters, meaning per op below.

Random decisions (which op, level, sign, cutout centre) are all made before
this point, so the two backends (:mod:`.pil_ops` per image with PIL,
:mod:`.tensor_ops` batched tensors) can be compared op by op on identical
parameters. Parameter meaning (unused slots are 0):

=================  ==============================================================
op                 args
=================  ==============================================================
IDENTITY           -
AUTOCONTRAST ..    ``args[0]`` = blend weight ``a``: ``Image.blend(x, op(x), a)``;
SMOOTH (5 ops)     1.0 means the plain op (RandAugment)
BRIGHTNESS ..      ``args[0]`` = ``ImageEnhance`` factor
SHARPNESS (4 ops)
SOLARIZE           ``args[0]`` = threshold (integer; pixels >= it are inverted)
POSTERIZE          ``args[0]`` = bits kept (integer 1..8)
ROTATE             ``args[0]`` = angle in degrees, counter-clockwise (integer, |a| <= 45)
SHEAR_X / _Y       ``args[0]`` = PIL affine coefficient ``b`` / ``d`` (about the origin)
TRANSLATE_X / _Y   ``args[0]`` = PIL affine offset ``c`` / ``f`` in pixels
                   (output(x) = input(x + c)); PIL NEAREST rounding applies
RESCALE            ``args[0]`` = crop fraction s in [0, 0.25]; ``args[1]`` = resampling
                   method index into :data:`RESCALE_METHODS`
CUTOUT             ``args[0]`` = side s, ``args[1:3]`` = centre (row, col); the square
                   spans ``[c - s//2, c + s//2)`` clipped to the image
=================  ==============================================================

Fill values are per augmenter, not per op: see :class:`Fill`. Each policy also names the ops
that each of its steps may hold, the step's *vocabulary* (``randaugment.STEP_OPS``,
``ctaugment.STEP_OPS``, :data:`CUTOUT_STEP`; IDENTITY always): the dense ops
(:mod:`.dense_ops`) run only the kernels a step's vocabulary needs, and the CPU paths check it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

NUM_ARGS = 3


class Op(IntEnum):
    """Primitive ops; the values index both backends' dispatch tables."""

    IDENTITY = 0
    AUTOCONTRAST = 1
    EQUALIZE = 2
    INVERT = 3
    BLUR = 4
    SMOOTH = 5
    BRIGHTNESS = 6
    COLOR = 7
    CONTRAST = 8
    SHARPNESS = 9
    SOLARIZE = 10
    POSTERIZE = 11
    ROTATE = 12
    SHEAR_X = 13
    SHEAR_Y = 14
    TRANSLATE_X = 15
    TRANSLATE_Y = 16
    RESCALE = 17
    CUTOUT = 18


BLEND_OPS = (Op.AUTOCONTRAST, Op.EQUALIZE, Op.INVERT, Op.BLUR, Op.SMOOTH)
ENHANCE_OPS = (Op.BRIGHTNESS, Op.COLOR, Op.CONTRAST, Op.SHARPNESS)
GEOMETRIC_OPS = (Op.ROTATE, Op.SHEAR_X, Op.SHEAR_Y, Op.TRANSLATE_X, Op.TRANSLATE_Y)

# CTAugment's rescale methods, in its order (ANTIALIAS is LANCZOS since Pillow 10).
RESCALE_METHODS = ("lanczos", "bicubic", "bilinear", "box", "hamming", "nearest")

MAX_ROTATE_DEGREES = 45


@dataclass(frozen=True)
class Fill:
    """Intensity written where an op has no source pixel.

    ``geometric``: outside the source after rotate/shear/translate;
    ``cutout``: inside the cutout square.
    """

    geometric: int
    cutout: int

    def __post_init__(self) -> None:
        for name in ("geometric", "cutout"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise ValueError(f"Fill.{name} must be an intensity in 0..255, got {value!r}")


def cutout_step(n: int, height: int, width: int, side: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A CUTOUT step of ``side`` px with a centre uniform over the image ([n, 1] ops, [n, 1, 3] args)."""
    device = generator.device
    rows = torch.randint(0, height, (n,), generator=generator, device=device)
    cols = torch.randint(0, width, (n,), generator=generator, device=device)
    args = torch.stack([torch.full((n,), side, device=device), rows, cols], dim=1).to(torch.float64)
    ops = torch.full((n, 1), int(Op.CUTOUT), dtype=torch.int64, device=device)
    return ops, args.unsqueeze(1)


EVERY_OP = frozenset(Op)
CUTOUT_STEP = frozenset({Op.CUTOUT})


def check_vocabulary(present: set[Op], vocabulary: frozenset[Op]) -> None:
    """Raise ValueError if a step holds an op outside its ``vocabulary`` (IDENTITY always allowed): the
    dense ops compute only the vocabulary's kernels."""
    outside = present - vocabulary - {Op.IDENTITY}
    if outside:
        raise ValueError(f"the step holds {sorted(op.name for op in outside)}, outside its vocabulary "
                         f"{sorted(op.name for op in vocabulary)}")


@functools.lru_cache(maxsize=None)
def device_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached constant tensor; do not modify it.

    Building it with ``torch.tensor(..., device=cuda)`` on every call would be a
    host-to-device copy that synchronises the host.
    """
    return torch.tensor(values, dtype=dtype, device=device)
