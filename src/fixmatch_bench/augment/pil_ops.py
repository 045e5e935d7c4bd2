"""Reference per-image primitive ops with Pillow, as the official code ran them.

Each op is the official code's own PIL call (``libml/ctaugment.py``,
``third_party/auto_augment/augmentations.py``) with its parameters already
resolved (see :mod:`.primitives`). Images are ``L`` (C = 1) or ``RGB`` (C = 3):
a 1-channel image gives what a gray RGB image would (PIL's L conversion of
R = G = B is exact). This is the ground truth :mod:`.tensor_ops` is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch import Tensor

from .primitives import RESCALE_METHODS, Fill, Op, check_vocabulary
from .tensor_ops import check_images

_RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,  # CTAugment's Image.ANTIALIAS, removed in Pillow 10
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "nearest": Image.Resampling.NEAREST,
}
_ENHANCERS = {
    Op.BRIGHTNESS: ImageEnhance.Brightness,
    Op.COLOR: ImageEnhance.Color,
    Op.CONTRAST: ImageEnhance.Contrast,
    Op.SHARPNESS: ImageEnhance.Sharpness,
}
_BLENDED = {
    Op.AUTOCONTRAST: ImageOps.autocontrast,
    Op.EQUALIZE: ImageOps.equalize,
    Op.INVERT: ImageOps.invert,
    Op.BLUR: lambda x: x.filter(ImageFilter.BLUR),
    Op.SMOOTH: lambda x: x.filter(ImageFilter.SMOOTH),
}
_AFFINE_SLOT = {Op.SHEAR_X: 1, Op.SHEAR_Y: 3, Op.TRANSLATE_X: 2, Op.TRANSLATE_Y: 5}


def to_pil(image: Tensor) -> Image.Image:
    """uint8 [C, H, W] (C = 1 or 3) -> PIL ``L`` / ``RGB``."""
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def from_pil(image: Image.Image) -> Tensor:
    """PIL ``L`` / ``RGB`` -> uint8 [C, H, W]."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _color(image: Image.Image, value: int) -> int | tuple[int, ...]:
    return value if image.mode == "L" else (value,) * 3


def cutout(image: Image.Image, side: int, row: int, col: int, fill: int) -> Image.Image:
    """Fill ``[c - side//2, c + side//2)`` (clipped) with ``fill``, as both official cutouts do."""
    array = np.array(image)
    half = side // 2
    array[max(0, row - half) : row + half, max(0, col - half) : col + half] = fill
    return Image.fromarray(array)


def apply_op(image: Image.Image, op: Op, args: list[float], fill: Fill) -> Image.Image:
    """Apply one primitive op with resolved ``args`` to one PIL image."""
    op = Op(op)
    if op == Op.IDENTITY:
        return image
    if op in _BLENDED:
        return Image.blend(image, _BLENDED[op](image), args[0])
    if op in _ENHANCERS:
        return _ENHANCERS[op](image).enhance(args[0])
    if op == Op.SOLARIZE:
        return ImageOps.solarize(image, round(args[0]))
    if op == Op.POSTERIZE:
        return ImageOps.posterize(image, round(args[0]))
    if op == Op.ROTATE:
        return image.rotate(round(args[0]), fillcolor=_color(image, fill.geometric))
    if op in _AFFINE_SLOT:
        coefficients = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        coefficients[_AFFINE_SLOT[op]] = args[0]
        return image.transform(
            image.size, Image.Transform.AFFINE, tuple(coefficients), fillcolor=_color(image, fill.geometric)
        )
    if op == Op.RESCALE:
        width, height = image.size
        scale = args[0]
        box = (scale * width, scale * height, width * (1 - scale), height * (1 - scale))
        return image.crop(box).resize(image.size, _RESAMPLING[RESCALE_METHODS[round(args[1])]])
    if op == Op.CUTOUT:
        return cutout(image, round(args[0]), round(args[1]), round(args[2]), fill.cutout)
    raise ValueError(f"unknown op {op!r}")


def apply_steps(images: Tensor, ops: Tensor, args: Tensor, fill: Fill,
                vocabulary: Sequence[frozenset[Op]] | None = None) -> Tensor:
    """Per-image reference of :func:`.tensor_ops.apply_steps` (CPU tensors); checks the ops against
    ``vocabulary`` as the batched ops do."""
    check_images(images)
    for k, step_vocabulary in enumerate(vocabulary or ()):
        check_vocabulary(set(map(Op, ops[:, k].tolist())), step_vocabulary)
    out = torch.empty_like(images)
    for i, (image, image_ops, image_args) in enumerate(zip(images.cpu(), ops.tolist(), args.tolist())):
        pil = to_pil(image)
        for op, op_args in zip(image_ops, image_args):
            pil = apply_op(pil, Op(op), op_args, fill)
        out[i] = from_pil(pil)
    return out


def flip_shift(images: Tensor, flip: Tensor, shift_y: Tensor, shift_x: Tensor) -> Tensor:
    """Per-image reference weak view: ``np.fliplr``, ``np.pad(mode='reflect')``, crop."""
    check_images(images)
    out = torch.empty_like(images)
    for i, (image, flipped, dy, dx) in enumerate(zip(images.numpy(), flip.tolist(), shift_y.tolist(), shift_x.tolist())):
        hwc = image.transpose(1, 2, 0)
        if flipped:
            hwc = np.fliplr(hwc)
        pad_y, pad_x = abs(dy), abs(dx)
        padded = np.pad(hwc, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
        height, width = hwc.shape[:2]
        crop = padded[pad_y + dy : pad_y + dy + height, pad_x + dx : pad_x + dx + width]
        out[i] = torch.from_numpy(crop.transpose(2, 0, 1).copy())
    return out

