import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm
from torch import nn

from fixmatch_bench.train.optim import weight_decay_groups
from fixmatch_bench.models.wide_resnet import (
    TRUNCATED_NORMAL_STD,
    Conv2dSame,
    WideResNet,
    tf_glorot_normal_,
    tf_same_padding,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def capture_input(module: nn.Module, seen: dict, key: str) -> None:
    """Record the first input a module receives (the hook returns None: no change)."""

    def hook(mod, args):
        seen.setdefault(key, args[0].detach())

    module.register_forward_pre_hook(hook)


def tiny(**kwargs) -> WideResNet:
    """The quick-suite configuration: 1 channel, 16 px."""
    return WideResNet(10, in_channels=1, filters=16, scales=2, repeat=1, **kwargs)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"num_classes": 10, "filters": 32, "scales": 3}, 1_469_642),  # WRN-28-2
        ({"num_classes": 100, "filters": 128, "scales": 3}, 23_409_092),  # WRN-28-8
        ({"num_classes": 10, "filters": 32, "scales": 4}, 5_933_770),  # "WRN-37-2", STL-10
        ({"num_classes": 10, "filters": 32, "scales": 5}, 23_774_922),  # auto scales at 96 px
    ],
)
def test_parameter_counts_match_the_official_graph(kwargs, expected):
    assert n_params(WideResNet(**kwargs)) == expected


def test_symmetric_padding_has_the_same_parameters():
    assert n_params(WideResNet(10, padding="symmetric")) == 1_469_642


def test_weight_decay_split_on_wrn_28_2():
    model = WideResNet(10)
    decayed_group, other_group = weight_decay_groups(model, 5e-4)
    decayed, not_decayed = decayed_group["params"], other_group["params"]
    # 1 stem + 24 3x3 convs + 3 shortcuts + the dense kernel.
    assert len(decayed) == 29
    # 28 conv biases + 25 BN (gamma, beta) + the dense bias.
    assert len(not_decayed) == 28 + 2 * 25 + 1
    # Non-decayed scalars: conv biases 16 + (4*64+32) + (4*128+64) + (4*256+128) = 2032,
    # BN gamma+beta 2 * (112+128 + 224+256 + 448+512 + 128) = 3616, dense bias 10.
    assert sum(p.numel() for p in not_decayed) == 2032 + 3616 + 10
    assert all(p.dim() in (2, 4) for p in decayed)
    assert all(p.dim() == 1 for p in not_decayed)
    assert {id(p) for p in decayed} | {id(p) for p in not_decayed} == {id(p) for p in model.parameters()}


def test_output_shape_32px():
    model = WideResNet(10).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_output_and_feature_shapes_96px():
    model = WideResNet(10, scales=4).eval()
    seen = {}
    capture_input(model.bn, seen, "head")
    assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 10)
    assert seen["head"].shape == (2, 256, 12, 12)


def test_quick_suite_configuration_on_16px():
    model = tiny()
    assert model(torch.rand(4, 1, 16, 16) * 2 - 1).shape == (4, 10)


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (32, 3, 2, (0, 1)),
        (16, 3, 2, (0, 1)),
        (33, 3, 2, (1, 1)),
        (32, 3, 1, (1, 1)),
        (32, 1, 2, (0, 0)),
        (33, 1, 2, (0, 0)),
    ],
)
def test_tf_same_padding_rule(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected


def strided_conv(padding: str, weight: np.ndarray) -> Conv2dSame:
    conv = Conv2dSame(1, 1, 3, 2, padding)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight).view(1, 1, 3, 3))
        conv.bias.zero_()
    return conv


X4 = np.arange(1, 17, dtype=np.float32).reshape(4, 4)  # 1..16 row by row


def test_tf_padding_stride2_by_hand():
    conv = strided_conv("tf", np.ones((3, 3), np.float32))
    out = conv(torch.from_numpy(X4).view(1, 1, 4, 4))[0, 0]
    # Windows start at 0 and 2; the window at 2 overhangs into the zero row/column after.
    # [1+2+3+5+6+7+9+10+11, 3+4+7+8+11+12], [9+10+11+13+14+15, 11+12+15+16]
    assert out.tolist() == [[54.0, 45.0], [72.0, 54.0]]


def test_tf_padding_samples_top_left_pixel():
    weight = np.zeros((3, 3), np.float32)
    weight[0, 0] = 1.0
    tf_out = strided_conv("tf", weight)(torch.from_numpy(X4).view(1, 1, 4, 4))[0, 0]
    sym_out = strided_conv("symmetric", weight)(torch.from_numpy(X4).view(1, 1, 4, 4))[0, 0]
    # TF samples x[0,0], x[0,2], x[2,0], x[2,2]; symmetric padding is one pixel up/left.
    assert tf_out.tolist() == [[1.0, 3.0], [9.0, 11.0]]
    assert sym_out.tolist() == [[0.0, 0.0], [0.0, 6.0]]


