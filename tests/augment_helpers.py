"""Shared fixtures for the augmentation tests: deterministic test images."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Half uniform noise, half smooth blobs (so filters and histograms see both)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n - n // 2, channels, size, size), generator=generator, dtype=torch.uint8)
    coarse = torch.randint(0, 256, (n // 2, channels, 5, 5), generator=generator).float()
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return torch.cat([noise, smooth.round().clamp(0, 255).to(torch.uint8)])
