"""ReMixMatch with CTAugment (official ``cta/cta_remixmatch.py`` + ``remixmatch_no_cta.py``
``ReMixMatch.model``; docs/baselines_official.md §7) against the official formulas computed by hand
in NumPy and plain Python, on a tiny double-precision network (Linear, BatchNorm, then a class
head and a rotation head on the normalised features), so that which pass normalises with which
batch, and which pass updates the running statistics, shows in the numbers; then a real run on
the digits data."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fixmatch_bench.methods.base import Batch, RunContext
from fixmatch_bench.methods.mixup import interleave
from fixmatch_bench.methods.remixmatch import (ReMixMatch, ReMixMatchParams, ReMixMatchState, guess_label,
                                               rotate_quarters)

REPO = Path(__file__).resolve().parents[1]
IMPL = "fixmatch_bench.methods.remixmatch:ReMixMatch"
CLASSES, FEATURES, EPS, MOMENTUM = 3, 5, 1e-5, 0.1
SHAPE = (2, 3, 3)  # C, H, W: square, so that the transposes keep the shape
N, K = 12, 2  # labeled images = unlabeled images per view (uratio 1); quarters of 3; interleave groups [3, 3, 3, 3]
CONTEXT_BATCH = 64  # train.batch the ramp counts images with
WARMUP_KIMG = 1  # 1024 images: a 16-step ramp at B = 64
PARAMS = ReMixMatchParams(impl=IMPL, uratio=1, K=K, temperature=0.5, beta=0.75, w_kl=0.5, w_match=1.5, w_rot=0.5,
                          warmup_kimg=WARMUP_KIMG, lr=0.002, weight_decay=0.02)
TARGETS = [0, 2, 1, 2, 0, 0, 1, 2, 2, 1, 0, 2]


class Tiny(nn.Module):
    """h = BN(x W^T + b) on the flattened image; class logits fc(h), rotation logits heads.rotation(h)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        inputs = int(np.prod(SHAPE))
        self.linear = nn.Linear(inputs, FEATURES).double()
        self.norm = nn.BatchNorm1d(FEATURES, eps=EPS, momentum=MOMENTUM).double()
        self.fc = nn.Linear(FEATURES, CLASSES).double()
        self.heads = nn.ModuleDict({"rotation": nn.Linear(FEATURES, 4).double()})
        with torch.no_grad():
            for layer in (self.linear, self.fc, self.heads["rotation"]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64))
            self.norm.weight.copy_(torch.linspace(0.5, 2.0, FEATURES))
            self.norm.bias.copy_(torch.linspace(-0.3, 0.3, FEATURES))
            self.norm.running_mean.copy_(torch.linspace(-0.2, 0.4, FEATURES))

    def forward(self, x: torch.Tensor, head: str | None = None) -> torch.Tensor:
        h = self.norm(self.linear(x.flatten(1)))
        return self.fc(h) if head is None else self.heads[head](h)


# --- the official formulas, by hand -------------------------------------------------------------------

def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy()


def _np_features(model: Tiny, x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1) @ _np(model.linear.weight).T + _np(model.linear.bias)


def _np_logits(model: Tiny, x: np.ndarray, head: str | None = None) -> np.ndarray:
    """A training-mode pass: BatchNorm with this batch's statistics (biased variance)."""
    z = _np_features(model, x)
    h = (z - z.mean(0)) / np.sqrt(z.var(0) + EPS) * _np(model.norm.weight) + _np(model.norm.bias)
    layer = model.fc if head is None else model.heads[head]
    return h @ _np(layer.weight).T + _np(layer.bias)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    return z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))


def _soft_ce(labels: np.ndarray, logits: np.ndarray) -> float:
    """``reduce_mean(softmax_cross_entropy_with_logits_v2(labels, logits))``."""
    return float(-(labels * _log_softmax(logits)).sum(1).mean())


