"""The dense form of a step of :mod:`.tensor_ops`: what CUDA runs and ``speed.compile_augment`` compiles.

Bit-identical to the bucketed ops (whose PIL arithmetic :mod:`.tensor_ops` documents), with no host
synchronisation and few operator calls. A step runs three families of kernels on the whole batch,
each with per-sample parameters that make it the identity where the sample's op is not in it: the
geometric ops and cutout are one NEAREST affine gather (the identity matrix and an empty box for the
other ops); every colour op is one ``Image.blend(first, second, weight)`` whose images are the input,
a per-channel lookup table of it (invert, solarize, posterize, autocontrast, equalize), a filtered
image (blur, smooth), a gray image or a constant (weight 0 for the other ops); rescale is a pair of
resampling matrices, selected per sample. The matrix products are float64 (exact; TF32 never applies).
The parameters come from tables indexed by the op (:func:`_op_table`), and a step runs only the
families and parts that its ``vocabulary`` (the ops it may hold) needs. Computing every op's own kernel
for the whole batch, as before issue 28, issued four to six times the operator calls per training
step (``reports/operator_calls.md``).

**Rounding that does not depend on the compiler.** Inductor may contract a
product and a sum into one fused multiply-add (Triton does by default on CUDA,
its C++ code under ``-ffp-contract=fast``) and, on GPUs, replaces a division by
a constant with a multiplication by its reciprocal; either can change a float
result's last bit, and a floor or trunc after it can move a pixel by one level.
The formulas leave neither any effect: every float product that feeds a sum is
exact, so fusing changes nothing, and a quotient by a constant decides a floor
only where it is at least 1/26 from every integer. The blend's ``weight *
(second - first)`` is exact in float64 and rounded to float32 by an explicit
cast before the float32 sum; the affine coordinates multiply by powers of two
or by 1, and the resampling sums are of integers below 2^53; AutoContrast's
``ix * scale + offset`` subtracts two products looked up in a table
(:func:`_autocontrast_tables`); the contrast mean and equalize divide integers.
This rather than Inductor's ``emulate_precision_casts`` (which turns Triton's
``enable_fp_fusion`` off in torch 2.13): it holds whatever the compiler, its
version or its options, and covers the reciprocal too. The cached lookup tables
are computed in a graph with integer or correctly rounded operations only; the
resampling weights (sin, cos) are made on the CPU and reach a graph through a
custom op. ``tests/test_augment_compiled.py`` compiles the ops on CPU with
contraction forced on (the previous formulas moved pixels by one level there);
``tests/test_cuda.py`` compares the Triton kernels with the CPU.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .pil_tables import ANGLES, FIXED_ONE, RESAMPLE_BITS, min_crop, resample_table, rotation_matrix
from .primitives import MAX_ROTATE_DEGREES, RESCALE_METHODS, Fill, Op

_LUMA = (19595, 38470, 7471)

# Lookup tables, cached per shape and device (do not modify them); ``torch.compile`` traces through
# the cache and computes them in the graph.
_cached = functools.lru_cache(maxsize=None)


# ---------------------------------------------------------------- per-op parameters

# Rows of the pixel lookup tables (:func:`_pixel_tables`): identity, invert, solarize by threshold
# 0..256, posterize by bits 1..8.
_INVERT_ROW, _SOLARIZE_ROW, _POSTERIZE_ROW = 1, 2, 259 - 1

# Boolean columns of :func:`_op_table`.
_FLAG_OPS = {"autocontrast": (Op.AUTOCONTRAST,), "equalize": (Op.EQUALIZE,), "blur": (Op.BLUR,),
             "smooth": (Op.SMOOTH,), "sharpness": (Op.SHARPNESS,), "color": (Op.COLOR,),
             "brightness": (Op.BRIGHTNESS,), "contrast": (Op.CONTRAST,),
             "translate": (Op.TRANSLATE_X, Op.TRANSLATE_Y), "rescale": (Op.RESCALE,)}
_FLAGS = tuple(_FLAG_OPS)
_BLENDED = (Op.AUTOCONTRAST, Op.EQUALIZE, Op.INVERT, Op.BLUR, Op.SMOOTH, Op.BRIGHTNESS, Op.COLOR, Op.CONTRAST,
            Op.SHARPNESS)
# Numeric columns: the blend weight is weight + weight_from_arg * args[0]; the rows of the pixel and
# the affine tables are clamp(round(args[0]) + base, low, high); cutout: whether args[0] is a side.
_NUMBERS = ("weight", "weight_from_arg", "pixel_base", "pixel_low", "pixel_high", "affine_base", "affine_low",
            "affine_high", "cutout")


def _numbers(op: Op) -> tuple[float, ...]:
    weight = 1.0 if op in (Op.SOLARIZE, Op.POSTERIZE) else 0.0
    pixel = {Op.INVERT: (0, _INVERT_ROW, _INVERT_ROW),
             Op.SOLARIZE: (_SOLARIZE_ROW, _SOLARIZE_ROW, _SOLARIZE_ROW + 256),
             Op.POSTERIZE: (_POSTERIZE_ROW, _POSTERIZE_ROW + 1, _POSTERIZE_ROW + 8)}.get(op, (0, 0, 0))
    degrees = MAX_ROTATE_DEGREES  # the rotation table's row for 0 degrees
    affine = (degrees, 0, 2 * degrees) if op == Op.ROTATE else (0, degrees, degrees)
    return (weight, float(op in _BLENDED), *pixel, *affine, float(op == Op.CUTOUT))


# Where args[0] goes in the affine row of :func:`_affine_table` (y row d e f, x row a b c, then the
# same with PIL's fixed-point offsets f' = f + d/2 + e/2 and c' = c + a/2 + b/2), with its factor.
_AFFINE_ARG = {Op.SHEAR_X: {4: 1.0, 10: 1.0, 11: 0.5}, Op.SHEAR_Y: {0: 1.0, 6: 1.0, 8: 0.5},
               Op.TRANSLATE_X: {5: 1.0}, Op.TRANSLATE_Y: {2: 1.0}}


@_cached
def _op_table(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per op: the flags (bool [19, len(_FLAGS)]), the numbers (float64 [19, len(_NUMBERS)]) and the
    factors of args[0] in its affine row (float64 [19, 12])."""
    flags = torch.tensor([[op in _FLAG_OPS[name] for name in _FLAGS] for op in Op], device=device)
    numbers = torch.tensor([_numbers(op) for op in Op], dtype=torch.float64, device=device)
    factors = [[_AFFINE_ARG.get(op, {}).get(slot, 0.0) for slot in range(12)] for op in Op]
    return flags, numbers, torch.tensor(factors, dtype=torch.float64, device=device)


