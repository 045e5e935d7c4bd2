"""The official ablation scripts' variants as params (ablation/ab_fixmatch_*.py): each one's loss or
learning rate against a value computed by hand, invalid combinations refused, and a real run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from conftest import digits_workspace
from fixmatch_bench.core.config import ParamsError, Run, validate_params
from fixmatch_bench.train.fixmatch import Batch, fixmatch_loss
from fixmatch_bench.train.optim import linear_lr, scheduled_lr
from fixmatch_bench.train.trainer import train

# One labeled image, two unlabeled ones, three classes: the "network" returns these logits for the
# concatenated [labeled, weak, strong] batch.
LOGITS_X, WEAK, STRONG = [2.0, 0.0, 0.0], [[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [1.0, 0.0, 3.0]]
THRESHOLD = 0.7  # softmax(WEAK[0]) peaks at 0.576 (below), at T = 0.5 at 0.787 (above); WEAK[1] at 0.909


class FixedLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([LOGITS_X, *WEAK, *STRONG])


def _loss_u(**variant) -> tuple[float, float]:
    batch = Batch(labeled=torch.zeros(1, 1), targets=torch.tensor([0]), weak=torch.zeros(2, 1), strong=torch.zeros(2, 1))
    _, logs = fixmatch_loss(FixedLogits(), batch, THRESHOLD, 1.0, **variant)
    return float(logs["loss_u"]), float(logs["mask_rate"])


def _cross_entropy(logits: list[float], target: list[float]) -> float:
    """-sum_c target_c log softmax(logits)_c, by hand."""
    log_total = math.log(sum(math.exp(value) for value in logits))
    return -sum(weight * (value - log_total) for weight, value in zip(target, logits))


def _softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(value / temperature) for value in logits]
    return [value / sum(exps) for value in exps]


ONE_HOT_0 = [1.0, 0.0, 0.0]  # both weak views' argmax, at any temperature


def test_the_default_is_the_fixmatch_loss():
    loss_u, mask = _loss_u()
    assert mask == 0.5 and loss_u == pytest.approx(_cross_entropy(STRONG[1], ONE_HOT_0) / 2, rel=1e-6)


def test_sharpening_takes_the_mask_from_the_sharpened_distribution_and_keeps_hard_labels():
    """ab_fixmatch_sharpen.py: labels = argmax softmax(w / T), mask = max softmax(w / T) >= tau."""
    loss_u, mask = _loss_u(temperature=0.5)
    assert max(_softmax(WEAK[0], 0.5)) >= THRESHOLD > max(_softmax(WEAK[0]))
    expected = (_cross_entropy(STRONG[0], ONE_HOT_0) + _cross_entropy(STRONG[1], ONE_HOT_0)) / 2
    assert mask == 1.0 and loss_u == pytest.approx(expected, rel=1e-6)


def test_conditional_consistency_masks_with_the_raw_distribution_and_trains_towards_the_sharpened_one():
    """ab_fixmatch_sharpen_conditional_consistency.py: mask = max softmax(w) >= tau,
    loss = soft cross-entropy against softmax(w / T)."""
    loss_u, mask = _loss_u(temperature=2.0, soft_targets=True)  # T > 1: targets far from one-hot
    expected = _cross_entropy(STRONG[1], _softmax(WEAK[1], 2.0)) / 2  # WEAK[0] is masked out
    assert mask == 0.5 and loss_u == pytest.approx(expected, rel=1e-6)
    assert loss_u != pytest.approx(_loss_u()[0], rel=1e-3)  # not the hard-label loss


def test_linear_decay_goes_from_lr_to_lr_end_and_stays_there():
    """ab_fixmatch_linearlr.py: lr + (lr_end - lr) * clip(k / K, 0, 1)."""
    assert [linear_lr(0.03, 0.02, step, 100) for step in (0, 50, 100, 150)] == pytest.approx([0.03, 0.025, 0.02, 0.02])
    assert scheduled_lr("linear", 0.03, 0.02, 50, 100) == pytest.approx(0.025)
    assert scheduled_lr("cosine", 0.03, 0.0, 50, 100) == pytest.approx(0.03 * math.cos(7 * math.pi * 0.5 / 16))


@pytest.mark.parametrize("changes, message", [
    ({"lr_schedule": "linear"}, "invalid params: train.lr_end = None (a number with lr_schedule: linear, null with linear)"),
    ({"lr_end": 0.02}, "invalid params: train.lr_end = 0.02 (a number with lr_schedule: linear, null with cosine)"),
    ({"sharpen_temperature": 0.0}, "invalid params: train.sharpen_temperature = 0.0 (must be a number in (0.0, inf))"),
    ({"lr_schedule": "step"}, "invalid params: train.lr_schedule = 'step' (allowed: cosine, linear)"),
])
def test_invalid_variants_are_refused_in_one_line(params, changes, message):
    changed = copy.deepcopy(params)
    changed["train"].update(changes)
    with pytest.raises(ParamsError) as error:
        validate_params(changed)
    assert str(error.value) == message


def test_sharpening_with_distribution_alignment_is_refused(params):
    changed = copy.deepcopy(params)
    changed["train"]["sharpen_temperature"] = 0.5
    changed["da_cells"] = ["digits_20"]
    with pytest.raises(ParamsError, match=r"train.sharpen_temperature = 0.5 \(the sharpening ablations are not "
                                          r"defined with distribution alignment"):
        validate_params(changed)


def test_a_run_trains_with_the_variants_and_logs_the_linear_schedule(tmp_path):
    root, params = digits_workspace(tmp_path, {"steps": 8, "eval_every": 4, "log_every": 2, "checkpoint_every": 4,
                                               "median_of_last": 2, "batch": 8, "uratio": 2, "lr_schedule": "linear",
                                               "lr_end": 0.01, "sharpen_temperature": 0.5, "soft_pseudo_labels": True})
    metrics = train(params, Run("digits", 20, "fixmatch_ra", 1), root / "prepared/digits",
                    root / "splits/digits_20-1.json", root / "out", progress=False)
    assert metrics["steps"] == 8 and 0.0 <= metrics["error"] <= 100.0
    rows = (root / "out/curves/train/lr.tsv").read_text().splitlines()[1:]
    logged = {int(step): float(lr) for step, lr in (row.split("\t") for row in rows)}
    assert logged == pytest.approx({step: linear_lr(0.03, 0.01, step - 1, 8) for step in (2, 4, 6, 8)})
