import math

import pytest
import torch
from torch import nn

from fixmatch_bench.train.optim import cosine_lr, make_optimizer, set_lr, weight_decay_groups


def test_cosine_schedule_of_the_official_code():
    assert cosine_lr(0.03, 0, 2**20) == 0.03
    assert cosine_lr(0.03, 2**19, 2**20) == pytest.approx(0.03 * math.cos(7 * math.pi / 32))
    assert cosine_lr(0.03, 2**20, 2**20) == pytest.approx(0.005853, abs=1e-6)
    assert cosine_lr(0.03, 2**21, 2**20) == cosine_lr(0.03, 2**20, 2**20)  # clipped


def test_weight_decay_only_on_conv_and_linear_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decayed, other = weight_decay_groups(model, 5e-4)
    assert decayed["weight_decay"] == 5e-4 and other["weight_decay"] == 0
    assert [p.shape for p in decayed["params"]] == [model[0].weight.shape, model[3].weight.shape]
    assert len(other["params"]) == 4  # conv bias, BN gamma and beta, linear bias


def test_optimizer_is_nesterov_sgd():
    optimizer = make_optimizer(nn.Linear(2, 2), 0.03, 0.9, True, 5e-4)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["dampening"] == 0


def test_set_lr_as_a_tensor_updates_one_device_tensor_in_place_and_back_to_float():
    model = nn.Linear(3, 2)
    optimizer = make_optimizer(model, 0.03, 0.9, True, 5e-4)
    set_lr(optimizer, 0.02, as_tensor=True)
    held = [group["lr"] for group in optimizer.param_groups]
    assert all(isinstance(lr, torch.Tensor) and lr.dim() == 0 and lr.dtype == torch.float32 for lr in held)
    set_lr(optimizer, 0.01, as_tensor=True)
    assert all(group["lr"] is lr and float(lr) == pytest.approx(0.01) for group, lr in zip(optimizer.param_groups, held))
    set_lr(optimizer, 0.005)
    assert all(group["lr"] == 0.005 for group in optimizer.param_groups)