class _PerSample(NamedTuple):
    """One step's per-sample parameters, looked up from its ops."""

    flags: dict[str, Tensor]  # bool [N, 1, 1] each
    numbers: dict[str, Tensor]  # float64 [N] each
    value: Tensor  # args[0], [N]
    rounded: Tensor  # round(args[0]), [N]
    args: Tensor  # [N, 3]
    ops: Tensor  # [N]


def _per_sample(ops: Tensor, args: Tensor) -> _PerSample:
    n = ops.shape[0]
    flag_table, number_table, _ = _op_table(ops.device)
    flags = dict(zip(_FLAGS, flag_table[ops].view(n, len(_FLAGS), 1, 1).unbind(1)))
    numbers = dict(zip(_NUMBERS, number_table[ops].unbind(1)))
    value = args[:, 0]
    return _PerSample(flags, numbers, value, value.round(), args, ops)


def _row(sample: _PerSample, family: str) -> Tensor:
    """The sample's row of a family's table: clamp(round(args[0]) + base, low, high)."""
    base, low, high = (sample.numbers[f"{family}_{key}"] for key in ("base", "low", "high"))
    return (sample.rounded + base).clamp(low, high).long()


# ---------------------------------------------------------------- colour


def _blend(first: Tensor, second: Tensor, weight: Tensor) -> Tensor:
    """``Image.blend(first, second, weight)`` per sample (weight [N]) on integer-valued images, ``second``
    float64, ``first`` of a dtype that float32 holds exactly.

    PIL computes ``first + weight * (second - first)`` in float32 (weight a
    float32) and truncates. The product is made in float64, where it is exact,
    and rounded to float32 by a cast, so the sum cannot be fused with it; the cast
    to uint8 truncates.
    """
    shape = (-1,) + (1,) * (first.dim() - 1)
    weight = weight.to(torch.float32).to(torch.float64).view(shape)
    step = ((second - first) * weight).to(torch.float32)
    return (first + step).clamp(0, 255).to(torch.uint8)