def _np_random_rotate(x_nchw: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``random_rotate`` of ``remixmatch_no_cta.py``, transcribed on NHWC arrays as TF sees them."""
    x = np.transpose(x_nchw, (0, 2, 3, 1))
    b4 = batch // 4
    x, xt = x[:2 * b4], np.transpose(x[2 * b4:], [0, 2, 1, 3])
    l = np.zeros(b4, np.int32)
    l = np.concatenate([l, l + 1, l + 2, l + 3], axis=0)
    rotated = np.concatenate([x[:b4], x[b4:, ::-1, ::-1], xt[:b4, ::-1], xt[b4:, :, ::-1]], axis=0)
    return np.transpose(rotated, (0, 3, 1, 2)), l


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


def _generator(seed: int | torch.Tensor) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or in the state ``seed``."""
    generator = torch.Generator()
    if isinstance(seed, torch.Tensor):
        generator.set_state(seed)
    else:
        generator.manual_seed(seed)
    return generator


def _draws(seed: int | torch.Tensor, n: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """λ (before max(λ, 1 − λ)) and the permutation a generator seeded with (or in the state) ``seed``
    gives: Beta(β, β) as X / (X + Y) of two Gamma(β) draws (X first), then ``randperm``."""
    generator = _generator(seed)
    concentration = torch.full((n,), beta, dtype=torch.float64)
    x = torch._standard_gamma(concentration, generator=generator).numpy()
    y = torch._standard_gamma(concentration, generator=generator).numpy()
    return x / (x + y), torch.randperm(n, generator=generator).numpy()


def _p_model(history: np.ndarray) -> np.ndarray:
    """``PMovingAverage.__call__``: the normalised mean of the buffer."""
    v = history.mean(0)
    return v / v.sum()


def _np_guess(model: Tiny, weak: np.ndarray, history: np.ndarray, p_data: np.ndarray, temperature: float) -> dict:
    """``guess_label`` with redux 1st and use_dm: the weak view's softmax, aligned with ``PData()`` and
    ``PMovingAverage()`` (both normalised on read), then sharpened."""
    p_model_y = _softmax(_np_logits(model, weak))
    p_ratio = (1e-6 + p_data / p_data.sum()) / (1e-6 + _p_model(history))
    p_weighted = p_model_y * p_ratio
    p_weighted /= p_weighted.sum(1, keepdims=True)
    p_target = p_weighted ** (1.0 / temperature)
    p_target /= p_target.sum(1, keepdims=True)
    return {"p_model": p_model_y, "aligned": p_weighted, "p_target": p_target}


def _np_remixmatch(model: Tiny, batch: Batch, seed: int | torch.Tensor, ramp: float, history: np.ndarray,
                   p_data: np.ndarray, p: ReMixMatchParams = PARAMS) -> dict:
    """``ReMixMatch.model``'s loss by hand (redux 1st, use_dm, use_xe); the MixUp draws from a generator
    seeded with (or in the state) ``seed``; ``history`` the p_model buffer, ``p_data`` PData's variable."""
    x, targets = _np(batch.labeled), _np(batch.targets)
    y = [_np(view) for view in batch.unlabeled]  # y_in[:, i]
    n, k = len(x), len(y) - 1
    out = {}
    if p.w_rot > 0:
        rot_y, rot_l = _np_random_rotate(y[1], n)
        rot_logits = _np_logits(model, rot_y, head="rotation")
        out["loss_rot"] = _soft_ce(np.eye(4)[rot_l], rot_logits)
    logits_y = [_np_logits(model, y[i]) for i in range(2)]
    logits_y += logits_y[:1] * (k - 1)
    guess = _np_guess(model, y[0], history, p_data, p.temperature)
    ly = np.tile(guess["p_target"], (k + 1, 1))
    if p.w_kl > 0:
        out["loss_kl"] = _soft_ce(ly[:n], logits_y[1])
    lx = np.eye(CLASSES)[targets]
    images = np.concatenate([x] + y)
    labels = np.concatenate([lx] + np.split(ly, k + 1))
    lam, index = _draws(seed, len(images), p.beta)
    mix = np.maximum(lam, 1 - lam)
    mixed = images * mix[:, None, None, None] + images[index] * (1 - mix[:, None, None, None])
    mixed_labels = labels * mix[:, None] + labels[index] * (1 - mix[:, None])
    batches = _np_interleave(np.split(mixed, k + 2), n)
    logits = _np_interleave([_np_logits(model, b) for b in batches], n)
    loss_xe = _soft_ce(mixed_labels[:n], logits[0])
    loss_xeu = _soft_ce(mixed_labels[n:], np.concatenate(logits[1:]))
    loss = (loss_xe + p.w_kl * ramp * out.get("loss_kl", 0.0) + p.w_match * ramp * loss_xeu
            + p.w_rot * out.get("loss_rot", 0.0))
    return {**out, "loss_x": loss_xe, "loss_u": loss_xeu, "loss": loss, "batches": batches, "guess": guess,
            "lx": lx}


# --- fixtures -------------------------------------------------------------------------------------------

def _images(seed: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, size=(n, *SHAPE)))


def _batch(n: int = N, k: int = K) -> Batch:
    return Batch(labeled=_images(1, n), targets=torch.tensor((TARGETS * 2)[:n]),
                 unlabeled=tuple(_images(10 + v, n) for v in range(k + 1)),
                 unlabeled_targets=torch.tensor(([1, -1, 0, 2] * n)[:n]))


@pytest.fixture
def batch() -> Batch:
    return _batch()


@pytest.fixture
def method() -> ReMixMatch:
    return ReMixMatch("remixmatch", PARAMS)


def _history(seed: int = 5) -> np.ndarray:
    """A p_model buffer far from uniform (float32 values, as the state keeps them)."""
    rows = np.random.default_rng(seed).dirichlet(np.ones(CLASSES) * 0.7, size=128)
    return rows.astype(np.float32).astype(np.float64)


P_DATA = np.array([0.5, 0.3, 0.2], dtype=np.float32).astype(np.float64)


def _state(method: ReMixMatch, step: int, seed: int = 0, history: np.ndarray | None = None,
           p_data: np.ndarray | None = None) -> ReMixMatchState:
    state = method.build_state(RunContext(num_classes=CLASSES, class_distribution=torch.ones(CLASSES) / CLASSES,
                                          steps=1000, batch=CONTEXT_BATCH, seed=seed, weak_no_grad=False))
    for _ in range(step):
        method.after_step(state, {})  # the ramp alone
    if history is not None:
        state.alignment.history.copy_(torch.from_numpy(history))
    if p_data is not None:
        state.alignment.p_data.copy_(torch.from_numpy(p_data))
    return state


# --- (1) rotation quarters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [4, 8, 12, 64])
def test_rotation_quarters_are_the_official_tf_ops_on_hwc_images(n):
    images = _images(3, n)
    rotated, labels = rotate_quarters(images)
    expected, expected_labels = _np_random_rotate(images.numpy(), n)
    np.testing.assert_array_equal(rotated.numpy(), expected)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    assert labels.dtype == torch.int64 and labels.tolist() == sorted(labels.tolist())
    # and they are the four rotations: 0, 180°, and 90° one way and the other (np.rot90 on the H, W axes)
    b4, hwc = n // 4, np.transpose(images.numpy(), (0, 2, 3, 1))
    got = np.transpose(rotated.numpy(), (0, 2, 3, 1))
    for quarter, turns in enumerate([0, 2, 1, -1]):
        rows = slice(quarter * b4, (quarter + 1) * b4)
        np.testing.assert_array_equal(got[rows], np.rot90(hwc[rows], turns, axes=(1, 2)))
        assert (labels[rows] == quarter).all()


def test_rotation_quarters_of_a_batch_not_divisible_by_four_put_the_remainder_in_the_last_quarter():
    images = _images(4, 10)
    rotated, labels = rotate_quarters(images)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    np.testing.assert_array_equal(rotated[6:].numpy(), images[6:].transpose(2, 3).flip(3).numpy())
    with pytest.raises(ValueError, match="at least 4"):
        rotate_quarters(_images(4, 3))


# --- (2) the guess ---------------------------------------------------------------------------------------

def test_the_guess_aligns_with_p_model_before_the_update_and_the_running_p_data_then_sharpens(method, batch):
    model, history = Tiny(), _history()
    state = _state(method, 0, history=history, p_data=P_DATA)
    before = copy.deepcopy(state.state_dict())
    guess, weak_probs = guess_label(model, batch.unlabeled[0], state, PARAMS.temperature)
    expected = _np_guess(model, batch.unlabeled[0].numpy(), history, P_DATA, PARAMS.temperature)
    np.testing.assert_allclose(weak_probs.numpy(), expected["p_model"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(guess.numpy(), expected["p_target"], rtol=1e-10, atol=1e-13)
    assert not guess.requires_grad and not weak_probs.requires_grad  # the official stop_gradient
    # the alignment matters here (p_data and p_model far from each other), and so does the sharpening
    assert np.abs(expected["aligned"] - expected["p_model"]).max() > 0.05
    assert np.abs(expected["p_target"] - expected["aligned"]).max() > 0.05
    # reading does not update: p_model, p_data untouched
    for name, tensor in state.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, before[name]), name
    # with uniform p_data and p_model (a fresh state) the alignment is the identity
    fresh, _ = guess_label(model, batch.unlabeled[0], _state(method, 0), PARAMS.temperature)
    sharpened = expected["p_model"] ** 2 / (expected["p_model"] ** 2).sum(1, keepdims=True)
    np.testing.assert_allclose(fresh.numpy(), sharpened, rtol=1e-6)


def test_the_guess_pass_does_not_touch_the_running_statistics(method, batch):
    model = Tiny()
    before = [b.clone() for b in model.norm.buffers()]
    guess_label(model, batch.unlabeled[0], _state(method, 0), PARAMS.temperature)
    assert all(torch.equal(a, b) for a, b in zip(before, model.norm.buffers()))
    assert model.norm.momentum == MOMENTUM


# --- (3) the whole loss ------------------------------------------------------------------------------------

WEIGHTS = [
    {},  # the cta_remixmatch.py defaults
    {"w_kl": 0.0},  # no pre-mixup pass
    {"w_rot": 0.0},  # no rotation pass
    {"w_kl": 1.25, "w_rot": 2.0, "w_match": 0.75, "temperature": 0.3, "beta": 0.5},
    {"K": 3},  # nu = 4 on 12 images: interleave groups [2, 2, 2, 3, 3]
    {"K": 1},  # the flag default: logits_y = [weak, strong 1]
]


@pytest.mark.parametrize("step, ramp", [(0, 0.0), (4, 0.25), (8, 0.5), (16, 1.0), (40, 1.0)])
@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: ",".join(f"{k}={v}" for k, v in w.items()) or "default")
def test_loss_is_the_official_remixmatch_loss_computed_by_hand(step, ramp, weights):
    params = PARAMS.model_copy(update=weights)
    method, model, history, batch = ReMixMatch("remixmatch", params), Tiny(), _history(), _batch(k=params.K)
    state = _state(method, step, seed=3, history=history, p_data=P_DATA)
    expected = _np_remixmatch(model, batch, state.generator.initial_seed(), ramp, history, P_DATA, params)
    loss, logs = method.loss(model, batch, None, state)
    assert float(state.ramp()) == pytest.approx(ramp)
    terms = {"loss", "loss_x", "loss_u"} | {name for name in ("loss_kl", "loss_rot") if name in expected}
    assert set(logs) == terms | {"weak_probs", "labels_mean", "pseudo_label_correct", "pseudo_label_count"}
    for name in terms:
        assert float(logs[name]) == pytest.approx(expected[name], rel=1e-9), name
        assert expected[name] > 1e-3, name  # no term is vacuous here
    assert float(loss.detach()) == pytest.approx(expected["loss"], rel=1e-9)
    assert ("loss_kl" in logs) == (params.w_kl > 0) and ("loss_rot" in logs) == (params.w_rot > 0)
    # the logged guess accuracy: argmax of the guess against the known unlabeled targets
    targets = batch.unlabeled_targets.numpy()
    known = targets >= 0
    correct = (expected["guess"]["p_target"].argmax(1) == targets) & known
    assert float(logs["pseudo_label_correct"]) == correct.sum() and float(logs["pseudo_label_count"]) == known.sum()


def test_without_unlabeled_data_the_loss_is_the_labeled_cross_entropy(method, batch):
    model, state = Tiny(), _state(method, 0)
    generator_before = state.generator.get_state()
    loss, logs = method.loss(model, Batch(batch.labeled, batch.targets), None, state)
    expected = -_log_softmax(_np_logits(Tiny(), batch.labeled.numpy()))[np.arange(N), batch.targets.numpy()].mean()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-9) and set(logs) == {"loss", "loss_x"}
    assert torch.equal(state.generator.get_state(), generator_before)  # nothing drawn
    method.after_step(state, logs)  # the ramp advances; p_model and p_data stay uniform
    assert float(state.ramp.step) == 1 and torch.equal(state.alignment.p_data, torch.full((CLASSES,), 1 / CLASSES))


