"""MixMatch (official ``mixmatch.py``; docs/baselines_official.md §5) and its MixUp and interleave
(``libml/layers.py``) against the official formulas computed by hand in NumPy and plain Python,
on a tiny network with BatchNorm, so that which pass normalises with which batch, and which pass
updates the running statistics, shows in the numbers; then a real run on the digits data."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from fixmatch_bench.methods.base import Batch, RunContext
from fixmatch_bench.methods.mixmatch import MixMatch, MixMatchParams, MixMatchState
from fixmatch_bench.methods.mixup import (MixUpGenerator, interleave, interleave_offsets, interleaved_logits, mixup,
                                          sample_beta)

REPO = Path(__file__).resolve().parents[1]
CLASSES, EPS, MOMENTUM = 3, 1e-5, 0.1
N, NU = 5, 2  # labeled images = unlabeled images per view (uratio 1): interleave groups [1, 2, 2]
CONTEXT_BATCH = 64  # train.batch the ramp counts images with
WARMUP_KIMG = 1  # 1024 images: a 16-step ramp at B = 64
PARAMS = MixMatchParams(impl="mixmatch", uratio=1, nu=NU, temperature=0.5, beta=0.5, w_match=100.0,
                        warmup_kimg=WARMUP_KIMG)


class Tiny(nn.Module):
    """Linear on the flattened 2x2 image, then BatchNorm over the classes: logits = BN(x W^T + b)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(4, CLASSES).double()
        self.norm = nn.BatchNorm1d(CLASSES, eps=EPS, momentum=MOMENTUM).double()
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(CLASSES, 4, generator=generator, dtype=torch.float64))
            self.linear.bias.copy_(torch.randn(CLASSES, generator=generator, dtype=torch.float64))
            self.norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            self.norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
            self.norm.running_mean.copy_(torch.tensor([0.3, -0.1, 0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x.flatten(1)))


# --- the official formulas, by hand -------------------------------------------------------------------

def _np_features(model: Tiny, x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1) @ model.linear.weight.detach().numpy().T + model.linear.bias.detach().numpy()


def _np_logits(model: Tiny, x: np.ndarray) -> np.ndarray:
    """A training-mode pass: BatchNorm with this batch's statistics (biased variance)."""
    z = _np_features(model, x)
    mean, var = z.mean(0), z.var(0)
    return (z - mean) / np.sqrt(var + EPS) * model.norm.weight.detach().numpy() + model.norm.bias.detach().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _official_offsets(batch: int, nu: int) -> list[int]:
    """``libml/layers.py`` ``interleave_offsets``, transcribed."""
    groups = [batch // (nu + 1)] * (nu + 1)
    for x in range(batch - sum(groups)):
        groups[-x - 1] += 1
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + g)
    return offsets


def _np_interleave(xy: list, batch: int) -> list:
    """``libml/layers.py`` ``interleave``, on NumPy arrays."""
    nu = len(xy) - 1
    offsets = _official_offsets(batch, nu)
    xy = [[v[offsets[p]:offsets[p + 1]] for p in range(nu + 1)] for v in xy]
    for i in range(1, nu + 1):
        xy[0][i], xy[i][i] = xy[i][i], xy[0][i]
    return [np.concatenate(v, axis=0) for v in xy]


def _draws(seed: int, n: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """λ (before max(λ, 1 − λ)) and the permutation a generator seeded with ``seed`` gives: Beta(β, β) as
    X / (X + Y) of two Gamma(β) draws (X first), then ``randperm``."""
    generator = torch.Generator().manual_seed(seed)
    concentration = torch.full((n,), beta, dtype=torch.float64)
    x = torch._standard_gamma(concentration, generator=generator).numpy()
    y = torch._standard_gamma(concentration, generator=generator).numpy()
    return x / (x + y), torch.randperm(n, generator=generator).numpy()


def _np_mixmatch(model: Tiny, batch: Batch, seed: int, ramp: float, p: MixMatchParams = PARAMS) -> dict:
    """``MixMatch.model``'s loss by hand; the MixUp draws from a generator seeded with ``seed``."""
    x, targets = batch.labeled.numpy(), batch.targets.numpy()
    views = [view.numpy() for view in batch.unlabeled]
    n = len(x)
    # guess_label: one training-mode pass per view, softmax averaged over views, sharpened
    p_model = np.mean([_softmax(_np_logits(model, view)) for view in views], axis=0)
    p_target = p_model ** (1 / p.temperature)
    p_target /= p_target.sum(1, keepdims=True)
    lx = np.eye(CLASSES)[targets]
    # MixMode('xxy.yxy'): one permutation over the concatenation, per-image max(λ, 1 − λ)
    images, labels = np.concatenate([x, *views]), np.concatenate([lx] + [p_target] * len(views))
    lam, index = _draws(seed, len(images), p.beta)
    mix = np.maximum(lam, 1 - lam)
    mixed = images * mix[:, None, None, None] + images[index] * (1 - mix[:, None, None, None])
    mixed_labels = labels * mix[:, None] + labels[index] * (1 - mix[:, None])
    parts = np.split(mixed, len(views) + 1)
    # interleave, one training-mode pass per batch, de-interleave
    batches = _np_interleave(parts, n)
    logits = _np_interleave([_np_logits(model, b) for b in batches], n)
    logits_x, logits_y = logits[0], np.concatenate(logits[1:])
    labels_x, labels_y = mixed_labels[:n], mixed_labels[n:]
    loss_xe = -(labels_x * np.log(_softmax(logits_x))).sum(1).mean()
    loss_l2u = ((labels_y - _softmax(logits_y)) ** 2).mean()  # over unlabeled images and classes
    return {"loss_x": loss_xe, "loss_u": loss_l2u, "loss": loss_xe + p.w_match * ramp * loss_l2u,
            "batch0": batches[0], "mixed": mixed, "mixed_labels": mixed_labels, "guess": p_target}


# --- fixtures -------------------------------------------------------------------------------------------

def _images(seed: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, size=(n, 1, 2, 2)))


@pytest.fixture
def batch() -> Batch:
    return Batch(labeled=_images(1, N), targets=torch.tensor([0, 2, 1, 2, 0]),
                 unlabeled=tuple(_images(10 + v, N) for v in range(NU)))


@pytest.fixture
def method() -> MixMatch:
    return MixMatch("mixmatch", PARAMS)


def _state(method: MixMatch, step: int, seed: int = 0) -> MixMatchState:
    state = method.build_state(RunContext(num_classes=CLASSES, class_distribution=torch.ones(CLASSES) / CLASSES,
                                          steps=1000, batch=CONTEXT_BATCH, seed=seed, weak_no_grad=False))
    for _ in range(step):
        method.after_step(state, {})
    return state


# --- (1) interleave ---------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size, nu, offsets", [
    (64, 2, [0, 21, 42, 64]),  # MixMatch at B = 64 (docs/baselines_official.md §5)
    (10, 2, [0, 3, 6, 10]), (11, 2, [0, 3, 7, 11]), (5, 2, [0, 1, 3, 5]),  # remainders to the last groups
    (64, 9, [0, 6, 12, 18, 24, 30, 36, 43, 50, 57, 64]),  # ReMixMatch K = 8, nu = K + 1: groups [6 x 6, 7 x 4] (§7.5)
])
def test_interleave_offsets_are_the_official_ones(batch_size, nu, offsets):
    assert interleave_offsets(batch_size, nu) == offsets == _official_offsets(batch_size, nu)


