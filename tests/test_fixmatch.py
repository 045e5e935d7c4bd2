import math

import pytest
import torch
from torch import nn

from fixmatch_bench.methods.base import Batch
from fixmatch_bench.methods.fixmatch import FixMatch, FixMatchParams, FixMatchState, fixmatch_loss
from fixmatch_bench.methods.supervised import supervised_loss


class Logits(nn.Module):
    """A 'network' whose output is its input, so the test chooses the logits."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def _params(threshold: float, unlabeled_weight: float) -> FixMatchParams:
    """The protocol's FixMatch block with the given tau and lambda_u."""
    return FixMatchParams(impl="fixmatch", strong="randaugment", threshold=threshold,
                          unlabeled_weight=unlabeled_weight, temperature=1.0, soft_targets=False,
                          pseudo_labels_from="model", anchoring="weak.strong", distribution_alignment=False)


def _ce(logits, target):
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_loss_mask_and_division_by_all_unlabeled_images():
    labeled = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    weak = torch.tensor([[4.0, 0.0], [0.0, 0.5], [0.0, 3.0]])   # confidences 0.982, 0.622, 0.953
    strong = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    model = Logits()
    loss, logs = fixmatch_loss(model, Batch(labeled, targets, (weak, strong), torch.tensor([0, 1, 0])),
                               _params(threshold=0.95, unlabeled_weight=2.0))
    assert model.calls == 1  # one concatenated forward pass
    loss_x = (_ce([2.0, 0.0], 0) + _ce([0.0, 1.0], 0)) / 2
    # pseudo-labels 0, 1, 1; mask 1, 0, 1; divided by all 3 unlabeled images.
    loss_u = (_ce([1.0, 1.0], 0) + _ce([3.0, 0.0], 1)) / 3
    assert float(logs["loss_x"]) == pytest.approx(loss_x)
    assert float(logs["loss_u"]) == pytest.approx(loss_u)
    assert float(loss) == pytest.approx(loss_x + 2.0 * loss_u)
    assert float(logs["mask_rate"]) == pytest.approx(2 / 3)
    # Confident pseudo-labels 0 (true 0, right) and 1 (true 0, wrong).
    assert float(logs["pseudo_label_correct"]) == 1 and float(logs["pseudo_label_count"]) == 2


def test_threshold_is_inclusive():
    weak = torch.tensor([[math.log(3.0), 0.0]])  # softmax max = 0.75 exactly
    batch = Batch(torch.zeros(1, 2), torch.tensor([0]), (weak, torch.zeros(1, 2)))
    _, logs = fixmatch_loss(Logits(), batch, _params(threshold=0.75, unlabeled_weight=1.0))
    assert float(logs["mask_rate"]) == 1.0


def test_no_gradient_flows_through_the_pseudo_label():
    weak = torch.tensor([[3.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 1.0]], requires_grad=True)
    batch = Batch(torch.zeros(1, 2), torch.tensor([0]), (weak, strong))
    loss, _ = fixmatch_loss(Logits(), batch, _params(threshold=0.5, unlabeled_weight=1.0))
    loss.backward()
    assert weak.grad is None or torch.all(weak.grad == 0)
    assert torch.any(strong.grad != 0)


def test_alignment_changes_pseudo_label_and_mask_and_logs_unaligned_probs():
    weak = torch.tensor([[1.0, 0.0]])
    batch = Batch(torch.zeros(1, 2), torch.tensor([0]), (weak, torch.zeros(1, 2)))
    flip = lambda probs: probs.flip(1)  # noqa: E731 - a deliberately extreme "alignment"
    _, plain = fixmatch_loss(Logits(), batch, _params(threshold=0.7, unlabeled_weight=1.0))
    _, aligned = fixmatch_loss(Logits(), batch, _params(threshold=0.7, unlabeled_weight=1.0), align=lambda p: p)
    assert float(plain["mask_rate"]) == float(aligned["mask_rate"]) == 1.0
    _, flipped = fixmatch_loss(Logits(), Batch(torch.zeros(1, 2), torch.tensor([0]), (weak, torch.zeros(1, 2)),
                                               torch.tensor([0])), _params(threshold=0.7, unlabeled_weight=1.0),
                               align=flip)
    assert float(flipped["pseudo_label_correct"]) == 0  # the pseudo-label came from the aligned distribution
    assert torch.allclose(flipped["weak_probs"], torch.softmax(weak, 1))


def test_supervised_only_is_the_labeled_cross_entropy():
    model = Logits()
    batch = Batch(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    loss, logs = supervised_loss(model, batch)
    assert float(loss) == pytest.approx(_ce([0.0, 1.0], 1)) and "mask_rate" not in logs
    # FixMatch without an unlabeled batch (train.uratio = 0, an ablation) trains on the same loss.
    fixmatch = FixMatch("fixmatch_ra", _params(threshold=0.95, unlabeled_weight=1.0))
    loss, logs = fixmatch.loss(model, batch, None, FixMatchState(None, weak_no_grad=False))
    assert float(loss) == pytest.approx(_ce([0.0, 1.0], 1)) and "mask_rate" not in logs