def _reference_gradients(batch: Batch, seed: int, ramp: float, history: np.ndarray, guess_gradient: bool) -> list:
    """The gradients of the loss written directly in torch from the official formulas, with the guess a
    constant (``guess_gradient`` False: the official stop_gradient) or differentiated through."""
    model, n = Tiny(), N
    y = batch.unlabeled
    rot_y, rot_l = (torch.from_numpy(a.copy()) for a in _np_random_rotate(y[1].numpy(), n))
    loss_rot = nn.functional.cross_entropy(model(rot_y, head="rotation"), rot_l.long())
    with torch.set_grad_enabled(guess_gradient):
        p_model_y = model(y[0]).softmax(1)
        ratio = torch.from_numpy((1e-6 + P_DATA / P_DATA.sum()) / (1e-6 + _p_model(history)))
        weighted = p_model_y * ratio
        weighted = weighted / weighted.sum(1, keepdim=True)
        guess = weighted ** 2 / (weighted ** 2).sum(1, keepdim=True)
    loss_kl = -(guess * model(y[1]).log_softmax(1)).sum(1).mean()
    lam, index = (torch.from_numpy(a) for a in _draws(seed, n * (K + 2), PARAMS.beta))
    mix = torch.maximum(lam, 1 - lam)
    images = torch.cat([batch.labeled, *y])
    labels = torch.cat([nn.functional.one_hot(batch.targets, CLASSES).double(), *[guess] * (K + 1)])
    mixed = images * mix[:, None, None, None] + images[index] * (1 - mix[:, None, None, None])
    mixed_labels = labels * mix[:, None] + labels[index] * (1 - mix[:, None])
    logits = interleave([model(b) for b in interleave(list(mixed.split(n)), n)], n)
    loss_x = -(mixed_labels[:n] * logits[0].log_softmax(1)).sum(1).mean()
    loss_u = -(mixed_labels[n:] * torch.cat(logits[1:]).log_softmax(1)).sum(1).mean()
    p = PARAMS
    (loss_x + p.w_kl * ramp * loss_kl + p.w_match * ramp * loss_u + p.w_rot * loss_rot).backward()
    return [parameter.grad.clone() for parameter in model.parameters()]