@_cached
def _pixel_tables(device: torch.device) -> Tensor:
    """float64 [267, 256]: identity, invert, solarize by threshold 0..256, posterize by bits 1..8."""
    levels = torch.arange(256, device=device)
    thresholds = torch.arange(257, device=device).view(-1, 1)
    masks = (0xFF << (8 - torch.arange(1, 9, device=device).view(-1, 1))) & 0xFF
    rows = [levels.view(1, -1), 255 - levels.view(1, -1), torch.where(levels < thresholds, levels, 255 - levels),
            levels & masks]
    return torch.cat(rows).to(torch.float64)


@_cached
def _autocontrast_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """PIL's autocontrast products, float64 [256 (hi - lo), 256 (level)]: ``level * scale`` and ``lo * scale``
    with ``scale = 255 / (hi - lo)``; for hi = lo the first is the level and the second 0 (no change)."""
    levels = torch.arange(256, dtype=torch.float64, device=device)
    scale = torch.full_like(levels, 255.0) / levels.clamp(min=1)  # not 255.0 / t: that multiplies by 1 / t
    products = levels.view(1, 256) * scale.view(256, 1)
    flat = (levels == 0).view(256, 1)
    return torch.where(flat, levels, products), torch.where(flat, 0.0, products)


def _autocontrast_lut(low: Tensor, high: Tensor) -> Tensor:
    """``ImageOps.autocontrast`` (cutoff 0) lookup tables, float64 [N, C, 256] from each channel's range
    (int64 [N, C]).

    ``int(ix * scale + offset)``; PIL's clip to 0..255 never acts on a level in [lo, hi], the only
    levels looked up."""
    products, offsets = _autocontrast_tables(low.device)
    span = high - low
    return torch.trunc(products[span] - offsets[span, low].unsqueeze(2))


def _equalize_lut(levels: Tensor, high: Tensor, count: int) -> Tensor:
    """``ImageOps.equalize`` lookup tables (PIL's: step = (n - n_last) // 255), int64 [N, C, 256];
    ``levels`` int64 [N, C, H * W], ``high`` each channel's largest level (the last non-empty bin), int64 [N, C]."""
    n, c, _ = levels.shape
    histogram = torch.zeros(n, c, 256, dtype=torch.int64, device=levels.device)
    histogram.scatter_add_(2, levels, _ones(levels.device).expand_as(levels))
    last = histogram.gather(2, high.unsqueeze(2))
    step = torch.div(count - last, 255, rounding_mode="floor")
    below = histogram.cumsum(2) - histogram
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + below, step.clamp(min=1), rounding_mode="floor")
    return torch.where(step > 0, lut.clamp(max=255), _levels(levels.device))


@_cached
def _ones(device: torch.device) -> Tensor:
    return torch.ones((), dtype=torch.int64, device=device)


@_cached
def _levels(device: torch.device) -> Tensor:
    return torch.arange(256, device=device)


@_cached
def _luma_weights(device: torch.device) -> Tensor:
    return torch.tensor(_LUMA, device=device).view(1, 3, 1)


def _luma(levels: Tensor) -> Tensor:
    """PIL's RGB -> L conversion, int64 [N, 1, H * W] from int64 levels [N, C, H * W] (identity for C = 1)."""
    if levels.shape[1] == 1:
        return levels
    return ((levels * _luma_weights(levels.device)).sum(1, keepdim=True) + 0x8000) >> 16


@_cached
def _interior(height: int, width: int, border: int, device: torch.device) -> Tensor:
    """bool [H, W]: the pixels at least ``border`` from every edge (those a filter changes)."""
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    rows, cols = (rows >= border) & (rows < height - border), (cols >= border) & (cols < width - border)
    return rows.view(-1, 1) & cols.view(1, -1)


