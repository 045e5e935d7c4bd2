"""Speed options: validation, exactness of the exact ones, and tiny real trainings fast vs reference."""

import copy
import csv
import json

import pytest
import torch
import yaml
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from conftest import REPO, digits_workspace
from fixmatch_bench.core.errors import ParamsError
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import Run
from fixmatch_bench.train.evaluation import accuracy
from fixmatch_bench.methods.base import Batch
from fixmatch_bench.methods.fixmatch import FixMatchParams, fixmatch_loss
from fixmatch_bench.train.optim import make_optimizer
from fixmatch_bench.train.speed import SpeedOptions, fast_forward, prepare_model, set_float32_precision
from fixmatch_bench.train.trainer import train
from fixmatch_bench.models.wide_resnet import WideResNet

CONFIG = REPO / "conf/config.yaml"  # the protocol's defaults, before a suite overrides them

SMALL = {"steps": 24, "batch": 8, "uratio": 2, "eval_every": 6, "median_of_last": 2, "eval_batch": 256,
         "log_every": 2, "checkpoint_every": 24, "ema": 0.9}


def _small_model(channels: int = 1, seed: int = 0) -> WideResNet:
    torch.manual_seed(seed)
    return WideResNet(num_classes=10, in_channels=channels, filters=16, scales=2, repeat=1)


# ---------------------------------------------------------------- options and params


def test_defaults_are_the_exact_path_and_the_committed_params_match_them(params):
    assert SpeedOptions() == SpeedOptions.model_validate(yaml.safe_load(CONFIG.read_text())["speed"])
    # the quick suite alone turns on NHWC kernels (float rounding only; conf/suite/quick.yaml)
    assert validate_params(params).speed == SpeedOptions(channels_last=True)
    assert SpeedOptions().fingerprint() == {"autocast_bf16": False, "weak_no_grad": False, "tf32": False}
    assert SpeedOptions().optimizer_kwargs() == {"foreach": True}
    assert SpeedOptions(optimizer_impl="fused").optimizer_kwargs() == {"fused": True}


@pytest.mark.parametrize("key, value, message", [
    ("compile", "x", "invalid params: speed.compile = 'x' (allowed: none, model, step)"),
    ("compile_mode", "fast", "invalid params: speed.compile_mode = 'fast' (allowed: default, reduce-overhead, "
                             "max-autotune, max-autotune-no-cudagraphs)"),
    ("optimizer_impl", "adam", "invalid params: speed.optimizer_impl = 'adam' (allowed: for_loop, foreach, fused)"),
    ("channels_last", "yes", "invalid params: speed.channels_last = 'yes' (allowed: true, false)"),
    ("weak_no_grad", 1, "invalid params: speed.weak_no_grad = 1 (allowed: true, false)"),
    ("autocast_fp16", True, "invalid params: speed.autocast_fp16 = True (not a known key; allowed: "
                            "channels_last, autocast_bf16, compile, compile_mode, compile_augment, optimizer_impl, "
                            "weak_no_grad, tf32, deterministic)"),
    ("compile_augment", "on", "invalid params: speed.compile_augment = 'on' (allowed: true, false)"),
])
def test_bad_speed_params_are_refused_naming_key_value_and_allowed(params, key, value, message):
    changed = copy.deepcopy(params)
    changed["speed"][key] = value
    with pytest.raises(ParamsError) as error:
        validate_params(changed)
    assert str(error.value) == message


def test_compiled_augmentation_needs_the_batched_ops(params):
    changed = copy.deepcopy(params)
    changed["speed"]["compile_augment"] = True
    changed["augment"]["impl"] = "reference"
    with pytest.raises(ParamsError, match=r"speed.compile_augment = True \(needs augment.impl = batched"):
        validate_params(changed)


def test_speed_options_refuse_bad_values_directly():
    with pytest.raises(ValidationError, match=r"Input should be 'none', 'model' or 'step'"):
        SpeedOptions(compile="yes")
    with pytest.raises(ValidationError, match=r"turbo\n  Extra inputs are not permitted"):
        SpeedOptions.model_validate({"turbo": True})


# ---------------------------------------------------------------- exactness of single pieces