@pytest.mark.parametrize("batch_size, nu", [(64, 2), (11, 2), (7, 3)])
def test_interleave_swaps_group_i_of_batch_0_with_group_i_of_batch_i_and_is_an_involution(batch_size, nu):
    xy = [torch.arange(batch_size) + 1000 * k for k in range(nu + 1)]  # the row says where it came from
    mixed = interleave(xy, batch_size)
    expected = _np_interleave([v.numpy() for v in xy], batch_size)
    for got, want in zip(mixed, expected):
        np.testing.assert_array_equal(got.numpy(), want)
    offsets = _official_offsets(batch_size, nu)
    # batch 0 takes group i from source i; batch i keeps its own rows except group i, which is labeled
    for i in range(nu + 1):
        group = slice(offsets[i], offsets[i + 1])
        assert torch.equal(mixed[0][group], xy[i][group])
        for k in range(1, nu + 1):
            assert torch.equal(mixed[k][group], xy[0][group] if i == k else xy[k][group])
    back = interleave(mixed, batch_size)
    assert all(torch.equal(a, b) for a, b in zip(back, xy))


# --- (2) MixUp -------------------------------------------------------------------------------------------

def test_mixup_mixes_images_and_labels_with_max_lambda_and_one_permutation_from_the_generator():
    n, seed, beta = 15, 7, 0.5
    images = _images(3, n)
    labels = torch.from_numpy(_softmax(np.random.default_rng(4).normal(size=(n, CLASSES))))
    global_before = torch.get_rng_state()
    mixed, mixed_labels = mixup(images, labels, beta, torch.Generator().manual_seed(seed))
    assert torch.equal(torch.get_rng_state(), global_before)  # the global generator is not used
    lam, index = _draws(seed, n, beta)
    mix = np.maximum(lam, 1 - lam)
    assert (mix >= 0.5).all() and sorted(index.tolist()) == list(range(n)) and (index != np.arange(n)).any()
    x, l = images.numpy(), labels.numpy()
    np.testing.assert_allclose(mixed.numpy(), mix[:, None, None, None] * x + (1 - mix[:, None, None, None]) * x[index],
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mixed_labels.numpy(), mix[:, None] * l + (1 - mix[:, None]) * l[index],
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mixed_labels.sum(1).numpy(), 1.0, rtol=1e-12)  # still distributions
    # the same seed, the same mix
    again, _ = mixup(images, labels, beta, torch.Generator().manual_seed(seed))
    assert torch.equal(again, mixed)


