"""CPU micro-benchmarks of the network pieces.

Run: ``uv run pytest benchmarks/bench_network.py --benchmark-only``.
"""

import pytest
import torch
import torch.nn.functional as F

from fixmatch_bench.methods.distribution_alignment import DistributionAlignment
from fixmatch_bench.train.ema import ModelEMA
from fixmatch_bench.models.wide_resnet import WideResNet


@pytest.mark.parametrize("padding", ["tf", "symmetric"])
def test_wrn_28_2_train_step_batch_64(benchmark, padding):
    torch.manual_seed(0)
    model = WideResNet(10, padding=padding).train()
    x = torch.rand(64, 3, 32, 32) * 2 - 1
    y = torch.randint(0, 10, (64,))

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    benchmark(step)


def test_ema_update_wrn_28_2(benchmark):
    model = WideResNet(10)
    ema = ModelEMA(model, decay=0.999)
    benchmark(ema.update, model)


def test_distribution_alignment_448x100(benchmark):
    da = DistributionAlignment(100, torch.ones(100))
    probs = torch.softmax(torch.randn(448, 100), dim=1)

    def step():
        da.align(probs)
        da.update(probs)

    benchmark(step)
