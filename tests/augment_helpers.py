"""Shared pieces of the augmentation tests: deterministic test images, every op as explicit steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fixmatch_bench.augment import randaugment
from fixmatch_bench.augment.ctaugment import CTA_FILL, CTA_OPS, CTAugment
from fixmatch_bench.augment.primitives import Fill
from fixmatch_bench.augment.randaugment import RA_FILL


def make_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Half uniform noise, half smooth blobs (so filters and histograms see both)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n - n // 2, channels, size, size), generator=generator, dtype=torch.uint8)
    coarse = torch.randint(0, 256, (n // 2, channels, 5, 5), generator=generator).float()
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return torch.cat([noise, smooth.round().clamp(0, 255).to(torch.uint8)])


@dataclass(frozen=True)
class StepCase:
    """Images and explicit primitive steps drawn on the CPU, to apply on any device."""

    name: str
    images: torch.Tensor
    ops: torch.Tensor
    args: torch.Tensor
    fill: Fill


def every_op_cases(channels: int, size: int, seed: int = 0) -> list[StepCase]:
    """Every RandAugment op at every level and sign, every CTAugment op on a level grid (both
    translate settings), then a drawn RandAugment policy and a drawn CTAugment probe policy."""
    generator = torch.Generator().manual_seed(seed)
    levels, negate = torch.arange(1, 10).repeat(2), torch.arange(18) >= 9
    ra = [randaugment.resolve(torch.full((18,), index), levels, negate) for index in range(len(randaugment.RA_OPS))]
    ra_ops, ra_args = torch.cat([ops for ops, _ in ra]), torch.cat([args for _, args in ra])
    grid = torch.tensor([0.0, 0.05, 0.2, 0.35, 0.5, 0.5 + 1 / 34, 0.65, 0.8, 0.95, 0.999], dtype=torch.float64)
    first, second = torch.meshgrid(grid, torch.linspace(0, 0.999, 6, dtype=torch.float64), indexing="ij")
    cta_ops, cta_args = [], []
    for index in range(len(CTA_OPS)):
        policies = torch.stack([torch.full_like(first, index), first, second], dim=-1).view(-1, 1, 3)
        for translate_fix in (False, True):
            ops, args = CTAugment(depth=1, translate_fix=translate_fix).resolve(policies, size, size, generator)
            cta_ops.append(ops)
            cta_args.append(args)
    cta_ops, cta_args = torch.cat(cta_ops), torch.cat(cta_args)
    policy_ops, policy_args = randaugment.sample_steps(448, size, size, size // 2, generator)
    cta = CTAugment()
    probe_ops, probe_args = cta.resolve(cta.sample_policy(448, generator, probe=True), size, size, generator)
    return [StepCase(name, make_images(len(ops), channels, size, seed=seed + k), ops, args, fill)
            for k, (name, ops, args, fill) in enumerate([
                ("RandAugment ops x levels x signs", ra_ops.unsqueeze(1), ra_args.unsqueeze(1), RA_FILL),
                ("CTAugment ops x level grid", cta_ops, cta_args, CTA_FILL),
                ("RandAugment drawn policies + cutout", policy_ops, policy_args, RA_FILL),
                ("CTAugment drawn probe policies", probe_ops, probe_args, CTA_FILL)])]


def largest_difference(expected: torch.Tensor, actual: torch.Tensor) -> tuple[int, float]:
    """Largest |difference| in intensity levels, and the fraction of pixels that differ."""
    diff = (expected.cpu().int() - actual.cpu().int()).abs()
    return int(diff.max()), float((diff > 0).float().mean())
