"""CTAugment exactly as ``libml/ctaugment.py`` + ``cta/lib/train.py`` ran it for FixMatch.

19 ops in the official registry order (:data:`CTA_OPS`), each with one or two
"bin sets" of rates, all initialised to 1. A *policy* for one image is
``depth`` (op, levels) pairs, held as a float64 tensor [N, depth, 3]:
``[..., 0]`` the op index, ``[..., 1:3]`` the level of each bin set (0 where
the op has fewer). That plain tensor can be all-gathered across ranks and fed
to :meth:`CTAugment.update` in rank order.

- Training policy: op uniform over all 19 (identity and cutout included); per
  bin set ``p = rate + (1 - decay)``, ``p /= max(p)``, ``p[p < threshold] = 0``,
  a bin ``k ~ p / sum(p)`` and level ``(k + U[0, 1)) / nbins``. The strong view
  is weak view -> policy -> cutout at level 1 (side ``1 + int(min(H, W) * 0.499)``:
  16 at 32 px, 48 at 96 px, 8 at 16 px).
- Probe policy: op uniform, every level ``U[0, 1)``, no cutout.
- Update, per probe in order, per (op, levels) and bin set:
  ``idx = int(v * nbins * 0.999)``, ``rate[idx] = decay * rate[idx] + (1 - decay) * p_true``.

Official quirks reproduced on purpose (the defaults):

1. ``translate_x/y`` move by ``(2v - 1) * 0.3`` *pixels*; with NEAREST that
   never reaches half a pixel, so they are identity ops. ``translate_fix=True``
   (off by default) moves by that fraction of the image width/height instead,
   as the ReMixMatch paper describes.
2. ``Image.ANTIALIAS`` (removed in Pillow 10) is ``LANCZOS``, the same filter.
3. Rotate and shear fill with black (0); cutout fills with 127.
4. Shear is about the top-left origin, not the centre.
5. A cutout of odd side s covers ``2 * (s // 2)`` pixels per axis
   (``[c - s//2, c + s//2)``); the appended 16 / 48 px ones are even.

Documented differences from the official run:

- The official update ran on float32 rates one probe at a time; we keep the
  rates in float64 and apply a step's updates in closed form, per cell
  ``decay^m * rate + (1 - decay) * sum_t decay^(m - t) * p_t`` (the same
  sequential rule, agreeing with a float64 sequential loop to ~1e-15). It is
  fully on-device, without host synchronisation.
- The official workers sampled with rates up to 4 batches stale (the CTA
  object was pickled into a prefetching pool); we always use the current rates.
- ``p_true`` is the probability of the true class; the official proximity
  ``1 - 0.5 * sum|p - onehot|`` equals it up to float rounding.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from .primitives import Fill, Op, device_constant

CTA_FILL = Fill(geometric=0, cutout=127)

# (official name, primitive op, bin counts), in the registry's insertion order.
CTA_OPS: tuple[tuple[str, Op, tuple[int, ...]], ...] = (
    ("autocontrast", Op.AUTOCONTRAST, (17,)),
    ("blur", Op.BLUR, (17,)),
    ("brightness", Op.BRIGHTNESS, (17,)),
    ("color", Op.COLOR, (17,)),
    ("contrast", Op.CONTRAST, (17,)),
    ("cutout", Op.CUTOUT, (17,)),
    ("equalize", Op.EQUALIZE, (17,)),
    ("invert", Op.INVERT, (17,)),
    ("identity", Op.IDENTITY, ()),
    ("posterize", Op.POSTERIZE, (8,)),
    ("rescale", Op.RESCALE, (17, 6)),
    ("rotate", Op.ROTATE, (17,)),
    ("sharpness", Op.SHARPNESS, (17,)),
    ("shear_x", Op.SHEAR_X, (17,)),
    ("shear_y", Op.SHEAR_Y, (17,)),
    ("smooth", Op.SMOOTH, (17,)),
    ("solarize", Op.SOLARIZE, (17,)),
    ("translate_x", Op.TRANSLATE_X, (17,)),
    ("translate_y", Op.TRANSLATE_Y, (17,)),
)
STEP_OPS = frozenset(prim for _, prim, _ in CTA_OPS)  # what a policy step may hold
MAX_BIN_SETS = 2
MAX_BINS = 17
POLICY_WIDTH = 1 + MAX_BIN_SETS


def cutout_side(height: int, width: int, level: float = 1.0) -> int:
    """CTAugment's cutout side ``1 + int(level * min(W, H) * 0.499)``."""
    return 1 + int(level * min(height, width) * 0.499)


