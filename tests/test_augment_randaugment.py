"""RandAugment (official ``rac``): level table and sampling statistics."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from fixmatch_bench.augment import randaugment

from fixmatch_bench.augment.augmenter import make_augmenter
from fixmatch_bench.augment.primitives import Op

LEVELS = torch.arange(1, 10)


def resolved(name: str, negate: bool = False) -> tuple[list[int], list[float]]:
    index = [n for n, _ in randaugment.RA_OPS].index(name)
    ops, args = randaugment.resolve(torch.full((9,), index), LEVELS, torch.full((9,), negate))
    return ops.tolist(), args[:, 0].tolist()


def test_official_level_to_parameter_table() -> None:
    assert resolved("Rotate") == ([Op.ROTATE] * 9, [3, 6, 9, 12, 15, 18, 21, 24, 27])
    assert resolved("Rotate", negate=True)[1] == [-3, -6, -9, -12, -15, -18, -21, -24, -27]
    assert resolved("Solarize")[1] == [231, 205, 180, 154, 128, 103, 77, 52, 26]
    assert resolved("Posterize")[1] == [4, 4, 3, 3, 2, 2, 2, 1, 1]
    assert resolved("TranslateY", negate=True) == ([Op.TRANSLATE_Y] * 9, [-1, -2, -3, -4, -5, -6, -7, -8, -9])
    assert resolved("Brightness")[1] == pytest.approx([0.28, 0.46, 0.64, 0.82, 1.0, 1.18, 1.36, 1.54, 1.72])
    assert resolved("ShearX")[1] == pytest.approx([0.03 * level for level in range(1, 10)])
    assert resolved("AutoContrast") == ([Op.AUTOCONTRAST] * 9, [1.0] * 9)
    assert resolved("Identity")[0] == [Op.IDENTITY] * 9


def test_sampling_frequencies_match_the_rule() -> None:
    policy = randaugment.sample_policy(30_000, torch.Generator().manual_seed(0))
    ops = torch.bincount(policy["op"].flatten(), minlength=14)
    levels = torch.bincount(policy["level"].flatten(), minlength=10)
    assert levels[0] == 0 and policy["level"].max() == 9
    assert chisquare(ops.numpy()).pvalue > 1e-3
    assert chisquare(levels[1:].numpy()).pvalue > 1e-3
    applied = policy["applied"].float()
    assert abs(applied.mean().item() - 0.5) < 0.01  # sd 0.003
    ops_applied = torch.bincount(applied.sum(1).long(), minlength=3).float() / 30_000
    assert torch.allclose(ops_applied, torch.tensor([0.25, 0.5, 0.25]), atol=0.015)
    assert abs(policy["negate"].float().mean().item() - 0.5) < 0.01


def test_strong_view_always_has_a_gray_cutout_of_the_given_size() -> None:
    images = torch.zeros(256, 1, 32, 32, dtype=torch.uint8)  # every RA colour op maps black to black
    out = make_augmenter("randaugment", flip=False, translate=0, cutout=16).strong(images, torch.Generator().manual_seed(0))
    gray = (out == randaugment.GRAY).flatten(1).sum(1)
    # the cutout square is 16 x 16 clipped: between 8 x 8 and 16 x 16 pixels (geometric fill can add more)
    assert (gray >= 64).all()
    assert (gray == 256).float().mean() > 0.1


def test_translate_scale_shrinks_the_pixel_translation_for_small_images():
    levels = torch.arange(1, 10)
    index = [name for name, _ in randaugment.RA_OPS].index("TranslateX")
    op = torch.full((9,), index)
    ops, official = randaugment.resolve(op, levels, torch.zeros(9, dtype=torch.bool))
    _, halved = randaugment.resolve(op, levels, torch.zeros(9, dtype=torch.bool), translate_scale=0.5)
    assert (ops == int(Op.TRANSLATE_X)).all()
    assert official[:, 0].tolist() == list(range(1, 10))  # official: level pixels
    assert halved[:, 0].tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]  # floor(level / 2)
