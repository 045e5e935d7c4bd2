"""CTAugment: level mapping, sampling rule, update rule, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from augment_helpers import make_images
from fixmatch_bench.augment.augmenter import make_augmenter
from fixmatch_bench.augment.ctaugment import CTA_FILL, CTA_OPS, CTAugment, cutout_side
from fixmatch_bench.augment.primitives import Op

NAMES = [name for name, _, _ in CTA_OPS]


def op_index(name: str) -> int:
    return NAMES.index(name)


def policy(*slots: tuple[str, float, float]) -> torch.Tensor:
    """One probe's policy from (op name, level 1, level 2) slots."""
    return torch.tensor([[op_index(name), v1, v2] for name, v1, v2 in slots], dtype=torch.float64)


def resolved(name: str, levels: list[float], size: int = 32, translate_fix: bool = False) -> list[float]:
    cta = CTAugment(depth=1, translate_fix=translate_fix)
    policies = torch.stack([policy((name, v, 0.0)) for v in levels])
    ops, args = cta.resolve(policies, size, size, torch.Generator().manual_seed(0))
    assert (ops == int(CTA_OPS[op_index(name)][1])).all()
    return args[:, 0, 0].tolist()


def test_registry_matches_the_official_op_list() -> None:
    assert NAMES == [
        "autocontrast", "blur", "brightness", "color", "contrast", "cutout", "equalize", "invert", "identity",
        "posterize", "rescale", "rotate", "sharpness", "shear_x", "shear_y", "smooth", "solarize",
        "translate_x", "translate_y",
    ]  # fmt: skip
    assert [bins for _, _, bins in CTA_OPS if bins != (17,)] == [(), (8,), (17, 6)]


def test_level_to_parameter_mapping() -> None:
    assert resolved("rotate", [0.0, 0.25, 0.5, 0.99, 1.0]) == [-45, -22, 0, 44, 45]  # round half to even: -22.5 -> -22
    assert resolved("posterize", [0.0, 0.125, 0.5, 0.9999]) == [1, 1, 4, 8]
    assert resolved("solarize", [0.0, 0.5, 0.9999]) == [0, 127, 255]
    assert resolved("brightness", [0.0, 0.5, 1.0]) == pytest.approx([0.1, 1.05, 2.0])
    assert resolved("shear_x", [0.0, 0.25, 1.0]) == pytest.approx([-0.3, -0.15, 0.3])
    assert resolved("translate_y", [0.0, 1.0]) == pytest.approx([-0.3, 0.3])  # pixels: the no-op quirk
    assert resolved("translate_y", [0.0, 1.0], translate_fix=True) == pytest.approx([-9.6, 9.6])
    assert resolved("cutout", [1.0, 0.5], size=32) == [16, 8]
    assert resolved("autocontrast", [0.3]) == pytest.approx([0.3])
    assert resolved("rescale", [1.0]) == [0.25]
    cta = CTAugment(depth=1)
    _, args = cta.resolve(policy(("rescale", 0.5, 0.999)).unsqueeze(0), 32, 32, torch.Generator())
    assert args[0, 0, 1] == 5  # int(0.999 * 5.99) = 5: NEAREST


def test_cutout_side_formula() -> None:
    assert (cutout_side(32, 32), cutout_side(96, 96), cutout_side(16, 16)) == (16, 48, 8)


def test_translate_ops_are_no_ops_unless_fixed() -> None:
    images = make_images(8, 3, 32)
    levels = torch.linspace(0, 0.999, 8, dtype=torch.float64)
    policies = torch.stack([policy(("translate_x", v, 0.0), ("translate_y", v, 0.0)) for v in levels.tolist()])
    for fix, expect_identity in [(False, True), (True, False)]:
        augmenter = make_augmenter("ctaugment", cta_translate_fix=fix)
        ops, args = augmenter.cta.resolve(policies, 32, 32, torch.Generator())
        out = augmenter._apply(images, ops, args, CTA_FILL)
        assert torch.equal(out, images) == expect_identity


def test_training_bins_follow_the_rates_rule() -> None:
    cta = CTAugment(depth=2)
    ac = op_index("autocontrast")
    cta.rates[ac, 0, :8] = 0.0  # p = 0.01 / 1.01 < 0.8: never drawn
    cta.rates[ac, 0, 8] = 0.85  # p = 0.86 / 1.01 = 0.851 of a full bin
    draws = cta.sample_policy(60_000, torch.Generator().manual_seed(0), probe=False)
    assert chisquare(torch.bincount(draws[..., 0].long().flatten(), minlength=19).numpy()).pvalue > 1e-3
    levels = draws[..., 1][draws[..., 0] == ac]
    bins = torch.bincount((levels * 17).long(), minlength=17)
    assert bins[:8].sum() == 0
    assert abs(bins[8].item() / bins[9:].float().mean().item() - 0.86 / 1.01) < 0.06  # ~700 draws per bin
    assert chisquare(bins[9:].numpy()).pvalue > 1e-3
    # a level lies uniformly inside its bin; untouched ops use all bins uniformly
    posterize = draws[..., 1][draws[..., 0] == op_index("posterize")]
    assert chisquare(torch.bincount((posterize * 8).long(), minlength=8).numpy()).pvalue > 1e-3
    identity_levels = draws[..., 1:][draws[..., 0] == op_index("identity")]
    assert (identity_levels == 0).all()