@functools.lru_cache(maxsize=None)
def _level_table(height: int, width: int, translate_fix: bool) -> tuple[tuple[float, ...], ...]:
    """Per CTA op, its level v's mapping to args[0] as ``((v * scale + shift) * factor) * size``, truncated
    where flagged, plus offset, rounded where flagged (each float operation as the official code orders
    it; the rounded op has offset 0), then
    whether args[1] is the rescale method ``trunc(v2 * 5.99)`` and whether args[1:3] are the cutout centre.

    ``(2v - 1) * 0.3`` for shear and translate (times the width / height with ``translate_fix``),
    ``round((2v - 1) * 45)`` degrees, ``0.1 + 1.9 v`` for the enhancers, ``1 + trunc(v * 7.999)`` bits,
    ``trunc(v * 255.999)`` for solarize, ``v * 0.25`` for rescale, ``1 + trunc(v * min(H, W) * 0.499)``
    for cutout, v for the blended ops, 0 for identity.
    """
    signed = (2.0, -1.0, 0.3)
    mappings = {
        Op.BRIGHTNESS: (1.9, 0.1, 1.0), Op.COLOR: (1.9, 0.1, 1.0), Op.CONTRAST: (1.9, 0.1, 1.0),
        Op.SHARPNESS: (1.9, 0.1, 1.0), Op.CUTOUT: (float(min(height, width)), 0.0, 0.499),
        Op.IDENTITY: (0.0, 0.0, 1.0), Op.POSTERIZE: (7.999, 0.0, 1.0), Op.RESCALE: (0.25, 0.0, 1.0),
        Op.ROTATE: (2.0, -1.0, 45.0), Op.SHEAR_X: signed, Op.SHEAR_Y: signed, Op.SOLARIZE: (255.999, 0.0, 1.0),
        Op.TRANSLATE_X: signed, Op.TRANSLATE_Y: signed,
    }
    size = {Op.TRANSLATE_X: float(width), Op.TRANSLATE_Y: float(height)} if translate_fix else {}
    rows = []
    for _, prim, _ in CTA_OPS:
        truncate = prim in (Op.CUTOUT, Op.POSTERIZE, Op.SOLARIZE)
        rows.append((*mappings.get(prim, (1.0, 0.0, 1.0)), size.get(prim, 1.0), float(truncate),
                     float(prim == Op.ROTATE), float(prim in (Op.CUTOUT, Op.POSTERIZE)), float(prim == Op.RESCALE),
                     float(prim == Op.CUTOUT)))
    return tuple(rows)


def _bin_counts(device: torch.device) -> Tensor:
    """int64 [19, 2]: bins of each bin set (0 where the op has fewer sets)."""
    counts = [list(bins) + [0] * (MAX_BIN_SETS - len(bins)) for _, _, bins in CTA_OPS]
    return torch.tensor(counts, dtype=torch.int64, device=device)


