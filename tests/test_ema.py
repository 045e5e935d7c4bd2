import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixmatch_bench.train.ema import ModelEMA
from fixmatch_bench.models.wide_resnet import WideResNet


def set_linear(layer: nn.Linear, weight: list[float], bias: float) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.fill_(bias)


def test_two_steps_by_hand():
    live = nn.Linear(2, 1)
    set_linear(live, [1.0, 2.0], 0.5)
    ema = ModelEMA(live, decay=0.9)
    set_linear(live, [3.0, 4.0], 1.5)
    ema.update(live)
    # 0.9 * [1, 2] + 0.1 * [3, 4] = [1.2, 2.2]; 0.9 * 0.5 + 0.1 * 1.5 = 0.6
    torch.testing.assert_close(ema.module.weight, torch.tensor([[1.2, 2.2]]))
    torch.testing.assert_close(ema.module.bias, torch.tensor([0.6]))
    set_linear(live, [5.0, 0.0], -0.5)
    ema.update(live)
    # 0.9 * [1.2, 2.2] + 0.1 * [5, 0] = [1.58, 1.98]; 0.9 * 0.6 + 0.1 * -0.5 = 0.49
    torch.testing.assert_close(ema.module.weight, torch.tensor([[1.58, 1.98]]))
    torch.testing.assert_close(ema.module.bias, torch.tensor([0.49]))


def test_starts_from_the_initial_weights_and_is_a_copy():
    live = nn.Linear(3, 2)
    ema = ModelEMA(live, decay=0.999)
    assert torch.equal(ema.module.weight, live.weight)
    assert ema.module.weight.data_ptr() != live.weight.data_ptr()
    with torch.no_grad():
        live.weight.add_(1.0)
    assert not torch.equal(ema.module.weight, live.weight)


def test_buffers_are_copied_not_averaged():
    torch.manual_seed(0)
    live = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, momentum=0.5))
    ema = ModelEMA(live, decay=0.99)
    live.train()
    live(torch.randn(16, 2) * 3 + 1)
    live(torch.randn(16, 2) * 3 + 1)
    ema.update(live)
    bn_live, bn_ema = live[1], ema.module[1]
    assert torch.equal(bn_ema.running_mean, bn_live.running_mean)
    assert torch.equal(bn_ema.running_var, bn_live.running_var)
    assert int(bn_ema.num_batches_tracked) == 2
    # while gamma (a parameter) is averaged: 0.99 * 1 + 0.01 * live gamma
    with torch.no_grad():
        bn_live.weight.fill_(3.0)
    ema.update(live)
    torch.testing.assert_close(bn_ema.weight, torch.full((3,), 1.02))


def test_shadow_does_not_track_gradients():
    live = nn.Linear(2, 2)
    ema = ModelEMA(live, decay=0.5)
    assert all(not p.requires_grad for p in ema.module.parameters())
    F.mse_loss(live(torch.ones(1, 2)), torch.zeros(1, 2)).backward()
    ema.update(live)
    assert all(p.grad is None and p.grad_fn is None for p in ema.module.parameters())
    assert all(p.requires_grad for p in live.parameters())
    assert not ema.module.training


def test_training_step_on_the_quick_network():
    torch.manual_seed(0)
    live = WideResNet(10, in_channels=1, filters=16, scales=2, repeat=1)
    ema = ModelEMA(live, decay=0.999)
    before = [p.detach().clone() for p in live.parameters()]
    opt = torch.optim.SGD(live.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    F.cross_entropy(live(x), torch.arange(8)).backward()
    opt.step()
    ema.update(live)
    for shadow, old, new in zip(ema.module.parameters(), before, live.parameters()):
        torch.testing.assert_close(shadow, 0.999 * old + 0.001 * new.detach())
    for shadow, buf in zip(ema.module.buffers(), live.buffers()):
        assert torch.equal(shadow, buf)


def test_state_round_trip():
    torch.manual_seed(0)
    live = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema = ModelEMA(live, decay=0.9)
    live(torch.randn(4, 2))
    with torch.no_grad():
        live[0].weight.mul_(2)
    ema.update(live)
    state = ema.state_dict()
    resumed = ModelEMA(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), decay=0.9)
    resumed.load_state_dict(state)
    for key, value in ema.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    ema.update(live)
    resumed.update(live)
    for key, value in ema.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_bad_decay_and_mismatched_model_are_named():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(nn.Linear(2, 2), decay=1.5)
    ema = ModelEMA(nn.Linear(2, 2), decay=0.9)
    with pytest.raises(ValueError, match="parameters"):
        ema.update(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