def _sgd_run(impl: str) -> list[torch.Tensor]:
    model = _small_model(channels=3)
    optimizer = make_optimizer(model, 0.03, 0.9, True, 5e-4, **SpeedOptions(optimizer_impl=impl).optimizer_kwargs())
    data = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.rand(16, 3, 16, 16, generator=data), torch.randint(0, 10, (16,), generator=data)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_foreach_sgd_is_bit_identical_to_the_for_loop_and_fused_is_close():
    """Why ``optimizer_impl: foreach`` may be on by default: same bits as the for-loop SGD (CPU).

    The fused kernel rounds differently (measured on CPU: one tensor off by 5e-10 after 4 steps).
    """
    for_loop, foreach, fused = _sgd_run("for_loop"), _sgd_run("foreach"), _sgd_run("fused")
    assert all(torch.equal(a, b) for a, b in zip(for_loop, foreach))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(for_loop, fused))


def test_channels_last_forward_matches_contiguous_at_float_rounding_level():
    reference = _small_model(channels=3).train()
    fast = prepare_model(copy.deepcopy(reference), SpeedOptions(channels_last=True))
    kernels = [p for p in fast.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    x = torch.rand(32, 3, 16, 16) * 2 - 1
    expected = reference(x)
    logits = fast_forward(fast, SpeedOptions(channels_last=True))(x)
    assert logits.dtype == torch.float32
    # Measured: max |diff| ~1e-6 on CPU (different conv kernels, same maths).
    assert (logits - expected).abs().max() < 1e-4


def test_bf16_autocast_gives_float32_logits_close_to_fp32():
    model = _small_model(channels=3).eval()
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    expected = model(x)
    logits = fast_forward(model, SpeedOptions(autocast_bf16=True))(x)
    assert logits.dtype == torch.float32
    # bfloat16 keeps 8 significant bits: relative error ~2^-8 per op; measured ~2e-2 on these logits.
    assert (logits - expected).abs().max() < 0.1 * expected.abs().max()
    assert not torch.equal(logits, expected)  # autocast really ran in lower precision


def test_the_wrapper_leaves_the_wrapped_module_mode_alone():
    """accuracy() restores the mode it found: wrapping the eval-mode EMA model must not flip it to train."""
    ema_model = _small_model().eval()
    wrapped = fast_forward(ema_model, SpeedOptions(channels_last=True))
    accuracy(wrapped, torch.randint(0, 256, (10, 1, 16, 16), dtype=torch.uint8), torch.zeros(10, dtype=torch.long), 4)
    assert not ema_model.training and not wrapped.training


def test_compiled_model_forward_and_backward_match_eager():
    """torch.compile on the model only (``compile: step`` runs whole trainings further down)."""
    torch.manual_seed(0)
    model = WideResNet(num_classes=10, in_channels=1, filters=8, scales=1, repeat=1).train()
    compiled_model = copy.deepcopy(model)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    y = torch.arange(8)
    F.cross_entropy(model(x), y).backward()
    compiled = fast_forward(compiled_model, SpeedOptions(compile="model"))
    F.cross_entropy(compiled(x), y).backward()
    for (name, eager), fast in zip(model.named_parameters(), compiled_model.parameters()):
        assert torch.allclose(eager.grad, fast.grad, atol=1e-5, rtol=1e-4), name
    for eager, fast in zip(model.buffers(), compiled_model.buffers()):
        assert torch.allclose(eager.float(), fast.float(), atol=1e-6)


# ---------------------------------------------------------------- weak_no_grad (algorithm-changing)


def _batch(channels: int = 1) -> Batch:
    data = torch.Generator().manual_seed(3)
    images = torch.rand(8 + 16 + 16, channels, 16, 16, generator=data) * 2 - 1
    return Batch(labeled=images[:8], targets=torch.arange(8) % 10, unlabeled=(images[8:24], images[24:]))


def _params(threshold: float) -> FixMatchParams:
    """The protocol's FixMatch block at ``threshold``, lambda_u = 1."""
    return FixMatchParams(impl="fixmatch", strong="randaugment", threshold=threshold, unlabeled_weight=1.0,
                          temperature=1.0, soft_targets=False, pseudo_labels_from="model", anchoring="weak.strong",
                          distribution_alignment=False)


def test_weak_no_grad_is_exact_for_a_network_without_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    nn.init.normal_(model[1].weight, std=0.5)  # confident enough that some pseudo-labels pass the threshold
    batch = _batch()
    loss, logs = fixmatch_loss(model, batch, _params(0.5))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    loss_ng, logs_ng = fixmatch_loss(model, batch, _params(0.5), weak_no_grad=True)
    grads_ng = torch.autograd.grad(loss_ng, list(model.parameters()))
    assert 0 < logs["mask_rate"] < 1
    assert torch.allclose(loss, loss_ng) and torch.equal(logs["mask_rate"], logs_ng["mask_rate"])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_ng))