def numpy_strided_conv(x: np.ndarray, w: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Plain cross-correlation, stride 2, zero padding (top, bottom, left, right)."""
    xp = np.pad(x, ((pad[0], pad[1]), (pad[2], pad[3])))
    rows = (xp.shape[0] - 3) // 2 + 1
    cols = (xp.shape[1] - 3) // 2 + 1
    out = np.zeros((rows, cols), np.float64)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = (xp[2 * i : 2 * i + 3, 2 * j : 2 * j + 3] * w).sum()
    return out


@pytest.mark.parametrize("size, pad", [(8, (0, 1, 0, 1)), (7, (1, 1, 1, 1))])
def test_tf_padding_matches_numpy_reference(size, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((size, size)).astype(np.float32)
    w = rng.standard_normal((3, 3)).astype(np.float32)
    out = strided_conv("tf", w)(torch.from_numpy(x).view(1, 1, size, size))[0, 0]
    np.testing.assert_allclose(out.detach().numpy(), numpy_strided_conv(x, w, pad), rtol=1e-5, atol=1e-5)


def test_truncated_normal_constant():
    assert TRUNCATED_NORMAL_STD == pytest.approx(truncnorm.std(-2, 2), rel=1e-15)


def test_conv_init_statistics():
    torch.manual_seed(0)
    model = WideResNet(10)
    conv = model.blocks[-1].conv2  # 128 -> 128, 3x3: 147,456 weights
    target = math.sqrt(2.0 / (9 * 128))
    w = conv.weight.detach()
    assert w.std().item() == pytest.approx(target, rel=0.02)
    assert abs(w.mean().item()) < 0.01 * target
    # Not truncated: about 4.6 % of normal samples lie beyond 2 std.
    assert (w.abs() > 2 * target).float().mean().item() == pytest.approx(0.0455, abs=0.005)
    stem = model.stem.weight.detach()  # 16 outputs: std sqrt(2/144)
    assert stem.std().item() == pytest.approx(math.sqrt(2.0 / 144), rel=0.15)


def test_all_biases_zero_and_bn_identity_at_init():
    model = WideResNet(10)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(module.bias) == 0
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.count_nonzero(module.bias) == 0


def test_glorot_normal_truncated_statistics():
    torch.manual_seed(0)
    weight = tf_glorot_normal_(torch.empty(1000, 3000))  # fan_avg 2000
    limit = 2 * math.sqrt(1 / 2000) / 0.87962566103423978  # 0.050843
    assert weight.std().item() == pytest.approx(math.sqrt(1 / 2000), rel=0.01)
    assert weight.abs().max().item() <= limit
    assert weight.abs().max().item() > 0.99 * limit


def test_dense_init_within_truncation():
    torch.manual_seed(0)
    fc = WideResNet(10).fc  # 128 -> 10: fan_avg 69
    limit = 2 * math.sqrt(1 / 69) / 0.87962566103423978
    w = fc.weight.detach()
    assert w.abs().max().item() <= limit
    assert w.std().item() == pytest.approx(math.sqrt(1 / 69), rel=0.1)


def test_bn_momentum_and_eps_on_every_bn():
    model = WideResNet(10)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 25  # 2 per block x 12 + head
    assert all(m.momentum == 0.001 and m.eps == 1e-3 for m in bns)


def test_running_stats_follow_tf_momentum():
    torch.manual_seed(0)
    model = tiny().train()
    seen = {}
    capture_input(model.blocks[0].bn1, seen, "x")
    model(torch.rand(8, 1, 16, 16) * 2 - 1)
    expected = 0.001 * seen["x"].mean(dim=(0, 2, 3))  # 0.999 * 0 + 0.001 * batch mean
    torch.testing.assert_close(model.blocks[0].bn1.running_mean, expected)


def test_shortcut_starts_from_activation_only_in_the_first_block():
    torch.manual_seed(0)
    model = WideResNet(10, filters=8, scales=2, repeat=2).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # a non-trivial BN so lrelu(BN(x)) differs from x
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.randn(2, 16, 8, 8)

    def lrelu(t: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(t, 0.1)

    with torch.no_grad():
        first, strided = model.blocks[0], model.blocks[2]
        h = lrelu(first.bn1(x))
        expected = first.shortcut(h) + first.conv2(lrelu(first.bn2(first.conv1(h))))
        torch.testing.assert_close(first(x), expected)
        y = torch.randn(2, 8, 8, 8)
        h = lrelu(strided.bn1(y))
        expected = strided.shortcut(y) + strided.conv2(lrelu(strided.bn2(strided.conv1(h))))
        torch.testing.assert_close(strided(y), expected)
    assert isinstance(model.blocks[1].shortcut, nn.Identity)
    assert model.blocks[2].shortcut.stride == (2, 2)


def test_eval_mode_is_deterministic():
    model = tiny().eval()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    before = model.blocks[0].bn1.running_mean.clone()
    assert torch.equal(model(x), model(x))
    assert torch.equal(model.blocks[0].bn1.running_mean, before)


def test_forward_backward_finite_grads():
    torch.manual_seed(0)
    model = tiny().train()
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    loss = F.cross_entropy(model(x), torch.arange(6) % 10)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_channels_last_and_full_graph_compile():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = torch.compile(model, fullgraph=True, backend="eager")(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"padding": "same"}, "padding"),
        ({"filters": 0}, "filters"),
        ({"scales": 0}, "scales"),
        ({"bn_momentum": 1.5}, "bn_momentum"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    args = {"num_classes": 10} | kwargs
    with pytest.raises(ValueError, match=name):
        WideResNet(**args)