def test_beta_draws_follow_beta_beta_beta():
    """Beta(0.5, 0.5) is the arcsine law, F(x) = 2/π·arcsin(√x): a Kolmogorov-Smirnov distance by
    hand; Beta(0.75, 0.75) (cta_mixmatch.py) by its mean and variance 1/(4(2β + 1))."""
    n = 40000
    draws = np.sort(sample_beta(n, 0.5, torch.Generator().manual_seed(0), torch.float64).numpy())
    cdf = 2 / np.pi * np.arcsin(np.sqrt(draws))
    ks = max(np.abs(cdf - np.arange(1, n + 1) / n).max(), np.abs(cdf - np.arange(n) / n).max())
    assert ks < 1.63 / math.sqrt(n)  # the 1 % critical value
    draws = sample_beta(n, 0.75, torch.Generator().manual_seed(1), torch.float64).numpy()
    assert (draws > 0).all() and (draws < 1).all()
    assert draws.mean() == pytest.approx(0.5, abs=0.01) and draws.var() == pytest.approx(1 / (4 * 2.5), rel=0.03)


# --- (3) the whole loss -----------------------------------------------------------------------------------

@pytest.mark.parametrize("step, ramp", [(0, 0.0), (4, 0.25), (8, 0.5), (16, 1.0), (40, 1.0)])
def test_loss_is_the_official_mixmatch_loss_computed_by_hand(method, batch, step, ramp):
    model = Tiny()
    state = _state(method, step)
    seed = state.generator.initial_seed()
    expected = _np_mixmatch(model, batch, seed, ramp)
    loss, logs = method.loss(model, batch, None, state)
    assert set(logs) == {"loss", "loss_x", "loss_u"}
    assert float(logs["loss_x"]) == pytest.approx(expected["loss_x"], rel=1e-9)
    assert float(logs["loss_u"]) == pytest.approx(expected["loss_u"], rel=1e-9)
    assert float(loss.detach()) == pytest.approx(expected["loss"], rel=1e-9)
    assert expected["loss_u"] > 1e-3  # the unlabeled term is not vacuous here
    assert float(state.ramp()) == pytest.approx(ramp)


