"""The paper's baselines (Π-Model, Pseudo-Labeling, Mean Teacher, UDA) against the official formulas
computed by hand in NumPy (docs/baselines_official.md §2-§4, §6): a tiny network with BatchNorm,
so that which pass normalises with which batch, and which pass updates the running statistics,
shows in the numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fixmatch_bench.methods.base import Batch, RunContext
from fixmatch_bench.methods.mean_teacher import MeanTeacher
from fixmatch_bench.methods.common import WarmedUpParams
from fixmatch_bench.methods.pi_model import PiModel
from fixmatch_bench.methods.pseudo_labeling import PseudoLabeling, PseudoLabelingParams
from fixmatch_bench.methods.uda import UDA, UDAParams

CLASSES, FEATURES, EPS, MOMENTUM = 3, 4, 1e-5, 0.1
STEPS, BATCH = 100, 2


class Tiny(nn.Module):
    """Linear, then BatchNorm over the classes: logits = BN(x W^T + b)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(FEATURES, CLASSES).double()
        self.norm = nn.BatchNorm1d(CLASSES, eps=EPS, momentum=MOMENTUM).double()
        with torch.no_grad():
            self.norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            self.norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x.flatten(1)))


def _np_logits(model: Tiny, x: torch.Tensor) -> np.ndarray:
    """The training-mode forward by hand: batch statistics, biased variance."""
    w, b = model.linear.weight.detach().numpy(), model.linear.bias.detach().numpy()
    z = x.numpy().reshape(len(x), -1) @ w.T + b
    mean, var = z.mean(0), z.var(0)
    return (z - mean) / np.sqrt(var + EPS) * model.norm.weight.detach().numpy() + model.norm.bias.detach().numpy()


def _np_running_mean(model: Tiny, x: torch.Tensor, before: np.ndarray) -> np.ndarray:
    z = x.numpy().reshape(len(x), -1) @ model.linear.weight.detach().numpy().T + model.linear.bias.detach().numpy()
    return (1 - MOMENTUM) * before + MOMENTUM * z.mean(0)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    return np.log(_softmax(z))


def _ce(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return -_log_softmax(z)[np.arange(len(z)), labels]


def _images(seed: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 1, 2, 2)))


def _batch(views: int, n_u: int = 4) -> Batch:
    return Batch(labeled=_images(1, BATCH), targets=torch.tensor([0, 2]),
                 unlabeled=tuple(_images(10 + v, n_u) for v in range(views)))


def _context() -> RunContext:
    return RunContext(num_classes=CLASSES, class_distribution=torch.ones(CLASSES) / CLASSES, steps=STEPS,
                      batch=BATCH, seed=0, weak_no_grad=False)


def _at_step(state: nn.Module, step: int) -> nn.Module:
    state.step.fill_(step)
    return state


PI = WarmedUpParams(impl="pi_model", uratio=1, consistency_weight=10.0, warmup_pos=0.4)


@pytest.mark.parametrize("step, ramp", [(0, 0.0), (20, 0.5), (40, 1.0), (90, 1.0)])
def test_pi_model_is_the_labeled_cross_entropy_plus_the_ramped_softmax_mse_of_two_weak_views(step, ramp):
    model, batch = Tiny(), _batch(views=2)
    before = model.norm.running_mean.detach().numpy().copy()
    expected_running = _np_running_mean(model, batch.labeled, before)
    method = PiModel("pi_model", PI)
    loss, logs = method.loss(model, batch, None, _at_step(method.build_state(_context()), step))
    loss_x = _ce(_np_logits(model, batch.labeled), batch.targets.numpy()).mean()
    teacher, student = (_softmax(_np_logits(model, view)) for view in batch.unlabeled)
    loss_u = ((teacher - student) ** 2).mean(1).mean()  # mean over classes, then images
    assert float(logs["loss_x"]) == pytest.approx(loss_x, rel=1e-9)
    assert float(logs["loss_u"]) == pytest.approx(loss_u, rel=1e-9)
    assert float(loss.detach()) == pytest.approx(loss_x + ramp * 10.0 * loss_u, rel=1e-9)
    # only the labeled pass updated the running statistics
    np.testing.assert_allclose(model.norm.running_mean.detach().numpy(), expected_running, rtol=1e-12)
    assert method.views == ("weak", "weak") and method.uratio(None) == 1


def test_pi_model_teaches_view_one_towards_view_zero_under_a_stop_gradient():
    model, batch = Tiny(), _batch(views=2)
    method = PiModel("pi_model", PI)
    state = _at_step(method.build_state(_context()), STEPS)
    loss, _ = method.loss(model, batch, None, state)
    loss.backward()
    got = model.linear.weight.grad.clone()
    # by hand: the same loss with the teacher's softmax as a constant
    reference, teacher = Tiny(), None
    with torch.no_grad():
        teacher = reference(batch.unlabeled[0]).softmax(1)
    reference.zero_grad()
    logits_x, student = reference(batch.labeled), reference(batch.unlabeled[1])
    total = nn.functional.cross_entropy(logits_x, batch.targets) + 10.0 * ((teacher - student.softmax(1)) ** 2).mean()
    total.backward()
    torch.testing.assert_close(got, reference.linear.weight.grad, rtol=1e-10, atol=1e-12)


