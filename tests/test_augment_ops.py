"""Hand-checkable cases for the primitive ops, on both backends."""

from __future__ import annotations

import pytest
import torch

from fixmatch_bench.augment import pil_ops, tensor_ops
from fixmatch_bench.augment.primitives import Fill, Op

BACKENDS = {"batched": tensor_ops, "reference": pil_ops}
FILL = Fill(geometric=0, cutout=127)


def run(backend: str, images: torch.Tensor, op: Op, *args: float) -> torch.Tensor:
    n = images.shape[0]
    ops = torch.full((n, 1), int(op))
    padded = list(args) + [0.0] * (3 - len(args))
    return BACKENDS[backend].apply_steps(images, ops, torch.tensor(padded, dtype=torch.float64).repeat(n, 1, 1), FILL)


def row(values: list[int], channels: int = 1) -> torch.Tensor:
    """A 1 x C x 1 x W image holding ``values`` in every channel."""
    return torch.tensor(values, dtype=torch.uint8).view(1, 1, 1, -1).repeat(1, channels, 1, 1)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def test_identity_returns_the_input(backend: str) -> None:
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(backend, images, Op.IDENTITY), images)


def test_solarize_inverts_pixels_at_or_above_the_threshold(backend: str) -> None:
    out = run(backend, row([0, 127, 128, 200, 255], 3), Op.SOLARIZE, 128)
    assert out[0, 0, 0].tolist() == [0, 127, 127, 55, 0]


def test_posterize_keeps_the_top_bits(backend: str) -> None:
    out = run(backend, row([255, 63, 64, 200], 1), Op.POSTERIZE, 2)
    assert out[0, 0, 0].tolist() == [192, 0, 64, 192]


def test_brightness_truncates_like_pil(backend: str) -> None:
    # 0.5 * 201 = 100.5 -> 100; 1.5 * 200 = 300 -> clipped to 255
    assert run(backend, row([201, 0, 10]), Op.BRIGHTNESS, 0.5)[0, 0, 0].tolist() == [100, 0, 5]
    assert run(backend, row([200, 2, 10]), Op.BRIGHTNESS, 1.5)[0, 0, 0].tolist() == [255, 3, 15]


def test_contrast_blends_towards_the_rounded_mean(backend: str) -> None:
    # mean = (0 + 101) / 2 = 50.5 -> int(51.0) = 51; factor 0 gives the degenerate image
    assert run(backend, row([0, 101]), Op.CONTRAST, 0.0)[0, 0, 0].tolist() == [51, 51]


def test_autocontrast_stretches_each_channel(backend: str) -> None:
    image = torch.cat([row([50, 100, 150]), row([0, 10, 20]), row([7, 7, 7])], dim=1)
    out = run(backend, image, Op.AUTOCONTRAST, 1.0)
    # scale 255 / 100: 100 -> int(127.5) = 127; second channel 255 / 20: 10 -> 127; flat stays
    assert out[0, 0, 0].tolist() == [0, 127, 255]
    assert out[0, 1, 0].tolist() == [0, 127, 255]
    assert out[0, 2, 0].tolist() == [7, 7, 7]


def test_equalize_uses_pils_lookup_table(backend: str) -> None:
    image = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    image.view(-1)[512:768] = 100
    image.view(-1)[768:] = 200
    out = run(backend, image, Op.EQUALIZE, 1.0)
    # step = (1024 - 256) // 255 = 3; lut[100] = (1 + 512) // 3 = 171; lut[200] = 769 // 3 = 256 -> 255
    assert sorted(torch.unique(out).tolist()) == [0, 171, 255]
    assert int((out == 171).sum()) == 256


def test_smooth_keeps_the_border_and_rounds(backend: str) -> None:
    image = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    image[0, 0, 2, 2] = 130
    out = run(backend, image, Op.SMOOTH, 1.0)
    # centre: 5 * 130 / 13 = 50; its 8 neighbours: 130 / 13 = 10; the border stays 0
    expected = torch.zeros(5, 5, dtype=torch.uint8)
    expected[1:4, 1:4] = 10
    expected[2, 2] = 50
    assert torch.equal(out[0, 0], expected)


def test_cutout_square_position_and_clipping(backend: str) -> None:
    image = torch.full((1, 3, 32, 32), 9, dtype=torch.uint8)
    inside = run(backend, image, Op.CUTOUT, 16, 10, 20) == 127
    assert inside.all(dim=1).sum() == 256
    assert inside[0, 0, 2:18, 12:28].all()
    corner = run(backend, image, Op.CUTOUT, 16, 0, 31) == 127
    assert corner[0, 0].sum() == 8 * 9 and corner[0, 0, 0:8, 23:32].all()  # rows [0, 8), cols [23, 32)


def test_translate_moves_content_by_whole_pixels_and_fills(backend: str) -> None:
    ramp = row(list(range(10, 18)))
    # PIL affine offset c: output(x) = input(x + c)
    assert run(backend, ramp, Op.TRANSLATE_X, 3)[0, 0, 0].tolist() == [13, 14, 15, 16, 17, 0, 0, 0]
    assert run(backend, ramp, Op.TRANSLATE_X, -2)[0, 0, 0].tolist() == [0, 0, 10, 11, 12, 13, 14, 15]
    # sub-pixel offsets round to the same pixel under NEAREST: CTAugment's no-op translate
    assert torch.equal(run(backend, ramp, Op.TRANSLATE_X, 0.3), ramp)
    assert torch.equal(run(backend, ramp, Op.TRANSLATE_X, -0.3), ramp)


def test_rotate_45_turns_counter_clockwise_about_the_centre(backend: str) -> None:
    image = torch.full((1, 1, 32, 32), 200, dtype=torch.uint8)
    image[0, 0, 16, 26] = 255  # 10 px right of the centre
    out = run(backend, image, Op.ROTATE, 45)[0, 0]
    assert out[16, 16] == 200  # the centre stays
    assert out[0, 0] == 0 and out[31, 31] == 0  # corners are filled black
    # a 45 degree turn of a full square leaves 4 corner triangles of ~(32 - 32/sqrt2)^2/2 px each
    assert abs(int((out == 0).sum()) - 4 * (32 - 32 / 2**0.5) ** 2 / 2) < 40
    row_, col = (out == 255).nonzero()[0].tolist()
    assert row_ < 16 and col > 16  # moved up and to the right (counter-clockwise)


def test_gray_images_match_their_rgb_replica() -> None:
    gray = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    for op, arg in [(Op.COLOR, 1.7), (Op.CONTRAST, 0.4), (Op.EQUALIZE, 1.0), (Op.SHARPNESS, 1.9)]:
        single = run("batched", gray, op, arg)
        replica = run("batched", gray.repeat(1, 3, 1, 1), op, arg)
        assert torch.equal(replica, single.repeat(1, 3, 1, 1)), op