def test_views_uratio_and_ramp_length_follow_the_params(method):
    assert method.views == ("weak", "weak") and method.uratio(None) == 1 and method.strong == "none"
    assert MixMatch("m", PARAMS.model_copy(update={"nu": 4})).views == ("weak",) * 4
    assert _state(method, 0).ramp.length == WARMUP_KIMG * 1024 / CONTEXT_BATCH  # 16 steps at B = 64
    official = MixMatch("m", PARAMS.model_copy(update={"warmup_kimg": 1024}))
    assert _state(official, 0).ramp.length == 16384  # docs/baselines_official.md §5


def test_without_unlabeled_data_the_loss_is_the_labeled_cross_entropy(method, batch):
    model = Tiny()
    generator_before = _state(method, 0).generator.get_state()
    state = _state(method, 0)
    loss, logs = method.loss(model, Batch(batch.labeled, batch.targets), None, state)
    logits = _np_logits(Tiny(), batch.labeled.numpy())
    expected = -np.log(_softmax(logits))[np.arange(N), batch.targets.numpy()].mean()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-9) and set(logs) == {"loss", "loss_x"}
    assert torch.equal(state.generator.get_state(), generator_before)  # nothing drawn


# --- (4) BatchNorm running statistics -----------------------------------------------------------------

def test_only_interleaved_batch_0_updates_the_batchnorm_running_statistics(method, batch):
    model = Tiny()
    before_mean = model.norm.running_mean.detach().numpy().copy()
    before_var = model.norm.running_var.detach().numpy().copy()
    state = _state(method, 3)
    expected = _np_mixmatch(model, batch, state.generator.initial_seed(), 3 / 16)
    method.loss(model, batch, None, state)
    z = _np_features(model, expected["batch0"])
    np.testing.assert_allclose(model.norm.running_mean.detach().numpy(),
                               (1 - MOMENTUM) * before_mean + MOMENTUM * z.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.norm.running_var.detach().numpy(),
                               (1 - MOMENTUM) * before_var + MOMENTUM * z.var(0, ddof=1), rtol=1e-12, atol=1e-14)
    assert int(model.norm.num_batches_tracked) == 1  # one pass of the five counted
    assert model.norm.momentum == MOMENTUM


@pytest.mark.parametrize("bn_update", [0, -1])
def test_interleaved_logits_update_statistics_from_the_chosen_batch_only(bn_update):
    """ReMixMatch keeps the last interleaved batch's update (-1), MixMatch the first (0)."""
    model = Tiny()
    parts = [_images(20 + k, 6) for k in range(3)]
    before = model.norm.running_mean.detach().numpy().copy()
    logits = interleaved_logits(model, parts, 6, bn_update)
    batches = _np_interleave([p.numpy() for p in parts], 6)
    z = _np_features(model, batches[bn_update])
    np.testing.assert_allclose(model.norm.running_mean.detach().numpy(), (1 - MOMENTUM) * before + MOMENTUM * z.mean(0),
                               rtol=1e-12, atol=1e-14)
    expected = _np_interleave([_np_logits(model, b) for b in batches], 6)
    for got, want in zip(logits, expected):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


# --- (5) gradients ----------------------------------------------------------------------------------------

