"""The official ablation scripts' variants as params (ablation/ab_fixmatch_*.py): each one's loss or
learning rate against a value computed by hand, invalid combinations refused, and a real run."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import digits_workspace
from fixmatch_bench.core.errors import ParamsError
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import Run
from fixmatch_bench.augment.augmenter import make_augmenter
from fixmatch_bench.augment.ctaugment import CTA_FILL
from fixmatch_bench.methods.base import Batch
from fixmatch_bench.methods.fixmatch import FixMatchParams, fixmatch_loss
from fixmatch_bench.methods.registry import check_methods, run_method
from fixmatch_bench.train.optim import TFAdam, build_optimizer, linear_lr, scheduled_lr, set_lr
from fixmatch_bench.core.compiled import static_compile
from fixmatch_bench.train.step import StepPlan, draw_batch
from fixmatch_bench.train.trainer import train

# One labeled image, two unlabeled ones, three classes: the "network" returns these logits for the
# concatenated [labeled, weak, strong] batch.
LOGITS_X, WEAK, STRONG = [2.0, 0.0, 0.0], [[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [1.0, 0.0, 3.0]]
THRESHOLD = 0.7  # softmax(WEAK[0]) peaks at 0.576 (below), at T = 0.5 at 0.787 (above); WEAK[1] at 0.909


class FixedLogits(nn.Module):
    def __init__(self, rows: list | None = None) -> None:
        super().__init__()
        self.rows, self.seen = rows, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return torch.tensor(self.rows or [LOGITS_X, *WEAK, *STRONG])


def _params(**variant) -> FixMatchParams:
    """The FixMatch block at tau = THRESHOLD, lambda_u = 1, with a variant's changes."""
    protocol = FixMatchParams(impl="fixmatch", strong="randaugment", threshold=THRESHOLD, unlabeled_weight=1.0,
                              temperature=1.0, soft_targets=False, pseudo_labels_from="model",
                              anchoring="weak.strong", distribution_alignment=False)
    return protocol.model_copy(update=variant)


def _batch() -> Batch:
    return Batch(labeled=torch.zeros(1, 1), targets=torch.tensor([0]), unlabeled=(torch.zeros(2, 1), torch.zeros(2, 1)))


def _loss_u(**variant) -> tuple[float, float]:
    _, logs = fixmatch_loss(FixedLogits(), _batch(), _params(**variant))
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


def test_mean_teacher_takes_pseudo_labels_and_mask_from_the_teacher_while_the_weak_view_stays_in_the_pass():
    """ab_fixmatch_meanteacher.py: pseudo-labels from the EMA model (eval mode) on the weak view; the
    training pass still holds labeled + weak + strong images, so BatchNorm sees the same batch."""
    teacher_weak = [[0.0, 0.0, 4.0], [0.0, 0.0, 0.0]]  # confident in class 2 (0.965), then uniform (masked)
    student, teacher = FixedLogits(), FixedLogits(teacher_weak)
    _, logs = fixmatch_loss(student, _batch(), _params(), teacher=teacher)
    assert student.seen == [5] and teacher.seen == [2]
    assert float(logs["mask_rate"]) == 0.5
    assert float(logs["loss_u"]) == pytest.approx(_cross_entropy(STRONG[0], [0.0, 0.0, 1.0]) / 2, rel=1e-6)


def test_adam_is_tensorflows_with_l2_in_the_gradient_and_eps_on_the_uncorrected_root():
    """ab_fixmatch_adam.py: tf.train.AdamOptimizer(lr, b1, b2) on loss + wd * ||w||^2 / 2, two steps by hand."""
    lr, b1, b2, wd, gradients = 0.002, 0.9, 0.999, 0.1, [0.2, -0.05]
    weight = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = TFAdam([{"params": [weight], "weight_decay": wd}], lr, b1, b2)
    w, m, v = 1.0, 0.0, 0.0
    for t, g in enumerate(gradients, start=1):
        weight.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        g = g + wd * w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w -= lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (math.sqrt(v) + 1e-8)
        assert float(weight.detach()) == pytest.approx(w, abs=1e-15)
    assert TFAdam([weight], lr, b1, 0.0).defaults["eps"] == 1e-4  # the script's epsilon when beta2 = 0