def test_mean_teacher_takes_the_target_from_the_ema_weights_in_training_mode_and_updates_no_statistics():
    model, teacher_model, batch = Tiny(seed=0), Tiny(seed=1).eval(), _batch(views=2)
    teacher_before = copy.deepcopy(teacher_model.state_dict())
    method = MeanTeacher("mean_teacher", PI.model_copy(update={"impl": "mean_teacher", "consistency_weight": 50.0}))
    loss, logs = method.loss(model, batch, teacher_model, _at_step(method.build_state(_context()), 20))
    teacher = _softmax(_np_logits(teacher_model, batch.unlabeled[0]))  # batch statistics: training mode
    student = _softmax(_np_logits(model, batch.unlabeled[1]))
    loss_x = _ce(_np_logits(model, batch.labeled), batch.targets.numpy()).mean()
    loss_u = ((teacher - student) ** 2).mean(1).mean()
    assert float(logs["loss_u"]) == pytest.approx(loss_u, rel=1e-9)
    assert float(loss.detach()) == pytest.approx(loss_x + 0.5 * 50.0 * loss_u, rel=1e-9)
    assert not teacher_model.training  # back in eval mode for evaluation and probes
    for name, value in teacher_model.state_dict().items():
        torch.testing.assert_close(value, teacher_before[name], rtol=0, atol=0)
    assert method.needs_teacher


PL = PseudoLabelingParams(impl="pseudo_labeling", uratio=1, consistency_weight=1.0, threshold=0.5, warmup_pos=0.4)


def test_pseudo_labeling_trains_the_argmax_of_its_own_logits_where_max_p_is_strictly_above_the_threshold():
    model, batch = Tiny(), _batch(views=1, n_u=6)
    logits = _np_logits(model, batch.unlabeled[0])
    probabilities = _softmax(logits)
    # the threshold at one image's own max probability (as float32 computes it): strict > leaves it out
    with torch.no_grad():
        confidence = model(batch.unlabeled[0]).softmax(1).max(1).values
    threshold = float(confidence[2])
    method = PseudoLabeling("pseudo_labeling", PL.model_copy(update={"threshold": threshold}))
    model = Tiny()  # the statistics the forward above updated do not matter: same weights
    loss, logs = method.loss(model, batch, None, _at_step(method.build_state(_context()), 40))
    mask = (probabilities.max(1) > threshold).astype(float)
    assert mask[2] == 0.0
    loss_u = (_ce(logits, logits.argmax(1)) * mask).mean()  # over all images, not the confident ones
    loss_x = _ce(_np_logits(model, batch.labeled), batch.targets.numpy()).mean()
    assert float(logs["mask_rate"]) == pytest.approx(mask.mean())
    assert float(logs["loss_u"]) == pytest.approx(loss_u, rel=1e-9)
    assert float(loss.detach()) == pytest.approx(loss_x + 1.0 * loss_u, rel=1e-9)


UDA_PARAMS = UDAParams(impl="uda", strong="randaugment", threshold=0.95, temperature=0.5, unlabeled_weight=1.0,
                       entropy_weight=0.3)


def test_uda_is_the_masked_kl_of_the_strong_view_to_the_tempered_weak_view_in_one_pass():
    model, batch = Tiny(), _batch(views=2, n_u=5)
    everything = torch.cat([batch.labeled, *batch.unlabeled])
    logits = _np_logits(model, everything)  # one pass: BatchNorm over all 12 images
    logits_x, weak, strong = logits[:2], logits[2:7], logits[7:]
    confidence = np.sort(_softmax(weak).max(1))
    threshold = float((confidence[2] + confidence[3]) / 2)  # between two images: some masked, some not
    method = UDA("uda", UDA_PARAMS.model_copy(update={"threshold": threshold}))
    loss, logs = method.loss(model, batch, None, None)
    target = weak / 0.5
    mask = (_softmax(weak).max(1) >= threshold).astype(float)  # the unsharpened softmax, >=
    kl = (_softmax(target) * (_log_softmax(target) - _log_softmax(strong))).sum(1)
    entropy = -(_softmax(weak) * _log_softmax(weak)).sum(1).mean()
    loss_x = _ce(logits_x, batch.targets.numpy()).mean()
    assert 0 < mask.sum() < len(mask)
    assert float(logs["loss_u"]) == pytest.approx((kl * mask).mean(), rel=1e-9)
    assert float(loss.detach()) == pytest.approx(loss_x + (kl * mask).mean() + 0.3 * entropy, rel=1e-9)
    assert method.views == ("weak", "strong") and method.strong == "randaugment"