def _reference_gradient(batch: Batch, seed: int, ramp: float, guess_gradient: bool) -> torch.Tensor:
    """The linear layer's gradient of the loss written directly in torch, with the guess a constant
    (``guess_gradient`` False: the official stop-gradient) or differentiated through."""
    model = Tiny()
    with torch.set_grad_enabled(guess_gradient):
        p_model = torch.stack([model(view).softmax(1) for view in batch.unlabeled]).mean(0)
        guess = p_model ** 2 / (p_model ** 2).sum(1, keepdim=True)
    lam, index = (torch.from_numpy(a) for a in _draws(seed, N * (NU + 1), PARAMS.beta))
    mix = torch.maximum(lam, 1 - lam)
    images = torch.cat([batch.labeled, *batch.unlabeled])
    labels = torch.cat([nn.functional.one_hot(batch.targets, CLASSES).double(), guess, guess])
    mixed = images * mix[:, None, None, None] + images[index] * (1 - mix[:, None, None, None])
    mixed_labels = labels * mix[:, None] + labels[index] * (1 - mix[:, None])
    logits = interleave([model(b) for b in interleave(list(mixed.split(N)), N)], N)
    loss_x = -(mixed_labels[:N] * logits[0].log_softmax(1)).sum(1).mean()
    loss_u = ((mixed_labels[N:] - torch.cat(logits[1:]).softmax(1)) ** 2).mean()
    (loss_x + PARAMS.w_match * ramp * loss_u).backward()
    return model.linear.weight.grad


