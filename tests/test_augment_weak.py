"""Weak view: flip p = 0.5 and reflect-pad shifts in {-w..w}."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from fixmatch_bench.augment import pil_ops, tensor_ops

from fixmatch_bench.augment.augmenter import make_augmenter
from fixmatch_bench.augment.weak import sample_weak

BACKENDS = {"batched": tensor_ops, "reference": pil_ops}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_shift_by_exactly_k_pixels_reflects_without_repeating_the_edge(backend: str) -> None:
    ramp = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).repeat(2, 1, 8, 1)
    zero = torch.zeros(2, dtype=torch.int64)
    out = BACKENDS[backend].flip_shift(ramp, torch.tensor([False, True]), zero, torch.tensor([2, -3]))
    assert out[0, 0, 0].tolist() == [2, 3, 4, 5, 6, 7, 6, 5]  # tf.pad REFLECT, not SYMMETRIC (7, 7, 6)
    assert out[1, 0, 0].tolist() == [4, 5, 6, 7, 6, 5, 4, 3]  # flip first, then shift by -3
    column = torch.arange(8, dtype=torch.uint8).view(1, 1, 8, 1).repeat(1, 3, 1, 8)
    shifted = BACKENDS[backend].flip_shift(column, torch.tensor([False]), torch.tensor([-1]), torch.tensor([0]))
    assert shifted[0, 2, :, 0].tolist() == [1, 0, 1, 2, 3, 4, 5, 6]


def test_flip_only_gives_the_image_or_its_mirror() -> None:
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = make_augmenter("none", flip=True, translate=0, cutout=0).weak(images, torch.Generator().manual_seed(1))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_no_flip_and_no_translate_is_the_identity() -> None:
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = make_augmenter("none", flip=False, translate=0, cutout=0).weak(images, torch.Generator().manual_seed(1))
    assert torch.equal(out, images)


def test_flip_and_shift_frequencies_follow_the_sampling_rule() -> None:
    params = sample_weak(40_000, flip=True, translate=4, generator=torch.Generator().manual_seed(0))
    assert abs(params.flip.float().mean().item() - 0.5) < 0.01  # sd 0.0025
    for shifts in (params.shift_y, params.shift_x):
        counts = torch.bincount(shifts + 4, minlength=9)
        assert shifts.min() == -4 and shifts.max() == 4
        assert chisquare(counts.numpy()).pvalue > 1e-3


def test_translate_must_fit_the_image() -> None:
    with pytest.raises(ValueError, match="translate must be an int in \\[0, 16\\)"):
        make_augmenter(translate=16).weak(torch.zeros(1, 1, 16, 16, dtype=torch.uint8), torch.Generator())