def test_compiled_adam_follows_eager_adam_without_recompiling_as_the_step_count_grows():
    """Under ``compile: step`` the update is compiled with the learning rate in a device tensor; the step
    count and the bias correction are tensors too, so one graph serves every step."""
    torch.compiler.reset()
    eager, compiled = (nn.Linear(4, 3) for _ in range(2))
    compiled.load_state_dict(eager.state_dict())
    optimizers = [build_optimizer(model, "adam", 0.002, 5e-4, momentum=0.9, nesterov=True, beta1=0.9, beta2=0.999)
                  for model in (eager, compiled)]
    step = static_compile(optimizers[1].step)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in range(1, 6):
            for model, optimizer in zip((eager, compiled), optimizers):
                set_lr(optimizer, 0.002 * t, as_tensor=optimizer is optimizers[1])
                gradient = torch.Generator().manual_seed(t)
                for parameter in model.parameters():
                    parameter.grad = torch.randn(parameter.shape, generator=gradient)
            optimizers[0].step()
            step()
            for a, b in zip(eager.parameters(), compiled.parameters()):
                assert torch.allclose(a, b, rtol=0, atol=1e-7)
    assert float(optimizers[1].state[compiled.weight]["t"]) == 5.0


@pytest.mark.parametrize("momentum, nesterov", [(0.9, True), (0.9, False), (0.5, True), (0.0, False)])
def test_momentum_and_nesterov_follow_tensorflows_momentum_optimizer(momentum, nesterov):
    """ab_fixmatch_momentum.py: tf.train.MomentumOptimizer(lr, momentum, use_nesterov) on loss + wd * ||w||^2 / 2:
    accum = momentum * accum + g; w -= lr * (g + momentum * accum) with Nesterov, lr * accum without."""
    lr, wd, gradients = 0.03, 0.1, [0.2, -0.05, 0.3]
    model = nn.Linear(1, 1, bias=False).double()
    model.weight.data.fill_(1.0)
    optimizer = build_optimizer(model, "sgd", lr, wd, momentum=momentum, nesterov=nesterov, beta1=0.9, beta2=0.999)
    w, accum = 1.0, 0.0
    for g in gradients:
        model.weight.grad = torch.full_like(model.weight, g)
        optimizer.step()
        g = g + wd * w
        accum = momentum * accum + g
        w -= lr * (g + momentum * accum if nesterov else accum)
        assert float(model.weight.detach()) == pytest.approx(w, abs=1e-15)


def test_the_optimizer_param_builds_adam_with_the_scripts_betas_and_decays_kernels_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    adam = build_optimizer(model, "adam", 0.002, 5e-4, momentum=0.9, nesterov=True, beta1=0.8, beta2=0.99)
    assert isinstance(adam, TFAdam) and [g["weight_decay"] for g in adam.param_groups] == [5e-4, 0.0]
    assert (adam.defaults["beta1"], adam.defaults["beta2"]) == (0.8, 0.99)
    sgd = build_optimizer(model, "sgd", 0.03, 5e-4, momentum=0.9, nesterov=True, beta1=0.8, beta2=0.99)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]


def _views(strong: str, branch: str, seed: int = 3):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    kwargs = {"cutout": 16, "strong": strong}
    full, variant = make_augmenter(**kwargs), make_augmenter(**kwargs, strong_branch=branch)
    return (full.strong(images, torch.Generator().manual_seed(seed)),
            variant.strong(images, torch.Generator().manual_seed(seed)),
            make_augmenter(**kwargs).weak(images, torch.Generator().manual_seed(seed)))