def test_the_gradient_flows_through_the_unlabeled_term_but_not_through_the_guessed_labels(method, batch):
    def gradient(step: int) -> torch.Tensor:
        model, state = Tiny(), _state(method, step)
        loss, _ = method.loss(model, batch, None, state)
        loss.backward()
        return model.linear.weight.grad

    seed = _state(method, 0).generator.initial_seed()
    at_full_ramp, at_zero_ramp = gradient(16), gradient(0)
    torch.testing.assert_close(at_full_ramp, _reference_gradient(batch, seed, 1.0, False), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(at_zero_ramp, _reference_gradient(batch, seed, 0.0, False), rtol=1e-10, atol=1e-12)
    assert (at_full_ramp - at_zero_ramp).abs().max() > 1e-3  # the unlabeled term trains the network
    through_guess = _reference_gradient(batch, seed, 1.0, True)
    assert (at_full_ramp - through_guess).abs().max() > 1e-6  # the stop-gradient matters, and is there


# --- (6) state and resume ---------------------------------------------------------------------------------

def test_the_state_round_trips_through_a_checkpoint_so_that_a_resumed_loss_equals_the_uninterrupted_one(method,
                                                                                                       batch):
    model = Tiny()
    state = _state(method, 5, seed=1)
    method.loss(copy.deepcopy(model), batch, None, state)  # a step's draws before the checkpoint
    method.after_step(state, {})
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    assert set(state.state_dict()) == {"ramp.step", "mixup._extra_state"}
    resumed = _state(method, 0, seed=2)  # another run's seed: everything must come from the checkpoint
    assert not torch.equal(resumed.generator.get_state(), state.generator.get_state())
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert float(resumed.ramp.step) == 6.0
    straight_model, resumed_model = copy.deepcopy(model), copy.deepcopy(model)
    for _ in range(2):
        straight, _ = method.loss(straight_model, batch, None, state)
        again, _ = method.loss(resumed_model, batch, None, resumed)
        assert torch.equal(straight, again)
        method.after_step(state, {})
        method.after_step(resumed, {})
    # and without the generator's state the draws differ
    fresh = _state(method, 8, seed=2)
    different, _ = method.loss(copy.deepcopy(model), batch, None, fresh)
    assert not torch.equal(different, method.loss(copy.deepcopy(model), batch, None, state)[0])


def test_the_generator_module_restores_its_state():
    saved = MixUpGenerator("cpu", 3)
    torch.rand(4, generator=saved.generator)
    restored = MixUpGenerator("cpu", 4)
    restored.load_state_dict(saved.state_dict())
    assert torch.equal(torch.rand(4, generator=restored.generator), torch.rand(4, generator=saved.generator))


# --- checks ------------------------------------------------------------------------------------------------

def _validated(methods: dict) -> object:
    from fixmatch_bench.core.params import validate_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["methods"].update(methods)
    return validate_params(params)


def test_the_block_is_validated_and_uratio_above_one_or_a_zero_weight_refused(method):
    from fixmatch_bench.core.errors import ParamsError
    from fixmatch_bench.methods.registry import run_method

    block = {"impl": "mixmatch", **PARAMS.model_dump(exclude={"impl", "allow_no_unlabeled_loss"})}
    assert isinstance(run_method(_validated({"mixmatch": block}), "mixmatch"), MixMatch)
    with pytest.raises(ParamsError, match="uratio"):
        run_method(_validated({"mixmatch": {**block, "uratio": 2}}), "mixmatch")
    with pytest.raises(ParamsError, match="w_match"):
        run_method(_validated({"mixmatch": {**block, "w_match": 0.0}}), "mixmatch")
    with pytest.raises(ParamsError, match="uratio"):
        run_method(_validated({"mixmatch": {**block, "uratio": 0}}), "mixmatch")
    allowed = run_method(_validated({"mixmatch": {**block, "uratio": 0, "allow_no_unlabeled_loss": True}}), "mixmatch")
    assert allowed.uratio(None) == 0
    with pytest.raises(ParamsError, match="temperature"):
        run_method(_validated({"mixmatch": {**block, "temperature": 0.0}}), "mixmatch")


# --- (7) a real run -------------------------------------------------------------------------------------------

DIGITS = REPO / "data/prepared/digits"
SPLIT = REPO / "data/splits/digits_20-1.json"
SMOKE_TRAIN = {"steps": 20, "batch": 8, "eval_every": 10, "median_of_last": 2, "eval_batch": 256, "log_every": 5,
               "checkpoint_every": 10, "ema": 0.9}


@pytest.fixture(scope="module")
def smoke_params() -> dict:
    if not (DIGITS.exists() and SPLIT.exists()):
        pytest.skip("data/prepared/digits and data/splits/digits_20-1.json are not built here (dvc repro prepare)")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(SMOKE_TRAIN)
    params["methods"]["mixmatch"] = {"impl": "mixmatch", "uratio": 1, "nu": 2, "temperature": 0.5, "beta": 0.5,
                                     "w_match": 100.0, "warmup_kimg": 1024}
    return params


def _train(params: dict, root: Path, out: str, stop=None) -> dict:
    from fixmatch_bench.core.runs import Run
    from fixmatch_bench.train.trainer import train

    params = {**params, "checkpoints": {"dir": str(root / "checkpoints" / out), "keep_finished": True}}
    return train(params, Run("digits", 20, "mixmatch", 1), DIGITS, SPLIT, root / out, stop=stop, progress=False)


def _final_state(root: Path, out: str) -> dict:
    (directory,) = sorted((root / "checkpoints" / out).iterdir())
    return torch.load(directory / "state.pt", weights_only=True)


def test_a_mixmatch_run_trains_and_resumes_bit_identically(smoke_params, tmp_path):
    from fixmatch_bench.train.trainer import Interrupted, StopRequest

    straight = _train(smoke_params, tmp_path, "straight")
    assert straight["steps"] == 20 and math.isfinite(straight["error"]) and 0 <= straight["error"] <= 100
    with pytest.raises(Interrupted, match="stopped by request at step 7"):
        _train(smoke_params, tmp_path, "resumed", stop=StopRequest(after_step=7))
    assert _final_state(tmp_path, "resumed")["step"] == 7
    resumed = _train(smoke_params, tmp_path, "resumed")
    common = (set(straight) & set(resumed)) - {"wall_time_s", "steps_per_s"}
    assert {"error", "error_last", "steps"} <= common
    assert {k: straight[k] for k in common} == {k: resumed[k] for k in common}
    a, b = _final_state(tmp_path, "straight"), _final_state(tmp_path, "resumed")
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs"
    assert torch.equal(a["method"]["ramp.step"], b["method"]["ramp.step"]) and float(a["method"]["ramp.step"]) == 20
    assert torch.equal(a["method"]["mixup._extra_state"]["generator"], b["method"]["mixup._extra_state"]["generator"])
    curves = {out: {p.name: p.read_text() for p in sorted((tmp_path / out / "curves").rglob("*.tsv"))}
              for out in ("straight", "resumed")}
    assert curves["straight"] == curves["resumed"] and "loss_u.tsv" in curves["straight"]