def test_weak_no_grad_changes_batchnorm_statistics_so_it_changes_the_algorithm():
    model, batch = _small_model().train(), _batch()
    separate = copy.deepcopy(model)
    fixmatch_loss(model, batch, _params(0.95))
    fixmatch_loss(separate, batch, _params(0.95), weak_no_grad=True)
    running = [name for name, _ in model.named_buffers() if name.endswith("running_mean")]
    buffers, separate_buffers = dict(model.named_buffers()), dict(separate.named_buffers())
    assert not all(torch.allclose(buffers[name], separate_buffers[name]) for name in running)


# ---------------------------------------------------------------- tiny real trainings, fast vs reference


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return digits_workspace(tmp_path_factory.mktemp("speed"), SMALL)


def _series(out, name: str) -> list[float]:
    path = out / "curves" / f"{name}.tsv"
    with open(path) as handle:
        return [float(row[name.split("/")[-1]]) for row in csv.DictReader(handle, delimiter="\t")]


def _run(workspace, out: str, method: str = "fixmatch_ra", **speed) -> tuple[dict, list[float], list[float]]:
    root, params = workspace
    params = copy.deepcopy(params)
    params["speed"].update(speed)
    validate_params(params)
    metrics = train(params, Run("digits", 20, method, 1), root / "prepared/digits",
                    root / "splits/digits_20-1.json", root / out, progress=False)
    return metrics, _series(root / out, "train/loss"), _series(root / out, "eval/error")


@pytest.fixture(scope="module")
def reference_run(workspace):
    return _run(workspace, "reference")