def _changed_box(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """Height and width of the box around the pixels where two images differ."""
    rows, cols = torch.nonzero((a != b).any(dim=0), as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("strong", ["ctaugment", "randaugment"])
def test_no_cutout_is_the_policy_without_its_cutout(strong):
    """ab_fixmatch_nocutout.py: the same policy draws, then no cutout: the full view differs from it
    only inside one cutout square of at most 16 px."""
    full, no_cutout, _ = _views(strong, "no_cutout")
    for a, b in zip(full, no_cutout):
        height, width = _changed_box(a, b)
        assert height <= 16 and width <= 16


@pytest.mark.parametrize("strong, fill", [("ctaugment", CTA_FILL.cutout), ("randaugment", 128)])
def test_only_cutout_is_a_weak_view_with_the_policys_cutout_alone(strong, fill):
    """ab_fixmatch_onlycutout.py: no policy; the strong view is an independent weak view with the
    policy's cutout (its size and its fill) and nothing else."""
    _, only_cutout, weak = _views(strong, "only_cutout")
    for a, b in zip(only_cutout, weak):
        changed = (a != b).any(dim=0)
        height, width = _changed_box(a, b)
        assert height <= 16 and width <= 16
        assert (a[:, changed] == fill).all()


class MarkingAugmenter:
    """Weak views filled with 10, strong views with 200, to see which view lands where."""

    def weak(self, images, generator, share=slice(None)):
        return torch.full_like(images[share], 10)

    def strong(self, images, generator, share=slice(None)):
        return torch.full_like(images[share], 200)


@pytest.mark.parametrize("anchoring", ["weak.strong", "weak.weak", "strong.weak", "strong.strong"])
def test_anchoring_chooses_the_pseudo_label_view_and_the_trained_view(params, anchoring):
    """ab_fixmatch_anchoring.py --anchoring <pseudo-label view>.<trained view>; the labeled view stays weak."""
    changed = copy.deepcopy(params)
    changed["methods"]["fixmatch_cta"]["anchoring"] = anchoring
    typed = validate_params(changed)
    plan = StepPlan.build(typed, run_method(typed, Run("digits", 20, "fixmatch_cta", 1).method))
    stream = SimpleNamespace(next=lambda: torch.tensor([0, 1]))
    state = SimpleNamespace(labeled_stream=stream, unlabeled_stream=stream, augmenter=MarkingAugmenter(),
                            augment_generator=None)
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    data = SimpleNamespace(labeled_images=images, labeled_targets=torch.tensor([0, 1]), unlabeled_images=images,
                           unlabeled_targets=torch.tensor([0, 1]))
    batch = draw_batch(state, data, plan).batch
    level = {"weak": 10 * 2 / 255 - 1, "strong": 200 * 2 / 255 - 1}
    pseudo, trained = anchoring.split(".")
    assert batch.labeled.unique().tolist() == pytest.approx([level["weak"]])
    pseudo_label_view, trained_view = batch.unlabeled
    assert pseudo_label_view.unique().tolist() == pytest.approx([level[pseudo]])
    assert trained_view.unique().tolist() == pytest.approx([level[trained]])


def test_linear_decay_goes_from_lr_to_lr_end_and_stays_there():
    """ab_fixmatch_linearlr.py: lr + (lr_end - lr) * clip(k / K, 0, 1)."""
    assert [linear_lr(0.03, 0.02, step, 100) for step in (0, 50, 100, 150)] == pytest.approx([0.03, 0.025, 0.02, 0.02])
    assert scheduled_lr("linear", 0.03, 0.02, 50, 100) == pytest.approx(0.025)
    assert scheduled_lr("cosine", 0.03, 0.0, 50, 100) == pytest.approx(0.03 * math.cos(7 * math.pi * 0.5 / 16))


def _update(params: dict, changes: dict) -> None:
    """``params`` with ``changes`` ({dotted block: {key: value}}) in place."""
    for dotted, values in changes.items():
        block = params
        for part in dotted.split("."):
            block = block[part]
        block.update(values)


@pytest.mark.parametrize("changes, message", [
    ({"train": {"lr_schedule": "linear"}},
     "invalid params: train.lr_end = None (a number with lr_schedule: linear, null with linear)"),
    ({"train": {"lr_end": 0.02}},
     "invalid params: train.lr_end = 0.02 (a number with lr_schedule: linear, null with cosine)"),
    ({"methods.fixmatch_ra": {"temperature": 0.0}},
     "invalid params: methods.fixmatch_ra.temperature = 0.0 (must be a number in (0.0, inf))"),
    ({"train": {"lr_schedule": "step"}}, "invalid params: train.lr_schedule = 'step' (allowed: cosine, linear)"),
    ({"train": {"momentum": 0.0}},
     "invalid params: train.nesterov = True (Nesterov momentum needs train.momentum > 0)"),
    ({"train": {"optimizer": "adamw"}}, "invalid params: train.optimizer = 'adamw' (allowed: sgd, adam)"),
    ({"train": {"adam_beta2": 1.0}}, "invalid params: train.adam_beta2 = 1.0 (must be a number in [0.0, 1.0))"),
    ({"methods.fixmatch_ra": {"pseudo_labels_from": "teacher"}},
     "invalid params: methods.fixmatch_ra.pseudo_labels_from = 'teacher' (allowed: model, ema)"),
])
def test_invalid_variants_are_refused_in_one_line(params, changes, message):
    changed = copy.deepcopy(params)
    _update(changed, changes)
    with pytest.raises(ParamsError) as error:
        check_methods(validate_params(changed))
    assert str(error.value) == message


@pytest.mark.parametrize("changes, speed, message", [
    ({"train": {"optimizer": "adam"}}, {"optimizer_impl": "fused"}, "invalid params: speed.optimizer_impl = 'fused' "
     "(selects SGD's implementation; train.optimizer = adam has one implementation: use foreach)"),
    ({"methods.fixmatch_ra": {"pseudo_labels_from": "ema"}}, {"compile": "step"}, "invalid params: "
     "methods.fixmatch_ra.pseudo_labels_from = 'ema' (not supported with speed.compile = step (use model or none))"),
])
def test_variants_with_speed_options_they_do_not_support_are_refused(params, changes, speed, message):
    changed = copy.deepcopy(params)
    _update(changed, changes)
    changed["speed"].update(speed)
    with pytest.raises(ParamsError) as error:
        check_methods(validate_params(changed))
    assert str(error.value) == message


def test_sharpening_with_distribution_alignment_is_refused(params):
    changed = copy.deepcopy(params)
    changed["methods"]["fixmatch_cta_da"]["temperature"] = 0.5
    changed["cell_methods"] = {"fixmatch_cta_da": ["digits_20"]}
    with pytest.raises(ParamsError, match=r"methods.fixmatch_cta_da.temperature = 0.5 \(the sharpening ablations "
                                          r"are not defined with distribution alignment"):
        check_methods(validate_params(changed))


def test_a_run_trains_with_the_variants_and_logs_the_linear_schedule(tmp_path):
    root, params = digits_workspace(tmp_path, {"steps": 8, "eval_every": 4, "log_every": 2, "checkpoint_every": 4,
                                               "median_of_last": 2, "batch": 8, "uratio": 2, "lr_schedule": "linear",
                                               "lr_end": 0.01})
    params["methods"]["fixmatch_ra"].update({"temperature": 0.5, "soft_targets": True})
    metrics = train(params, Run("digits", 20, "fixmatch_ra", 1), root / "prepared/digits",
                    root / "splits/digits_20-1.json", root / "out", progress=False)
    assert metrics["steps"] == 8 and 0.0 <= metrics["error"] <= 100.0
    rows = (root / "out/curves/train/lr.tsv").read_text().splitlines()[1:]
    logged = {int(step): float(lr) for step, lr in (row.split("\t") for row in rows)}
    assert logged == pytest.approx({step: linear_lr(0.03, 0.01, step - 1, 8) for step in (2, 4, 6, 8)})


@pytest.mark.parametrize("method, changes", [
    ("fixmatch_cta", {"augment": {"strong_branch": "only_cutout"}}),
    ("fixmatch_ra", {"augment": {"strong_branch": "no_cutout"}, "methods.fixmatch_ra": {"anchoring": "strong.weak"}}),
    ("fixmatch_cta", {"methods.fixmatch_cta": {"pseudo_labels_from": "ema"}, "train": {"optimizer": "adam", "lr": 0.002}}),
])
def test_a_run_trains_with_the_augmentation_teacher_and_optimizer_variants(tmp_path, method, changes):
    root, params = digits_workspace(tmp_path, {"steps": 6, "eval_every": 3, "log_every": 3, "checkpoint_every": 3,
                                               "median_of_last": 2, "batch": 8, "uratio": 2})
    _update(params, changes)
    metrics = train(params, Run("digits", 20, method, 1), root / "prepared/digits", root / "splits/digits_20-1.json",
                    root / "out", progress=False)
    assert metrics["steps"] == 6 and 0.0 <= metrics["error"] <= 100.0