def _window_sums(images: Tensor, size: int) -> Tensor:
    """Sum over the size x size window of every pixel (zero outside), exact: float32 sums of integers < 2^24."""
    return F.avg_pool2d(images, size, stride=1, padding=size // 2, divisor_override=1)


class _Filtered(NamedTuple):
    smooth: Tensor | None
    blur: Tensor | None


def _filters(images: Tensor, height: int, smooth: bool, blur: bool) -> _Filtered:
    """``ImageFilter.SMOOTH`` (3x3 ones, centre 5, / 13, 1-px border kept) and ``BLUR`` (the 16-pixel
    ring of a 5x5 window / 16, 2-px border kept) of uint8 [N, C, H * W] images, rounded to nearest,
    float32 [N, C, H * W]."""
    n, c, count = images.shape
    width = count // height
    pixels = images.view(n, c, height, width).float()
    three = _window_sums(pixels, 3)
    smoothed = blurred = None
    if smooth:
        # floor((2 t + 13) / 26) = floor((t + 6.5) / 13): never within 1/26 of an integer, so no quotient's
        # rounding can move it.
        total = torch.add(three, pixels, alpha=4)
        smoothed = torch.where(_interior(height, width, 1, images.device),
                               torch.div(total + 6.5, 13, rounding_mode="floor"), pixels).view(n, c, count)
    if blur:
        ring = _window_sums(pixels, 5) - three
        blurred = torch.where(_interior(height, width, 2, images.device),
                              torch.div(ring + 8, 16, rounding_mode="floor"), pixels).view(n, c, count)
    return _Filtered(smoothed, blurred)


def _colour(images: Tensor, sample: _PerSample, height: int, vocabulary: frozenset[Op]) -> Tensor:
    """Every colour op of the step as one blend, uint8 [N, C, H * W] from uint8 [N, C, H * W]."""
    n, c, count = images.shape
    flags = sample.flags
    levels = images.long()
    lut = _pixel_tables(images.device)[_row(sample, "pixel")].view(n, 1, 256)
    if {Op.AUTOCONTRAST, Op.EQUALIZE} & vocabulary:
        high = levels.amax(dim=2)
        if Op.AUTOCONTRAST in vocabulary:
            lut = torch.where(flags["autocontrast"], _autocontrast_lut(levels.amin(dim=2), high), lut)
        if Op.EQUALIZE in vocabulary:
            lut = torch.where(flags["equalize"], _equalize_lut(levels, high, count), lut)
    else:
        lut = lut.expand(n, c, 256)
    second = lut.gather(2, levels)
    first = images
    if {Op.COLOR, Op.CONTRAST} & vocabulary:
        gray = _luma(levels)
        if Op.CONTRAST in vocabulary:
            mean = torch.div(gray.sum(2, keepdim=True) * 2 + count, 2 * count, rounding_mode="floor")
            first = torch.where(flags["contrast"], mean, first)
        if Op.COLOR in vocabulary:
            first = torch.where(flags["color"], gray, first)
    if Op.BRIGHTNESS in vocabulary:
        first = torch.where(flags["brightness"], 0, first)
    if {Op.SMOOTH, Op.SHARPNESS, Op.BLUR} & vocabulary:
        smooth, blur = _filters(images, height, bool({Op.SMOOTH, Op.SHARPNESS} & vocabulary), Op.BLUR in vocabulary)
        if Op.SHARPNESS in vocabulary:
            first = torch.where(flags["sharpness"], smooth, first)
        if Op.SMOOTH in vocabulary:
            second = torch.where(flags["smooth"], smooth, second)
        if Op.BLUR in vocabulary:
            second = torch.where(flags["blur"], blur, second)
    weight = torch.addcmul(sample.numbers["weight"], sample.value, sample.numbers["weight_from_arg"])  # exact
    return _blend(first, second, weight)


# ---------------------------------------------------------------- geometry


@_cached
def _affine_table(height: int, width: int, device: torch.device) -> Tensor:
    """float64 [91, 12]: rotation by -45..45 degrees as (d, e, f, a, b, c, d, e, f', a, b, c'), with PIL's
    fixed-point offsets ``f' = f + d/2 + e/2``, ``c' = c + a/2 + b/2`` summed in PIL's order."""
    rows = []
    for degrees in ANGLES:
        a, b, c, d, e, f = rotation_matrix(degrees, height, width)
        rows.append([d, e, f, a, b, c, d, e, f + d * 0.5 + e * 0.5, a, b, c + a * 0.5 + b * 0.5])
    return torch.tensor(rows, dtype=torch.float64, device=device)


class _Grid(NamedTuple):
    """The output pixels of an H x W image, float64: (x, y, 1) * 2^-16 and (x + 0.5, y + 0.5, 1) [3, H * W],
    (y, x) [2, H * W]; the largest (y, x) [2, 1] and the strides (W, 1) of a (y, x) coordinate [1, 2]."""

    fixed: Tensor
    centres: Tensor
    positions: Tensor
    largest: Tensor
    strides: Tensor


@_cached
def _grid(height: int, width: int, device: torch.device) -> _Grid:
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=device),
                            torch.arange(width, dtype=torch.float64, device=device), indexing="ij")
    ys, xs, ones = ys.flatten(), xs.flatten(), torch.ones(height * width, dtype=torch.float64, device=device)
    return _Grid(torch.stack([xs, ys, ones]) * (1.0 / FIXED_ONE), torch.stack([xs + 0.5, ys + 0.5, ones]),
                 torch.stack([ys, xs]), torch.tensor([[height - 1], [width - 1]], dtype=torch.float64, device=device),
                 torch.tensor([[width, 1]], dtype=torch.float64, device=device))