class CTAugment:
    """CTAugment's rates, policy sampling and update (see the module docstring)."""

    def __init__(self, depth: int = 2, decay: float = 0.99, threshold: float = 0.8, translate_fix: bool = False) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"cta depth must be an int >= 1, got {depth!r}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"cta decay must be in (0, 1), got {decay!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"cta threshold must be in [0, 1], got {threshold!r}")
        self.depth = depth
        self.decay = decay
        self.threshold = threshold
        self.translate_fix = translate_fix
        self._bins = _bin_counts(torch.device("cpu"))
        self.rates = torch.ones(len(CTA_OPS), MAX_BIN_SETS, MAX_BINS, dtype=torch.float64)

    # ------------------------------------------------------------ state

    def _on(self, device: torch.device) -> None:
        if self.rates.device != device:
            self.rates = self.rates.to(device)
            self._bins = self._bins.to(device)

    def _bin_mask(self) -> Tensor:
        """bool [19, 2, 17]: which rate entries exist."""
        return torch.arange(MAX_BINS, device=self.rates.device) < self._bins.unsqueeze(-1)

    def probabilities(self) -> Tensor:
        """Sampling weights [19, 2, 17] per bin set (``rate_to_p``; 0 for missing bins)."""
        mask = self._bin_mask()
        p = torch.where(mask, self.rates + (1 - self.decay), 0.0)
        p = p / p.amax(dim=-1, keepdim=True).clamp(min=1e-300)
        return torch.where(p < self.threshold, 0.0, p)

    def state_dict(self) -> dict[str, Any]:
        return {"rates": self.rates.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rates = state.get("rates") if isinstance(state, dict) else None
        expected = (len(CTA_OPS), MAX_BIN_SETS, MAX_BINS)
        if not isinstance(rates, Tensor) or tuple(rates.shape) != expected or rates.dtype != torch.float64:
            got = type(rates).__name__ if not isinstance(rates, Tensor) else f"{rates.dtype} {tuple(rates.shape)}"
            raise ValueError(f"CTAugment state must hold 'rates': float64 {expected}, got {got}")
        self.rates = rates.detach().clone().to(self.rates.device)

    # ------------------------------------------------------------ policies

    def sample_policy(self, n: int, generator: torch.Generator, probe: bool) -> Tensor:
        """float64 [n, depth, 3] policies: training (``probe=False``) or probe."""
        device = generator.device
        self._on(device)
        shape = (n, self.depth)
        op = torch.randint(0, len(CTA_OPS), shape, generator=generator, device=device)
        offsets = torch.rand(shape + (MAX_BIN_SETS,), generator=generator, dtype=torch.float64, device=device)
        bins = self._bins[op]
        if probe:
            levels = offsets
        else:
            p = self.probabilities()[op]  # [n, depth, 2, 17]
            cumulative = p.cumsum(dim=-1)
            u = torch.rand(shape + (MAX_BIN_SETS,), generator=generator, dtype=torch.float64, device=device)
            chosen = (cumulative <= u.unsqueeze(-1) * cumulative[..., -1:]).sum(dim=-1)
            last = torch.where(p > 0, torch.arange(MAX_BINS, device=device), 0).amax(dim=-1)
            chosen = torch.minimum(chosen, last)
            levels = (chosen + offsets) / bins.clamp(min=1)
        levels = torch.where(bins > 0, levels, 0.0)
        return torch.cat([op.unsqueeze(-1).to(torch.float64), levels], dim=-1)

    def resolve(self, policy: Tensor, height: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Policies [n, depth, 3] -> primitive steps (the official level mappings, :func:`_level_table`).

        Draws one cutout centre per slot (used only where the op is cutout).
        """
        device = policy.device
        op = policy[..., 0].to(torch.int64)
        v, v2 = policy[..., 1], policy[..., 2]
        rows = torch.randint(0, height, op.shape, generator=generator, device=device).to(torch.float64)
        cols = torch.randint(0, width, op.shape, generator=generator, device=device).to(torch.float64)
        table = device_constant(_level_table(height, width, self.translate_fix), torch.float64, device)
        scale, shift, factor, size, truncate, rounds, offset, rescale, cutout = table[op].unbind(-1)
        value = ((v * scale + shift) * factor) * size
        value = torch.where(truncate.bool(), value.trunc(), value) + offset
        value = torch.where(rounds.bool(), value.round(), value)
        second = torch.addcmul(rows * cutout, torch.trunc(v2 * 5.99), rescale)
        args = torch.stack([value, second, cols * cutout], dim=-1)
        primitive = device_constant(tuple(int(prim) for _, prim, _ in CTA_OPS), torch.int64, device)
        return primitive[op], args

    # ------------------------------------------------------------ update

    def update(self, policy: Tensor, p_true: Tensor) -> None:
        """Apply the probes' updates in order (policy [M, depth, 3], p_true [M])."""
        if policy.dim() != 3 or policy.shape[1:] != (self.depth, POLICY_WIDTH):
            raise ValueError(f"policies must be float64 [M, {self.depth}, {POLICY_WIDTH}], got {tuple(policy.shape)}")
        if p_true.shape != policy.shape[:1]:
            raise ValueError(f"p_true must be [M] = [{policy.shape[0]}], got {tuple(p_true.shape)}")
        self._on(policy.device)
        op = policy[..., 0].to(torch.int64)
        bins = self._bins[op]  # [M, depth, 2]
        index = torch.trunc(policy[..., 1:] * bins * 0.999).to(torch.int64).clamp(max=MAX_BINS - 1)
        cell = ((op.unsqueeze(-1) * MAX_BIN_SETS + torch.arange(MAX_BIN_SETS, device=op.device)) * MAX_BINS + index).flatten()
        valid = (bins > 0).flatten()
        proximity = p_true.to(torch.float64).view(-1, 1, 1).expand(bins.shape).flatten()
        # Updates run in flattened (probe, slot, bin set) order; each is damped by decay once per later
        # update of the same cell.
        same = (cell.unsqueeze(0) == cell.unsqueeze(1)) & valid.unsqueeze(0) & valid.unsqueeze(1)
        later = torch.triu(same, diagonal=1).sum(dim=1)
        decay = torch.full((), self.decay, dtype=torch.float64, device=op.device)
        contribution = torch.where(valid, (1 - self.decay) * proximity * decay.pow(later), 0.0)
        count = torch.zeros(self.rates.numel(), dtype=torch.float64, device=op.device)
        count.index_add_(0, cell, valid.to(torch.float64))
        added = torch.zeros_like(count).index_add_(0, cell, contribution)
        flat = self.rates.flatten() * decay.pow(count) + added
        self.rates = flat.view_as(self.rates)