def test_probe_policies_are_uniform() -> None:
    draws = CTAugment().sample_policy(40_000, torch.Generator().manual_seed(1), probe=True)
    assert chisquare(torch.bincount(draws[..., 0].long().flatten(), minlength=19).numpy()).pvalue > 1e-3
    rescale = draws[draws[..., 0] == op_index("rescale")][:, 1:]
    assert chisquare(torch.histc(rescale[:, 1].float(), bins=10, min=0, max=1).numpy()).pvalue > 1e-3
    assert 0 <= draws[..., 1:].min() and draws[..., 1:].max() < 1


def test_update_rule_on_a_hand_computed_sequence() -> None:
    cta = CTAugment(depth=2)
    policies = torch.stack(
        [
            policy(("autocontrast", 0.5, 0.0), ("posterize", 0.3, 0.0)),
            policy(("autocontrast", 0.5, 0.0), ("rescale", 0.99, 0.5)),
            policy(("identity", 0.0, 0.0), ("autocontrast", 0.1, 0.0)),
        ]
    )
    cta.update(policies, torch.tensor([0.2, 1.0, 0.5], dtype=torch.float64))
    expected = torch.ones_like(cta.rates)
    # autocontrast bin int(0.5 * 17 * 0.999) = 8 twice: 0.99 * 1 + 0.01 * 0.2 = 0.992, then 0.992 * 0.99 + 0.01
    expected[op_index("autocontrast"), 0, 8] = 0.99208
    expected[op_index("autocontrast"), 0, 1] = 0.995  # int(0.1 * 17 * 0.999) = 1
    expected[op_index("posterize"), 0, 2] = 0.992  # int(0.3 * 8 * 0.999) = 2
    expected[op_index("rescale"), 0, 16] = 1.0  # 0.99 + 0.01 * 1.0
    expected[op_index("rescale"), 1, 2] = 1.0  # int(0.5 * 6 * 0.999) = 2
    assert torch.allclose(cta.rates, expected, rtol=0, atol=1e-12)
    assert (~torch.isclose(cta.rates, torch.ones_like(cta.rates), rtol=0, atol=1e-12)).sum() == 3


def sequential_update(rates: np.ndarray, policies: np.ndarray, p_true: np.ndarray, decay: float) -> np.ndarray:
    """The rule written as a plain loop: probe by probe, slot by slot, bin set by bin set."""
    rates = rates.copy()
    for probe_policy, proximity in zip(policies, p_true):
        for op, *levels in probe_policy:
            for bin_set, nbins in enumerate(CTA_OPS[int(op)][2]):
                index = int(levels[bin_set] * nbins * 0.999)
                rates[int(op), bin_set, index] = rates[int(op), bin_set, index] * decay + proximity * (1 - decay)
    return rates


def test_vectorised_update_equals_the_sequential_loop() -> None:
    generator = torch.Generator().manual_seed(2)
    cta = CTAugment(depth=2)
    for _ in range(5):
        policies = cta.sample_policy(64, generator, probe=True)
        policies[:32, :, 0] = op_index("posterize")  # force many repeated cells
        p_true = torch.rand(64, generator=generator, dtype=torch.float64)
        expected = sequential_update(cta.rates.numpy(), policies.numpy(), p_true.numpy(), cta.decay)
        cta.update(policies, p_true)
        np.testing.assert_allclose(cta.rates.numpy(), expected, rtol=0, atol=1e-14)


def test_state_dict_round_trip_continues_identically() -> None:
    images = make_images(16, 3, 32)
    augmenter = make_augmenter("ctaugment")
    generator = torch.Generator().manual_seed(3)
    probes, policies = augmenter.probe(augmenter.weak(images, generator), generator)
    assert probes.shape == images.shape and policies.shape == (16, 2, 3)
    augmenter.update(policies, torch.rand(16, generator=generator))
    state, rng = augmenter.state_dict(), generator.get_state()
    first = augmenter.strong(images, generator)

    restored = make_augmenter("ctaugment")
    restored.load_state_dict(state)
    assert torch.equal(restored.state_dict()["rates"], augmenter.state_dict()["rates"])
    generator.set_state(rng)
    assert torch.equal(restored.strong(images, generator), first)
    with pytest.raises(ValueError, match="rates"):
        restored.load_state_dict({"rates": torch.ones(19, 2, 17)})  # float32


def test_cutout_must_match_ctaugments_own_size() -> None:
    images = make_images(4, 3, 96)
    with pytest.raises(ValueError, match="cutout=16 disagrees .* = 48"):
        make_augmenter("ctaugment", translate=12, cutout=16).strong(images, torch.Generator())
    out = make_augmenter("ctaugment", translate=12, cutout=48).strong(images, torch.Generator())
    assert ((out == 127).all(dim=1).flatten(1).sum(1) >= 24 * 24).all()  # a 48-px square clipped to a quarter at worst
    with pytest.raises(ValueError, match="cta_\\* options only apply"):
        make_augmenter("randaugment", cta_threshold=0.5)


def test_update_rejects_mismatched_shapes() -> None:
    augmenter = make_augmenter("ctaugment")
    with pytest.raises(ValueError, match="policies must be float64 \\[M, 2, 3\\]"):
        augmenter.update(torch.zeros(4, 3, 3, dtype=torch.float64), torch.zeros(4))
    with pytest.raises(ValueError, match="p_true must be \\[M\\] = \\[4\\]"):
        augmenter.update(torch.zeros(4, 2, 3, dtype=torch.float64), torch.zeros(5))


def test_primitive_of_each_registry_entry() -> None:
    assert CTA_OPS[op_index("identity")][1] == Op.IDENTITY and CTA_OPS[op_index("cutout")][1] == Op.CUTOUT