@_cached
def _half(device: torch.device) -> Tensor:
    return torch.full((), 0.5, dtype=torch.float64, device=device)


def _source(matrices: Tensor, translate: Tensor | None, height: int, width: int) -> Tensor:
    """PIL's NEAREST source pixel (y, x) of every output pixel, float64 [N, 2, H * W].

    ``matrices`` [N, 2, 2, 3]: (y row, x row) plain and with the fixed-point
    offsets. The 16.16 fixed-point path is exact (multiples of 2^-16 below
    2^37). Pure translations (``translate``; b = d = 0) take PIL's float path,
    ``COORD(a (x + 0.5) + c)`` with a = 1 here: an exact product; ``floor``
    stands for COORD, which maps every negative value to -1: both are outside the
    image. PIL accumulates that sum along the row (``x += a``); for the unit steps
    used here that can differ from the direct sum only when ``c + 0.5`` lies
    within ~1e-14 of an integer, which the policies never produce (RA offsets are
    integers, CTAugment's are within 0.3 px of 0).
    """
    grid = _grid(height, width, matrices.device)
    plain, shifted = matrices.unbind(1)
    fixed = torch.floor(torch.add(_half(matrices.device), shifted, alpha=float(FIXED_ONE)))
    source = torch.floor(torch.matmul(fixed, grid.fixed))
    if translate is None:
        return source
    return torch.where(translate, torch.floor(torch.matmul(plain, grid.centres)), source)


def _cutout_box(positions: Tensor, side: Tensor, args: Tensor) -> Tensor:
    """bool [N, 1, H * W]: the pixels (y, x) of ``positions`` in the cutout square ``[c - side//2, c + side//2)``
    centred on args' (row, col); ``side`` [N], rounded, 0 for the samples without a cutout."""
    half = torch.div(side, 2, rounding_mode="floor").view(-1, 1)
    centre = args[:, 1:].round()
    low, high = (centre - half).unsqueeze(2), (centre + half).unsqueeze(2)
    return ((positions >= low) & (positions < high)).all(1, keepdim=True)


def _geometric(images: Tensor, sample: _PerSample, fill: Fill, height: int, width: int,
               vocabulary: frozenset[Op]) -> Tensor:
    """Rotate, shear, translate and cutout in one NEAREST affine gather, uint8 [N, C, H * W]."""
    n, c, count = images.shape
    _, _, factors = _op_table(images.device)
    matrices = _affine_table(height, width, images.device)[_row(sample, "affine")]
    matrices = torch.addcmul(matrices, factors[sample.ops], sample.value.view(n, 1)).view(n, 2, 2, 3)  # exact
    translate = sample.flags["translate"] if {Op.TRANSLATE_X, Op.TRANSLATE_Y} & vocabulary else None
    source = _source(matrices, translate, height, width)
    grid = _grid(height, width, images.device)
    inside = source.clamp(min=0).minimum(grid.largest)
    valid = (inside == source).all(1, keepdim=True)
    index = torch.matmul(grid.strides, inside).long().expand(n, c, count)
    out = torch.where(valid, images.gather(2, index), fill.geometric)
    if Op.CUTOUT in vocabulary:
        side = sample.rounded * sample.numbers["cutout"]
        out = out.masked_fill(_cutout_box(grid.positions, side, sample.args), fill.cutout)
    return out


def _cutout(images: Tensor, ops: Tensor, args: Tensor, fill: Fill, height: int, width: int) -> Tensor:
    """A step of cutouts (and identities), uint8 [N, C, H * W]."""
    side = torch.where(ops == int(Op.CUTOUT), args[:, 0].round(), 0.0)  # int: dynamo compares an IntEnum wrongly
    box = _cutout_box(_grid(height, width, images.device).positions, side, args)
    return images.masked_fill(box, fill.cutout)


# ---------------------------------------------------------------- rescale


def _max_start(size: int) -> int:
    """Largest crop start a fraction <= 0.25 can give."""
    return round(size * 0.25)


def _resample_shape(size: int) -> tuple[int, int, int, int]:
    return size + 1 - min_crop(size), len(RESCALE_METHODS), size, _max_start(size) + size