def _mean_abs_delta(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == 12  # 24 steps, logged every 2
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


def test_tf32_is_set_off_unless_asked_for_and_each_run_records_the_setting(workspace, reference_run):
    """PyTorch's default lets cuDNN convolutions use TF32; a run sets IEEE float32 unless speed.tf32."""
    set_float32_precision(SpeedOptions(tf32=True))
    assert _precision_settings()[:3] == (True, True, "high")
    metrics, _, _ = reference_run
    root, _ = workspace
    assert metrics["tf32"] is False and json.loads((root / "reference/metrics.json").read_text())["tf32"] is False
    _run(workspace, "tf32_off_again")  # a run with the default sets IEEE again, whatever the process did before
    assert _precision_settings()[:3] == (False, False, "highest")


def test_deterministic_kernels_compute_on_the_cpu_exactly_what_the_default_computes(workspace):
    """Every kernel a run uses on the CPU is deterministic already: ``speed.deterministic`` (on for the
    paper suite) raises at none of them and changes nothing (CTAugment's update and distribution alignment
    included); on CUDA make gpu-check tests its effect."""
    metrics, losses, errors = _run(workspace, "deterministic", "fixmatch_cta_da", deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    reference, reference_losses, reference_errors = _run(workspace, "default", "fixmatch_cta_da")
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert (losses, errors, metrics["error"]) == (reference_losses, reference_errors, reference["error"])


def _precision_settings() -> tuple:
    """Every getter of PyTorch's float32 precision API, legacy and new; each raises if the API was left
    in a mixed state (Inductor's max-autotune reads ``get_float32_matmul_precision``)."""
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision(), torch.backends.fp32_precision,
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision,
            torch.backends.mkldnn.fp32_precision)


@pytest.mark.parametrize("order", [(True, False), (False, True), (True, True)])
def test_every_precision_getter_stays_readable_after_each_tf32_setting(order):
    for tf32 in order:
        set_float32_precision(SpeedOptions(tf32=tf32))
        settings = _precision_settings()
        assert settings[:3] == ((True, True, "high") if tf32 else (False, False, "highest"))
        assert settings[4] == ("tf32" if tf32 else "ieee")  # the new API agrees with the legacy flags
    set_float32_precision(SpeedOptions())


def test_channels_last_training_follows_the_reference_trajectory(workspace, reference_run):
    """Channels-last is exact maths with other conv kernels: the first logged losses agree to
    float rounding, then training amplifies the rounding (measured on CPU: |delta| 4e-5 over
    steps 1-2, mean |delta loss| 0.0038 and max 0.010 over 24 steps, final error 84.6 vs 82.6 %)."""
    metrics, loss, error = reference_run
    cl_metrics, loss_cl, error_cl = _run(workspace, "channels_last", channels_last=True)
    assert abs(loss[0] - loss_cl[0]) < 1e-3
    assert _mean_abs_delta(loss, loss_cl) < 0.02
    assert len(error) == len(error_cl) == 4
    assert abs(cl_metrics["error_last"] - metrics["error_last"]) < 5.0


def test_bf16_channels_last_training_follows_the_reference_trajectory(workspace, reference_run):
    """Tolerance for the fast path (bf16 autocast + channels_last) vs fp32: first logged loss
    within 0.01, mean |delta loss| over the trajectory < 0.03, final test error within 5 points
    (measured on CPU: 5e-5, 0.0064 and 1.6 points; bf16 alone: 0.0027 mean |delta loss|)."""
    metrics, loss, error = reference_run
    fast_metrics, loss_fast, error_fast = _run(workspace, "fast", channels_last=True, autocast_bf16=True)
    assert abs(loss[0] - loss_fast[0]) < 0.01
    assert _mean_abs_delta(loss, loss_fast) < 0.03
    assert len(error_fast) == len(error)
    assert abs(fast_metrics["error_last"] - metrics["error_last"]) < 5.0


def test_weak_no_grad_trains_end_to_end_and_gives_a_different_run(workspace, reference_run):
    """The algorithm-changing option runs end to end and gives a different run."""
    _, loss, _ = reference_run
    metrics, loss_ng, _ = _run(workspace, "weak_no_grad", weak_no_grad=True)
    assert metrics["steps"] == 24 and all(value == value for value in loss_ng)
    assert loss_ng != loss


def test_compiled_step_training_follows_the_reference_trajectory(workspace, reference_run):
    """``compile: step`` (forward + loss + backward, SGD step with a tensor learning rate, EMA
    update, compiled evaluation forward) is the same maths with fused kernels: tolerance as for
    channels_last (measured on CPU: first logged loss |delta| 1.2e-7, mean |delta loss| 0.00095
    and max 0.0036 over 24 steps, the same four test errors)."""
    metrics, loss, error = reference_run
    compiled_metrics, loss_compiled, error_compiled = _run(workspace, "compiled_step", compile="step")
    assert abs(loss[0] - loss_compiled[0]) < 1e-3
    assert _mean_abs_delta(loss, loss_compiled) < 0.02
    assert len(error_compiled) == len(error)
    assert abs(compiled_metrics["error_last"] - metrics["error_last"]) < 5.0
    assert compiled_metrics["speed"]["compile"] == "step"


def test_compiled_augmentation_gives_the_same_run_bit_for_bit(workspace, reference_run):
    """``compile_augment`` changes how the views are computed, not a pixel of them: same curves, same errors.
    Every strong and weak view of 24 steps (each of RandAugment's ops drawn many times) goes through the
    Inductor-compiled dense ops here, against the eager bucketed ones in the reference run."""
    metrics, loss, error = reference_run
    compiled_metrics, loss_compiled, error_compiled = _run(workspace, "compiled_augment", compile_augment=True)
    assert loss_compiled == loss and error_compiled == error
    assert compiled_metrics["error"] == metrics["error"]