def test_the_gradient_flows_through_every_term_but_not_through_the_guess(method, batch):
    history = _history()

    def gradients(step: int) -> list:
        model, state = Tiny(), _state(method, step, seed=4, history=history, p_data=P_DATA)
        loss, _ = method.loss(model, batch, None, state)
        loss.backward()
        return [parameter.grad for parameter in model.parameters()]

    at_full_ramp = gradients(16)
    expected = _reference_gradients(batch, 4, 1.0, history, guess_gradient=False)
    for got, want in zip(at_full_ramp, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(gradients(0), _reference_gradients(batch, 4, 0.0, history, guess_gradient=False)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    through_guess = _reference_gradients(batch, 4, 1.0, history, guess_gradient=True)
    assert max((a - b).abs().max() for a, b in zip(at_full_ramp, through_guess)) > 1e-6  # the stop-gradient is there
    names = [name for name, _ in Tiny().named_parameters()]
    assert at_full_ramp[names.index("heads.rotation.weight")].abs().max() > 1e-3  # the rotation head trains


# --- (4) BatchNorm running statistics ------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3])
def test_only_the_last_interleaved_batch_updates_the_batchnorm_running_statistics(k):
    params = PARAMS.model_copy(update={"K": k})
    method, model, batch = ReMixMatch("remixmatch", params), Tiny(), _batch(k=k)
    before_mean, before_var = _np(model.norm.running_mean).copy(), _np(model.norm.running_var).copy()
    state = _state(method, 3)
    uniform = np.full(CLASSES, 1 / CLASSES)
    expected = _np_remixmatch(model, batch, state.generator.initial_seed(), 3 / 16, np.tile(uniform, (128, 1)), uniform,
                              params)
    method.loss(model, batch, None, state)
    assert len(expected["batches"]) == k + 2
    z = _np_features(model, expected["batches"][-1])
    np.testing.assert_allclose(_np(model.norm.running_mean), (1 - MOMENTUM) * before_mean + MOMENTUM * z.mean(0),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(_np(model.norm.running_var), (1 - MOMENTUM) * before_var + MOMENTUM * z.var(0, ddof=1),
                               rtol=1e-12, atol=1e-14)
    assert int(model.norm.num_batches_tracked) == 1  # one pass of the 3 + (k + 2) counted
    assert model.norm.momentum == MOMENTUM
    # not interleaved batch 0 (MixMatch's), which would give other statistics
    z0 = _np_features(model, expected["batches"][0])
    assert np.abs(z0.mean(0) - z.mean(0)).max() > 1e-3


# --- (5) p_model and p_data after the step -------------------------------------------------------------------

def test_after_step_feeds_p_model_the_unaligned_weak_softmax_and_moves_p_data_towards_the_labels(method, batch):
    model, history = Tiny(), _history()
    state = _state(method, 0, history=history, p_data=P_DATA)
    _, logs = method.loss(model, batch, None, state)
    method.after_step(state, logs)
    weak = _softmax(_np_logits(model, batch.unlabeled[0].numpy()))
    aligned = _np_guess(model, batch.unlabeled[0].numpy(), history, P_DATA, 0.5)["aligned"]
    assert np.abs(weak.mean(0) - aligned.mean(0)).max() > 0.05  # feeding the aligned one would show
    # PMovingAverage.update: the oldest entry dropped, the batch mean of the unaligned softmax appended
    official = np.concatenate([history[1:], weak.mean(0)[None]])
    np.testing.assert_allclose(_np(state.alignment.p_model()), _p_model(official), rtol=1e-6)
    rows = _np(state.alignment.history)
    np.testing.assert_allclose(rows[0], weak.mean(0), rtol=1e-6)  # written where the oldest entry was
    np.testing.assert_array_equal(rows[1:], history[1:].astype(np.float32))
    # PData.update: 0.999 p_data + 0.001 mean(onehot(labels))
    np.testing.assert_allclose(_np(state.alignment.p_data),
                               0.999 * P_DATA + 0.001 * np.eye(CLASSES)[batch.targets.numpy()].mean(0), rtol=1e-6)
    assert float(state.ramp.step) == 1


def test_over_several_steps_the_loss_reads_p_model_and_p_data_as_the_official_post_ops_leave_them(method):
    """Each step's guess sees the buffers as the previous steps' post-ops left them (the reference
    tracks them in float64; the state keeps them in float32)."""
    model = Tiny()
    history, p_data = np.full((128, CLASSES), 1 / CLASSES), np.full(CLASSES, 1 / CLASSES)
    state = _state(method, 0, seed=6)
    for step in range(4):
        views = tuple(_images(100 * step + v, N) for v in range(K + 1))
        batch = Batch(_images(100 * step + 50, N), torch.tensor(TARGETS[step:] + TARGETS[:step]), views)
        expected = _np_remixmatch(model, batch, state.generator.get_state(), step / 16, history, p_data)
        loss, logs = method.loss(model, batch, None, state)
        assert float(loss.detach()) == pytest.approx(expected["loss"], rel=1e-6)
        method.after_step(state, logs)
        history = np.concatenate([history[1:], expected["guess"]["p_model"].mean(0)[None]])
        p_data = 0.999 * p_data + 0.001 * expected["lx"].mean(0)
    np.testing.assert_allclose(_np(state.alignment.p_model()), _p_model(history), rtol=1e-6)
    np.testing.assert_allclose(_np(state.alignment.p_data), p_data, rtol=1e-6)
    assert np.abs(_p_model(history) - 1 / CLASSES).max() > 1e-3 and np.abs(p_data - 1 / CLASSES).max() > 1e-4


# --- (6) state and resume -----------------------------------------------------------------------------------

def test_the_state_round_trips_through_a_checkpoint_so_that_a_resumed_loss_equals_the_uninterrupted_one(method,
                                                                                                       batch):
    model = Tiny()
    state = _state(method, 5, seed=1)
    for _ in range(3):  # steps before the checkpoint: p_model, p_data, the ramp and the generator move
        _, logs = method.loss(copy.deepcopy(model), batch, None, state)
        method.after_step(state, logs)
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    assert set(state.state_dict()) == {"ramp.step", "mixup._extra_state", "alignment.p_data", "alignment.history",
                                       "alignment.position"}
    resumed = _state(method, 0, seed=2)  # another run's seed: everything must come from the checkpoint
    assert not torch.equal(resumed.generator.get_state(), state.generator.get_state())
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert float(resumed.ramp.step) == 8.0 and int(resumed.alignment.position) == 3
    assert not torch.equal(resumed.alignment.p_data, torch.full((CLASSES,), 1 / CLASSES))
    straight_model, resumed_model = copy.deepcopy(model), copy.deepcopy(model)
    for _ in range(2):
        straight, straight_logs = method.loss(straight_model, batch, None, state)
        again, again_logs = method.loss(resumed_model, batch, None, resumed)
        assert torch.equal(straight, again)
        method.after_step(state, straight_logs)
        method.after_step(resumed, again_logs)
    for name, tensor in state.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, resumed.state_dict()[name]), name
    # and without the checkpoint's buffers the loss differs
    fresh = _state(method, 10, seed=1)
    fresh.generator.set_state(state.generator.get_state())
    differs, _ = method.loss(copy.deepcopy(model), batch, None, fresh)
    assert not torch.equal(differs, method.loss(copy.deepcopy(model), batch, None, state)[0])


# --- (7) declared needs and checks ----------------------------------------------------------------------------

def _composed() -> dict:
    from fixmatch_bench.tools.compose import compose_params

    return compose_params([], REPO / "conf")


def _block(**changes) -> dict:
    return {"impl": IMPL, **PARAMS.model_dump(exclude={"impl", "allow_no_unlabeled_loss"}), **changes}


def _validated(block: dict | None = None, **sections) -> object:
    from fixmatch_bench.core.params import validate_params

    params = _composed()
    params["methods"]["remixmatch"] = block or _block()
    for section, values in sections.items():
        params[section].update(values)
    return validate_params(params)


def test_declared_needs_follow_the_official_script(method):
    from fixmatch_bench.train.state import _strong_branch

    assert method.views == ("weak", "strong", "strong") and method.strong == "ctaugment"
    assert method.labeled_view == "strong" and method.strong_cutout is False and method.needs_teacher is False
    assert method.heads == {"rotation": 4} and method.uratio(None) == 1
    assert ReMixMatch("r", PARAMS.model_copy(update={"w_rot": 0.0})).heads == {}
    assert ReMixMatch("r", PARAMS.model_copy(update={"K": 8})).views == ("weak",) + ("strong",) * 8
    params = _validated()
    assert params.train.lr != 0.002 and method.lr(params) == 0.002  # the block's, not train.lr
    assert params.datasets["digits"].weight_decay != 0.02 and method.weight_decay(params, "digits") == 0.02
    assert _strong_branch(params, method) == "no_cutout"  # AugmentPoolCTA: CTAugment without the appended cutout
    assert _state(method, 0).ramp.length == WARMUP_KIMG * 1024 / CONTEXT_BATCH  # 16 steps at B = 64
    official = ReMixMatch("r", PARAMS.model_copy(update={"warmup_kimg": 1024}))
    assert _state(official, 0).ramp.length == 16384  # docs/baselines_official.md §7.5
    state = _state(method, 0)
    assert torch.equal(state.alignment.p_data, torch.full((CLASSES,), 1 / CLASSES))  # PData from uniform
    # quirk #12: the rotation head's kernel is weight-decayed with the network's (TF re.match on 'classify')
    from fixmatch_bench.models.wide_resnet import WideResNet
    from fixmatch_bench.train.optim import weight_decay_groups

    network = WideResNet(num_classes=CLASSES, heads=method.heads, filters=2, scales=1, repeat=1)
    decayed, other = weight_decay_groups(network, 0.02)
    assert any(parameter is network.heads["rotation"].weight for parameter in decayed["params"])
    assert any(parameter is network.heads["rotation"].bias for parameter in other["params"])
    assert state.alignment.history.shape == (128, CLASSES)


def test_check_refuses_what_cannot_run(method):
    from fixmatch_bench.core.errors import ParamsError
    from fixmatch_bench.methods.registry import run_method

    def run(block=None, **sections):
        return run_method(_validated(block, **sections), "remixmatch")

    assert isinstance(run(), ReMixMatch)
    with pytest.raises(ParamsError, match=r"methods\.remixmatch\.uratio = 2"):
        run(_block(uratio=2))
    with pytest.raises(ParamsError, match=r"methods\.remixmatch\.w_match = 0\.0"):
        run(_block(w_match=0.0))
    assert run(_block(w_match=0.0, allow_no_unlabeled_loss=True)).params.w_match == 0
    with pytest.raises(ParamsError, match="uratio = 0"):
        run(_block(uratio=0))
    assert run(_block(uratio=0, allow_no_unlabeled_loss=True)).uratio(None) == 0
    with pytest.raises(ParamsError, match=r"train\.batch = 6 \(must be divisible by 4"):
        run(train={"batch": 6})
    assert isinstance(run(_block(w_rot=0.0), train={"batch": 6}), ReMixMatch)  # no rotation quarters
    for branch in ("no_cutout", "only_cutout"):
        with pytest.raises(ParamsError, match=rf"augment\.strong_branch = '{branch}'"):
            run(augment={"strong_branch": branch})
    # compile: step is safe (the compiled loss is tested below)
    assert isinstance(run(speed={"compile": "step"}), ReMixMatch)
    for key, value in (("temperature", 0.0), ("K", 0), ("beta", -1.0), ("w_rot", -0.5)):
        with pytest.raises(ParamsError, match=rf"methods\.remixmatch\.{key}"):
            run(_block(**{key: value}))
    with pytest.raises(ParamsError, match=r"methods\.remixmatch\.lr"):  # no defaults in the class
        run({k: v for k, v in _block().items() if k != "lr"})


def test_compiled_the_loss_computes_the_eager_one_and_updates_the_same_statistics(method, batch):
    """Under ``speed.compile: step`` the loss is compiled with the forward (torch.compile traces through
    bn_frozen's momentum switch, the rotation head's ``head=`` and the generator's draws)."""
    from fixmatch_bench.core.compiled import static_compile

    results = []
    for compiled in (False, True):
        model, state = Tiny(), _state(method, 5, seed=8, history=_history(), p_data=P_DATA)
        loss_fn = static_compile(method.loss) if compiled else method.loss
        run = []
        for _ in range(2):
            loss, logs = loss_fn(model, batch, None, state)
            loss.backward()
            run.append([loss.detach(), *[b.clone() for b in model.norm.buffers()],
                        *[p.grad.clone() for p in model.parameters()]])
            model.zero_grad()
            method.after_step(state, logs)
        run.append([state.ramp.step, state.alignment.p_data, state.alignment.history, state.alignment.position])
        results.append(run)
        assert model.norm.momentum == MOMENTUM
    torch._dynamo.reset()
    for eager, compiled in zip(*results):
        for a, b in zip(eager, compiled):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# --- (8) a real run ------------------------------------------------------------------------------------------

DIGITS = REPO / "data/prepared/digits"
SPLIT = REPO / "data/splits/digits_20-1.json"
SMOKE_TRAIN = {"steps": 16, "batch": 8, "eval_every": 8, "log_every": 8, "checkpoint_every": 8, "median_of_last": 1,
               "uratio": 1, "device": "cpu", "eval_batch": 256}


@pytest.fixture(scope="module")
def smoke_params() -> dict:
    if not (DIGITS.exists() and SPLIT.exists()):
        pytest.skip("data/prepared/digits and data/splits/digits_20-1.json are not built here (dvc repro prepare)")
    params = _composed()
    params["train"].update(SMOKE_TRAIN)
    params["methods"]["remixmatch"] = {"impl": IMPL, "uratio": 1, "K": 2, "temperature": 0.5, "beta": 0.75,
                                       "w_kl": 0.5, "w_match": 1.5, "w_rot": 0.5, "warmup_kimg": 1, "lr": 0.002,
                                       "weight_decay": 0.02}
    return params


def _train(params: dict, root: Path, out: str, stop=None) -> dict:
    from fixmatch_bench.core.runs import Run
    from fixmatch_bench.train.trainer import train

    params = {**params, "checkpoints": {"dir": str(root / "checkpoints" / out), "keep_finished": True}}
    return train(params, Run("digits", 20, "remixmatch", 1), DIGITS, SPLIT, root / out, stop=stop, progress=False)


def _final_state(root: Path, out: str) -> dict:
    (directory,) = sorted((root / "checkpoints" / out).iterdir())
    return torch.load(directory / "state.pt", weights_only=True)


def test_a_remixmatch_run_trains_and_resumes_bit_identically(smoke_params, tmp_path):
    from fixmatch_bench.train.trainer import Interrupted, StopRequest

    straight = _train(smoke_params, tmp_path, "straight")
    assert straight["steps"] == 16 and math.isfinite(straight["error"]) and 0 <= straight["error"] <= 100
    with pytest.raises(Interrupted, match="stopped by request at step 7"):
        _train(smoke_params, tmp_path, "resumed", stop=StopRequest(after_step=7))
    assert _final_state(tmp_path, "resumed")["step"] == 7
    resumed = _train(smoke_params, tmp_path, "resumed")
    common = (set(straight) & set(resumed)) - {"wall_time_s", "steps_per_s"}
    assert {"error", "error_last", "steps", "pseudo_label_accuracy"} <= common
    assert {k: straight[k] for k in common} == {k: resumed[k] for k in common}
    a, b = _final_state(tmp_path, "straight"), _final_state(tmp_path, "resumed")
    for part in ("model", "ema"):
        assert "heads.rotation.weight" in a[part]  # the rotation head is trained and averaged
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs"
    assert torch.equal(a["augmenter"]["rates"], b["augmenter"]["rates"])
    for name, tensor in a["method"].items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, b["method"][name]), name
    assert float(a["method"]["ramp.step"]) == 16 and int(a["method"]["alignment.position"]) == 16
    assert torch.equal(a["method"]["mixup._extra_state"]["generator"], b["method"]["mixup._extra_state"]["generator"])
    assert not torch.equal(a["method"]["alignment.p_data"], torch.full((10,), 0.1))  # p_data moved
    groups = a["optimizer"]["param_groups"]
    assert {group["weight_decay"] for group in groups} == {0.02, 0.0}  # the block's weight decay
    # the block's lr (not train.lr), cosine-scheduled: the last step (15 of 16) ran at lr cos(7 pi 15 / (16 16))
    assert all(group["lr"] == pytest.approx(0.002 * math.cos(7 * math.pi * 15 / 256), rel=1e-12) for group in groups)
    curves = {out: {p.name: p.read_text() for p in sorted((tmp_path / out / "curves").rglob("*.tsv"))}
              for out in ("straight", "resumed")}
    assert curves["straight"] == curves["resumed"] and "loss_u.tsv" in curves["straight"]