@_cached
def _resample_table(size: int, device: torch.device) -> Tensor:
    """:func:`.pil_tables.resample_table` (made on the CPU) on ``device``, float64 [widths, 6, size (out),
    max start + size (in)]: the crop's columns after ``max start`` zero columns, so that a shift by the
    crop start is one gather."""
    return F.pad(resample_table(size), (_max_start(size), 0)).to(device)


@torch.library.custom_op("fixmatch_bench::resample_table", mutates_args=())
def _resample_table_op(size: int, device: torch.device) -> Tensor:
    return _resample_table(size, device).clone()


@_resample_table_op.register_fake
def _(size: int, device: torch.device) -> Tensor:
    return torch.empty(_resample_shape(size), dtype=torch.float64, device=device)


def _resample_weights(size: int, device: torch.device) -> Tensor:
    """:func:`_resample_table`; in a compiled graph a copy of it, through an op the compiler does not trace."""
    return _resample_table_op(size, device) if torch.compiler.is_compiling() else _resample_table(size, device)


@_cached
def _shifted_columns(size: int, device: torch.device) -> Tensor:
    return torch.arange(_max_start(size), _max_start(size) + size, dtype=torch.float64, device=device)


def _resample_matrix(size: int, start: Tensor, stop: Tensor, method: Tensor) -> Tensor:
    """Fixed-point weights [N, 1, size (out), size (in)] of PIL's crop(start, stop) + resize back to size."""
    n = start.shape[0]
    local = _resample_weights(size, start.device)[(stop - start - min_crop(size)).long(), method]
    columns = (_shifted_columns(size, start.device) - start.view(n, 1, 1)).long()
    return local.gather(2, columns.expand(n, size, size)).view(n, 1, size, size)


def _resample_pass(mixed: Tensor) -> Tensor:
    """PIL's rounding of one pass, (2^21 + sum in * k) >> 22 = floor(0.5 + sum * 2^-22) (exact), clipped to
    0..255 and not yet floored."""
    return torch.add(_half(mixed.device), mixed, alpha=1.0 / (1 << RESAMPLE_BITS)).clamp(0, 255)


def _rescale(images: Tensor, sample: _PerSample) -> Tensor:
    """CTAugment's rescale: crop a border of s * size on every side, resize back; uint8 [N, C, H, W]."""
    n, c, h, w = images.shape
    fraction = sample.value.clamp(0, 0.25)
    method = sample.args[:, 1].round().clamp(0, len(RESCALE_METHODS) - 1).long()
    matrix_x = _resample_matrix(w, torch.round(fraction * w), torch.round(w * (1 - fraction)), method)
    matrix_y = matrix_x if h == w else _resample_matrix(h, torch.round(fraction * h),
                                                        torch.round(h * (1 - fraction)), method)
    horizontal = torch.floor(_resample_pass(torch.matmul(images.double(), matrix_x.transpose(2, 3))))
    return _resample_pass(torch.matmul(matrix_y, horizontal)).to(torch.uint8)  # truncates: floor


# ---------------------------------------------------------------- one step

_COLOUR_OPS = frozenset(_BLENDED) | {Op.SOLARIZE, Op.POSTERIZE}
_GEOMETRIC_OPS = frozenset({Op.ROTATE, Op.SHEAR_X, Op.SHEAR_Y, Op.TRANSLATE_X, Op.TRANSLATE_Y, Op.CUTOUT})


def dense_step(images: Tensor, ops: Tensor, args: Tensor, fill: Fill, vocabulary: frozenset[Op]) -> Tensor:
    """Apply ``ops[i]`` with ``args[i]`` to image i (ops int64 [N], args float64 [N, 3]) for the ops in
    ``vocabulary`` (an op outside it is not applied): each family the vocabulary needs on the whole batch."""
    n, c, h, w = images.shape
    if not vocabulary - {Op.IDENTITY}:
        return images
    out = images.reshape(n, c, h * w)
    if vocabulary - {Op.IDENTITY} == {Op.CUTOUT}:
        return _cutout(out, ops, args, fill, h, w).view(n, c, h, w)
    sample = _per_sample(ops, args)
    if _GEOMETRIC_OPS & vocabulary:
        out = _geometric(out, sample, fill, h, w, vocabulary)
    if _COLOUR_OPS & vocabulary:
        out = _colour(out, sample, h, vocabulary)
    out = out.view(n, c, h, w)
    if Op.RESCALE in vocabulary:
        out = torch.where(sample.flags["rescale"].unsqueeze(1), _rescale(images, sample), out)
    return out
