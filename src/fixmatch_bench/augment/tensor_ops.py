"""Batched per-sample primitive ops on uint8 [N, C, H, W] tensors (CPU or CUDA).

Every op reproduces Pillow's integer arithmetic, so that it matches
:mod:`.pil_ops` pixel for pixel on identical parameters:

- ``Image.blend`` / ``ImageEnhance``: ``(uint8)(a + f * (b - a))`` in float32,
  clipped to 0..255 when extrapolating (factor > 1).
- L conversion: ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16`` (ITU-R 601-2).
- Contrast's degenerate image: ``int(mean(L) + 0.5)``.
- BLUR (5x5 ring / 16) and SMOOTH (3x3, centre 5, / 13) keep the 2 / 1 border
  pixels and round to nearest; computed exactly in integers.
- Sharpness blends with the SMOOTH image.
- AutoContrast / Equalize use PIL's lookup-table construction per channel.
- Rotate / shear / translate: PIL's NEAREST affine, including its 16.16
  fixed-point path (rotate, shear) and its float path for pure translations, as
  integer index gathers (no ``grid_sample``, so no resampling difference).
- Rescale: PIL's two-pass separable resampling with 22-bit fixed-point weights,
  done as exact float64 matrix products; NEAREST via PIL's accumulated affine walk.

On CPU each step buckets the samples by kernel (``index_select`` of the images
that use it; rotate, shear and translate share one affine kernel), which needs
host synchronisation; on CUDA a step runs in its dense form
(:mod:`.dense_ops`), with none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import dense_ops
from .pil_tables import ANGLES, FIXED_ONE, RESAMPLE_BITS, min_crop, resample_table, rotation_matrix
from .primitives import (EVERY_OP, GEOMETRIC_OPS, MAX_ROTATE_DEGREES, NUM_ARGS, RESCALE_METHODS, Fill, Op,
                         check_vocabulary, device_constant)


def check_images(images: Tensor, name: str = "images") -> None:
    """Raise ValueError unless ``images`` is uint8 [N, C, H, W] with C in {1, 3}."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must be uint8 [N, C, H, W] with C in (1, 3), got {images.dtype} {tuple(images.shape)}"
        )


# ---------------------------------------------------------------- colour helpers


def blend(first: Tensor, second: Tensor, alpha: Tensor) -> Tensor:
    """``Image.blend(first, second, alpha)`` per sample; alpha float [N]."""
    weight = alpha.to(torch.float32).view(-1, 1, 1, 1)
    a = first.to(torch.float32)
    mixed = a + weight * (second.to(torch.float32) - a)
    return mixed.clamp(0, 255).floor().to(torch.uint8)


def luma(images: Tensor) -> Tensor:
    """PIL's RGB -> L conversion as int32 [N, 1, H, W] (identity for C = 1)."""
    if images.shape[1] == 1:
        return images.to(torch.int32)
    x = images.to(torch.int32)
    return (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16


def _window_sum(x: Tensor, radius: int) -> Tensor:
    """Sum over the (2r+1)^2 window of every interior pixel (int32)."""
    h, w = x.shape[-2:]
    total = torch.zeros_like(x[..., radius : h - radius, radius : w - radius])
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            total = total + x[..., radius + dy : h - radius + dy, radius + dx : w - radius + dx]
    return total


def _with_interior(images: Tensor, interior: Tensor, border: int) -> Tensor:
    out = images.clone()
    out[..., border:-border, border:-border] = interior.to(torch.uint8)
    return out


def smooth_filter(images: Tensor) -> Tensor:
    """``ImageFilter.SMOOTH``: 3x3 ones with centre 5, divided by 13, 1-px border kept."""
    x = images.to(torch.int32)
    total = _window_sum(x, 1) + 4 * x[..., 1:-1, 1:-1]
    return _with_interior(images, torch.div(2 * total + 13, 26, rounding_mode="floor"), 1)


def blur_filter(images: Tensor) -> Tensor:
    """``ImageFilter.BLUR``: the 16-pixel ring of a 5x5 window / 16, 2-px border kept."""
    x = images.to(torch.int32)
    ring = _window_sum(x, 2) - _window_sum(x, 1)[..., 1:-1, 1:-1]
    return _with_interior(images, (ring + 8) >> 4, 2)


def autocontrast(images: Tensor) -> Tensor:
    """``ImageOps.autocontrast`` (cutoff 0) per channel."""
    x = images.to(torch.float64)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)  # not 255.0 / t: that multiplies by 1 / t
    offset = -lo * scale
    stretched = torch.trunc(x * scale + offset).clamp(0, 255)
    return torch.where(hi > lo, stretched, x).to(torch.uint8)


