"""RandAugment as the official "FixMatch (RA)" ran it (augment flag ``rac``).

Sources: ``libml/augment.py`` (``AugmentPoolRAMC``, ``RANDOM_POLICY_OPS``) and
``third_party/auto_augment/augmentations.py``. Per image:

- 2 ops drawn uniformly *with replacement* from the 14 below
  (``np.random.choice(RANDOM_POLICY_OPS, 2)``);
- each op gets its own integer level ``randint(1, 10)`` in 1..9 and is
  applied with probability 0.5 (``random.random() < 0.5``);
- signed ops (rotate, shear, translate) negate with probability 0.5;
- then always a ``cutout``-px cutout (centre uniform over the image).

Level -> parameter (``PARAMETER_MAX = 10``; see :data:`RA_OPS` and
:func:`resolve`): rotate ``int(3 l)`` degrees; solarize threshold
``256 - int(25.6 l)``; colour / contrast / brightness / sharpness factor
``0.18 l + 0.1``; shear ``0.03 l``; translate ``l`` **pixels**; posterize
``4 - int(0.4 l)`` bits.

Documented deviations (the official values are not representable in uint8):

- **Gray = 128.** The official cutout multiplies by 0 in [-1, 1] (127.5 in
  uint8); geometric ops fill through the RGBA alpha that ``pil_unwrap`` maps
  to the same 0. We write 128 = ``np.round(127.5)``, the value CTAugment's own
  float -> uint8 conversion gives 0.0 (error 0.5 level = 0.004 in [-1, 1]).
  Geometric fill is gray immediately (docs/protocol.md §3.3; a documented deviation): the
  official RGBA path let later ops in the same policy see the fill as black,
  and AutoContrast / Equalize / Posterize / Solarize (which go through RGB)
  made it black for good.
- **No truncation.** ``pil_wrap`` converts float32 [-1, 1] back to uint8 with
  ``np.uint8((x * 0.5 + 0.5) * 255)``, which truncates: 47 of the 256 input
  levels come out one level darker. We are uint8 end to end and keep them.
- For 96-px STL-10 the cutout stays 16 px, as in the official code; pass
  another ``cutout`` to :func:`~fixmatch_bench.augment.make_augmenter` to scale it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .primitives import NUM_ARGS, Fill, Op, cutout_step, device_constant

GRAY = 128
RA_FILL = Fill(geometric=GRAY, cutout=GRAY)

# (official name, primitive op) in RANDOM_POLICY_OPS order.
RA_OPS: tuple[tuple[str, Op], ...] = (
    ("Identity", Op.IDENTITY),
    ("AutoContrast", Op.AUTOCONTRAST),
    ("Equalize", Op.EQUALIZE),
    ("Rotate", Op.ROTATE),
    ("Solarize", Op.SOLARIZE),
    ("Color", Op.COLOR),
    ("Contrast", Op.CONTRAST),
    ("Brightness", Op.BRIGHTNESS),
    ("Sharpness", Op.SHARPNESS),
    ("ShearX", Op.SHEAR_X),
    ("TranslateX", Op.TRANSLATE_X),
    ("TranslateY", Op.TRANSLATE_Y),
    ("Posterize", Op.POSTERIZE),
    ("ShearY", Op.SHEAR_Y),
)
STEP_OPS = frozenset(prim for _, prim in RA_OPS)  # what a policy step may hold
NUM_LAYERS = 2
MAX_LEVEL = 10  # np.random.randint(1, 10): levels 1..9
APPLY_PROBABILITY = 0.5


def sample_policy(n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Draw RA decisions for n images: op index, applied, level, negate (each [n, 2])."""
    device = generator.device
    shape = (n, NUM_LAYERS)
    return {
        "op": torch.randint(0, len(RA_OPS), shape, generator=generator, device=device),
        "applied": torch.rand(shape, generator=generator, device=device) < APPLY_PROBABILITY,
        "level": torch.randint(1, MAX_LEVEL, shape, generator=generator, device=device),
        "negate": torch.rand(shape, generator=generator, device=device) > 0.5,
    }


def resolve(op: Tensor, level: Tensor, negate: Tensor, translate_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """RA op index + level + sign -> primitive (ops, args[..., 3]), the official mapping.

    ``translate_scale`` (off = 1.0, the official code) multiplies the translation
    of ``level`` pixels and rounds down: a named deviation for images smaller than
    32 px, where 9 px would shift a 16-px digit half out of the frame.
    """
    level_f = level.to(torch.float64)
    sign = torch.where(negate, -1.0, 1.0).to(torch.float64)
    enhance = level_f * 1.8 / MAX_LEVEL + 0.1
    shear = sign * (level_f * 0.3 / MAX_LEVEL)
    candidates = {
        Op.IDENTITY: torch.zeros_like(level_f),
        Op.AUTOCONTRAST: torch.ones_like(level_f),
        Op.EQUALIZE: torch.ones_like(level_f),
        Op.ROTATE: sign * torch.div(level * 30, MAX_LEVEL, rounding_mode="floor"),
        Op.SOLARIZE: 256 - torch.div(level * 256, MAX_LEVEL, rounding_mode="floor").to(torch.float64),
        Op.COLOR: enhance,
        Op.CONTRAST: enhance,
        Op.BRIGHTNESS: enhance,
        Op.SHARPNESS: enhance,
        Op.SHEAR_X: shear,
        Op.TRANSLATE_X: sign * torch.floor(torch.div(level * 10, MAX_LEVEL, rounding_mode="floor") * translate_scale),
        Op.TRANSLATE_Y: sign * torch.floor(torch.div(level * 10, MAX_LEVEL, rounding_mode="floor") * translate_scale),
        Op.POSTERIZE: 4 - torch.div(level * 4, MAX_LEVEL, rounding_mode="floor").to(torch.float64),
        Op.SHEAR_Y: shear,
    }
    values = torch.stack([candidates[prim].to(torch.float64) for _, prim in RA_OPS])
    primitive = device_constant(tuple(int(prim) for _, prim in RA_OPS), torch.int64, op.device)
    value = values.gather(0, op.unsqueeze(0)).squeeze(0)
    args = torch.zeros(op.shape + (NUM_ARGS,), dtype=torch.float64, device=op.device)
    args[..., 0] = value
    return primitive[op], args


def sample_steps(n: int, height: int, width: int, cutout: int, generator: torch.Generator,
                 translate_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """The whole RA strong policy for n images as primitive steps (2 RA steps, then cutout)."""
    policy = sample_policy(n, generator)
    ops, args = resolve(policy["op"], policy["level"], policy["negate"], translate_scale)
    ops = torch.where(policy["applied"], ops, int(Op.IDENTITY))
    if cutout > 0:
        cut_ops, cut_args = cutout_step(n, height, width, cutout, generator)
        ops, args = torch.cat([ops, cut_ops], dim=1), torch.cat([args, cut_args], dim=1)
    return ops, args