def equalize(images: Tensor) -> Tensor:
    """``ImageOps.equalize`` per channel (PIL's lut: step = (n - n_last) // 255)."""
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w).to(torch.int64)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=images.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    bins = torch.arange(256, device=images.device)
    last = torch.where(hist > 0, bins, -1).amax(dim=1, keepdim=True)
    step = torch.div(h * w - hist.gather(1, last), 255, rounding_mode="floor")
    below = hist.cumsum(dim=1) - hist
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + below, step.clamp(min=1), rounding_mode="floor")
    lut = torch.where(step > 0, lut.clamp(max=255), bins)
    return lut.gather(1, flat).reshape(n, c, h, w).to(torch.uint8)


def _scalar(args: Tensor) -> Tensor:
    return args[:, 0]


def _blend_op(transform: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor, Fill], Tensor]:
    def op(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
        return blend(images, transform(images), _scalar(args))

    return op


def _brightness(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
    return blend(torch.zeros_like(images), images, _scalar(args))


def _color(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
    gray = luma(images).to(torch.uint8).expand_as(images)
    return blend(gray, images, _scalar(args))


def _contrast(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
    l_image = luma(images)
    count = l_image.shape[-1] * l_image.shape[-2]
    mean = torch.floor(l_image.sum(dim=(1, 2, 3), dtype=torch.int64).to(torch.float64) / count + 0.5)
    degenerate = mean.to(torch.uint8).view(-1, 1, 1, 1).expand_as(images)
    return blend(degenerate, images, _scalar(args))


def _sharpness(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
    return blend(smooth_filter(images), images, _scalar(args))


def _solarize(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
    threshold = _scalar(args).round().to(torch.int32).view(-1, 1, 1, 1)
    return torch.where(images.to(torch.int32) < threshold, images, 255 - images)


def _posterize(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
    bits = _scalar(args).round().to(torch.int32).clamp(1, 8).view(-1, 1, 1, 1)
    mask = torch.bitwise_left_shift(torch.full_like(bits, 0xFF), 8 - bits) & 0xFF
    return (images.to(torch.int32) & mask).to(torch.uint8)


# ---------------------------------------------------------------- geometry


def affine_nearest(images: Tensor, coefficients: Tensor, fill: int) -> Tensor:
    """PIL ``transform(AFFINE, (a, b, c, d, e, f), NEAREST)`` per sample.

    ``coefficients`` float64 [N, 6] map output (x, y) to input
    (a x + b y + c, d x + e y + f). Like PIL, matrices with b = d = 0 use
    double pixel centres (``floor(a (x + 0.5) + c)``) and the others 16.16 fixed
    point. PIL accumulates the former along the row (``x += a``); for the unit
    steps used here (translations) that can differ from the direct product only
    when ``c + 0.5`` lies within ~1e-14 of an integer, which the policies never
    produce (RA offsets are integers, CTAugment's are within 0.3 px of 0).
    """
    n, c, h, w = images.shape
    a0, a1, a2, a3, a4, a5 = (v.view(n, 1, 1) for v in coefficients.to(torch.float64).unbind(1))
    ys = torch.arange(h, device=images.device).view(1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, w)

    def coord(v: Tensor) -> Tensor:
        return torch.where(v < 0, -1, torch.trunc(v.clamp(max=1 << 30))).to(torch.int64)

    scale_x = coord(a0 * (xs + 0.5) + a2).expand(n, h, w)
    scale_y = coord(a4 * (ys + 0.5) + a5).expand(n, h, w)

    def fix(v: Tensor) -> Tensor:
        return torch.floor(v * float(FIXED_ONE) + 0.5).to(torch.int64)

    fixed_x = (fix(a2 + a0 * 0.5 + a1 * 0.5) + ys * fix(a1) + xs * fix(a0)) >> 16
    fixed_y = (fix(a5 + a3 * 0.5 + a4 * 0.5) + ys * fix(a4) + xs * fix(a3)) >> 16
    use_scale = (a1 == 0) & (a3 == 0)
    src_x = torch.where(use_scale, scale_x, fixed_x)
    src_y = torch.where(use_scale, scale_y, fixed_y)
    valid = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    index = torch.where(valid, src_y * w + src_x, 0).view(n, 1, h * w).expand(n, c, h * w)
    gathered = images.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return gathered.masked_fill(~valid.view(n, 1, h, w), fill)


@functools.lru_cache(maxsize=None)
def _rotation_table(height: int, width: int, device: torch.device) -> Tensor:
    """PIL ``Image.rotate`` inverse matrices for integer angles -45..45, float64 [91, 6]."""
    rows = [rotation_matrix(degrees, height, width) for degrees in ANGLES]
    return torch.tensor(rows, dtype=torch.float64, device=device)


# The slot of PIL's affine matrix (a, b, c, d, e, f) that args[0] sets, for the geometric ops but rotate.
_AFFINE_SLOT = {int(Op.SHEAR_X): 1, int(Op.SHEAR_Y): 3, int(Op.TRANSLATE_X): 2, int(Op.TRANSLATE_Y): 5}


def _geometric(images: Tensor, ops: Tensor, args: Tensor, fill: Fill) -> Tensor:
    """Rotate, shear and translate in one NEAREST affine gather, each sample's matrix from its own op.

    One gather for all five ops rather than one per op: they were over half of a
    strong view's time on CPU, nearly all of it per-call overhead on small images.
    """
    n, _, height, width = images.shape
    value = _scalar(args).to(torch.float64)
    identity = device_constant((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), torch.float64, images.device)
    coefficients = identity.repeat(n, 1)
    for op, slot in _AFFINE_SLOT.items():
        coefficients[:, slot] = torch.where(ops == op, value, coefficients[:, slot])
    angle = value.round().to(torch.int64).clamp(-MAX_ROTATE_DEGREES, MAX_ROTATE_DEGREES) + MAX_ROTATE_DEGREES
    rotation = _rotation_table(height, width, images.device)[angle]
    coefficients = torch.where((ops == int(Op.ROTATE)).unsqueeze(1), rotation, coefficients)
    return affine_nearest(images, coefficients, fill.geometric)


# ---------------------------------------------------------------- rescale

@functools.lru_cache(maxsize=None)
def _resample_table(size: int, device: torch.device) -> Tensor:
    """:func:`.pil_tables.resample_table` on ``device``: [widths, 6, size, size]."""
    return resample_table(size).to(device)


def _resample_matrix(size: int, start: Tensor, stop: Tensor, method: Tensor) -> Tensor:
    """Fixed-point weights [N, size, size] of PIL's crop(start, stop) + resize back to size."""
    n = start.shape[0]
    start = start.to(torch.int64)
    local = _resample_table(size, start.device)[(stop.to(torch.int64) - start) - min_crop(size), method]
    columns = torch.arange(size, device=start.device).view(1, 1, size) - start.view(n, 1, 1)
    shifted = local.gather(2, columns.clamp(min=0).expand(n, size, size))
    return torch.where(columns >= 0, shifted, 0.0)


def _resample_pass(values: Tensor, matrix: Tensor) -> Tensor:
    """One PIL pass: (2^21 + sum in * k) >> 22 clipped to 0..255, along the last dim."""
    mixed = torch.matmul(values, matrix.transpose(-1, -2).unsqueeze(1))
    return torch.floor((mixed + float(1 << (RESAMPLE_BITS - 1))) / float(1 << RESAMPLE_BITS)).clamp(0, 255)


def _rescale(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
    """CTAugment's rescale: crop a border of s * size on every side, resize back."""
    n, c, h, w = images.shape
    fraction = args[:, 0].to(torch.float64).clamp(0, 0.25)
    method = args[:, 1].round().to(torch.int64).clamp(0, len(RESCALE_METHODS) - 1)
    matrix_x = _resample_matrix(w, torch.round(fraction * w), torch.round(w * (1 - fraction)), method)
    matrix_y = _resample_matrix(h, torch.round(fraction * h), torch.round(h * (1 - fraction)), method)
    horizontal = _resample_pass(images.to(torch.float64), matrix_x)
    vertical = _resample_pass(horizontal.transpose(-1, -2), matrix_y).transpose(-1, -2)
    return vertical.to(torch.uint8)


# ---------------------------------------------------------------- cutout


def _cutout(images: Tensor, args: Tensor, fill: Fill) -> Tensor:
    n, _, h, w = images.shape
    half = torch.div(args[:, 0].round().to(torch.int64), 2, rounding_mode="floor").view(n, 1, 1)
    cy = args[:, 1].round().to(torch.int64).view(n, 1, 1)
    cx = args[:, 2].round().to(torch.int64).view(n, 1, 1)
    ys = torch.arange(h, device=images.device).view(1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, w)
    inside = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)
    return images.masked_fill(inside.unsqueeze(1), fill.cutout)


_OPS: dict[Op, Callable[[Tensor, Tensor, Fill], Tensor]] = {
    Op.AUTOCONTRAST: _blend_op(autocontrast),
    Op.EQUALIZE: _blend_op(equalize),
    Op.INVERT: _blend_op(lambda x: 255 - x),
    Op.BLUR: _blend_op(blur_filter),
    Op.SMOOTH: _blend_op(smooth_filter),
    Op.BRIGHTNESS: _brightness,
    Op.COLOR: _color,
    Op.CONTRAST: _contrast,
    Op.SHARPNESS: _sharpness,
    Op.SOLARIZE: _solarize,
    Op.POSTERIZE: _posterize,
    Op.RESCALE: _rescale,
    Op.CUTOUT: _cutout,
}
# Each op's kernel: itself, or for the geometric ops the shared one, keyed by the first of them.
_KERNEL_OF = tuple(int(GEOMETRIC_OPS[0] if op in GEOMETRIC_OPS else op) for op in Op)


def _apply_kernel(kernel: Op, images: Tensor, ops: Tensor, args: Tensor, fill: Fill) -> Tensor:
    """The kernel ``kernel`` (a value of :data:`_KERNEL_OF`) on every image."""
    if kernel == Op.IDENTITY:
        return images
    if kernel == GEOMETRIC_OPS[0]:
        return _geometric(images, ops, args, fill)
    return _OPS[kernel](images, args, fill)


def _bucketed_step(images: Tensor, ops: Tensor, args: Tensor, fill: Fill, vocabulary: frozenset[Op]) -> Tensor:
    """Each kernel on the samples that use it (host-side bucketing)."""
    check_vocabulary(set(map(Op, torch.unique(ops).tolist())), vocabulary)
    kernels = device_constant(_KERNEL_OF, torch.int64, images.device)[ops]
    present = torch.unique(kernels).tolist()
    if len(present) == 1:  # e.g. the final cutout step: no bucketing copies
        return _apply_kernel(Op(present[0]), images, ops, args, fill)
    out = images.clone()
    for kernel in present:
        if kernel == Op.IDENTITY:
            continue
        index = (kernels == kernel).nonzero().squeeze(1)
        out[index] = _apply_kernel(Op(kernel), images.index_select(0, index), ops.index_select(0, index),
                                   args.index_select(0, index), fill)
    return out


def apply_step(images: Tensor, ops: Tensor, args: Tensor, fill: Fill, dense: bool | None = None,
               vocabulary: frozenset[Op] = EVERY_OP) -> Tensor:
    """Apply ``ops[i]`` with ``args[i]`` to image i (ops int64 [N], args float64 [N, 3]).

    ``vocabulary``: the ops the step may hold (IDENTITY always); an op outside it is an error here and
    is not applied by the dense form. ``dense`` (default: on CUDA) runs the step in its dense form
    (:func:`.dense_ops.dense_step`), with no host synchronisation; otherwise samples are bucketed by kernel.
    """
    if images.is_cuda if dense is None else dense:
        return dense_ops.dense_step(images, ops, args, fill, vocabulary)
    return _bucketed_step(images, ops, args, fill, vocabulary)


def apply_steps(images: Tensor, ops: Tensor, args: Tensor, fill: Fill, dense: bool | None = None,
                vocabulary: Sequence[frozenset[Op]] | None = None) -> Tensor:
    """Apply steps k = 0..K-1 in order (ops int64 [N, K], args float64 [N, K, 3]); see :func:`apply_step`.

    ``vocabulary``: per step, the ops it may hold (default: every op).
    """
    check_images(images)
    if ops.shape != images.shape[:1] + ops.shape[1:2] or args.shape != ops.shape + (NUM_ARGS,):
        raise ValueError(
            f"ops must be [N, K] and args [N, K, {NUM_ARGS}] for N = {images.shape[0]}, "
            f"got {tuple(ops.shape)} and {tuple(args.shape)}"
        )
    vocabulary = (EVERY_OP,) * ops.shape[1] if vocabulary is None else tuple(vocabulary)
    if len(vocabulary) != ops.shape[1]:
        raise ValueError(f"vocabulary must name the ops of each of the {ops.shape[1]} steps, got {len(vocabulary)}")
    for k in range(ops.shape[1]):
        images = apply_step(images, ops[:, k], args[:, k], fill, dense, vocabulary[k])
    return images


@functools.lru_cache(maxsize=None)
def _reflections(size: int, device: torch.device) -> Tensor:
    """int64 [2, 2 size - 1, size]: ``tf.pad(mode='REFLECT')`` source index of output i for shift s
    (row s + size - 1; mirror without repeating the edge), then the same of the flipped row."""
    positions = torch.arange(-(size - 1), size, device=device).view(-1, 1) + torch.arange(size, device=device)
    positions = torch.where(positions < 0, -positions, positions)
    reflected = torch.where(positions >= size, 2 * (size - 1) - positions, positions)
    return torch.stack([reflected, size - 1 - reflected])


def flip_shift(images: Tensor, flip: Tensor, shift_y: Tensor, shift_x: Tensor) -> Tensor:
    """Weak view: optional horizontal flip, then output[i] = flipped[reflect(i + shift)] (|shift| < size).

    Equivalent to ``tf.pad(REFLECT, w)`` + a crop at offset ``shift + w``.
    """
    n, c, h, w = images.shape
    rows = _reflections(h, images.device)[0, shift_y + (h - 1)]
    cols = _reflections(w, images.device)[flip.long(), shift_x + (w - 1)]
    out = images.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
