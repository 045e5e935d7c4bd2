"""Real training on tiny data: resume equals never stopping, SIGTERM, NaN, mismatched checkpoints."""

import copy
import json
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO, digits_workspace, wait_for_lines
from fixmatch_bench.checkpoint import CheckpointError
from fixmatch_bench.config import Run
from fixmatch_bench.trainer import Interrupted, NonFiniteLoss, StopRequest, train

TINY = {"steps": 12, "batch": 4, "uratio": 2, "eval_every": 4, "median_of_last": 2, "eval_batch": 256,
        "log_every": 2, "checkpoint_every": 4, "ema": 0.9}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return digits_workspace(tmp_path_factory.mktemp("trainer"), TINY)


def _train(workspace, out: str, method: str, params: dict | None = None, stop: StopRequest | None = None) -> dict:
    root, base = workspace
    return train(params or base, Run("digits", 20, method, 1), root / "prepared/digits",
                 root / "splits/digits_20-1.json", root / out, stop=stop, progress=False)


def _final_state(workspace, out: str) -> dict:
    return torch.load(workspace[0] / out / "checkpoint/state.pt", weights_only=True)


def _curves(workspace, out: str) -> dict[str, str]:
    live = workspace[0] / out / "live/plots/metrics"
    return {str(path.relative_to(live)): path.read_text() for path in sorted(live.rglob("*.tsv"))}


def _assert_same_run(workspace, a: str, b: str, metrics_a: dict, metrics_b: dict) -> None:
    timing = ("wall_time_s", "steps_per_s")
    assert {k: v for k, v in metrics_a.items() if k not in timing} == {k: v for k, v in metrics_b.items() if k not in timing}
    state_a, state_b = _final_state(workspace, a), _final_state(workspace, b)
    for part in ("model", "ema"):
        for name, tensor in state_a[part].items():
            assert torch.equal(tensor, state_b[part][name]), f"{part}.{name} differs"
    assert torch.equal(state_a["augmenter"].get("rates", torch.zeros(1)), state_b["augmenter"].get("rates", torch.zeros(1)))
    assert _curves(workspace, a) == _curves(workspace, b)


@pytest.mark.parametrize("method", ["fixmatch_ra", "fixmatch_cta_da", "supervised"])
def test_a_run_stopped_and_resumed_is_bit_identical_to_an_uninterrupted_one(workspace, method):
    reference = _train(workspace, f"{method}/straight", method)
    with pytest.raises(Interrupted, match="stopped by request at step 5"):
        _train(workspace, f"{method}/resumed", method, stop=StopRequest(after_step=5))
    assert _final_state(workspace, f"{method}/resumed")["step"] == 5
    resumed = _train(workspace, f"{method}/resumed", method)
    _assert_same_run(workspace, f"{method}/straight", f"{method}/resumed", reference, resumed)
    assert reference["evaluations"] == 3 and reference["steps"] == 12


def test_under_compile_step_a_stopped_and_resumed_run_is_bit_identical_and_resumes_eagerly_too(workspace):
    """The compiled whole step (loss, SGD with a tensor learning rate, EMA, with distribution
    alignment and CTAugment probes) resumes exactly; its checkpoint also resumes without compiling."""
    params = copy.deepcopy(workspace[1])
    params["speed"]["compile"] = "step"
    method = "fixmatch_cta_da"
    reference = _train(workspace, "compiled/straight", method, params)
    for out in ("compiled/resumed", "compiled/resumed_eager"):
        with pytest.raises(Interrupted, match="stopped by request at step 5"):
            _train(workspace, out, method, params, stop=StopRequest(after_step=5))
    assert isinstance(_final_state(workspace, "compiled/resumed")["optimizer"]["param_groups"][0]["lr"], torch.Tensor)
    resumed = _train(workspace, "compiled/resumed", method, params)
    _assert_same_run(workspace, "compiled/straight", "compiled/resumed", reference, resumed)
    eager = _train(workspace, "compiled/resumed_eager", method)
    assert eager["steps"] == 12 and eager["speed"]["compile"] == "none"
    assert isinstance(_final_state(workspace, "compiled/resumed_eager")["optimizer"]["param_groups"][0]["lr"], float)


def test_sigterm_to_a_real_training_process_checkpoints_and_the_rerun_resumes(workspace):
    root, params = workspace
    longer = copy.deepcopy(params)
    longer["train"].update(steps=400, checkpoint_every=100, log_every=2)
    (root / "long.yaml").write_text(yaml.safe_dump(longer))
    command = [sys.executable, str(REPO / "pipeline/train.py"), "--cell", "digits_20", "--method", "fixmatch_ra",
               "--fold", "1", "--prepared", str(root / "prepared"), "--splits", str(root / "splits"),
               "--params", str(root / "long.yaml"), "--out", str(root / "sigterm")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(root / "sigterm/live/plots/metrics/train/loss.tsv", 3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at step" in stderr
    stopped_at = _final_state(workspace, "sigterm")["step"]
    assert 0 < stopped_at < 400 and not _final_state(workspace, "sigterm")["finished"]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    resumed = json.loads((root / "sigterm/metrics.json").read_text())
    reference = _train(workspace, "sigterm_reference", "fixmatch_ra", params=longer)
    _assert_same_run(workspace, "sigterm_reference", "sigterm", reference, resumed)


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(workspace):
    root, params = workspace
    exploding = copy.deepcopy(params)
    exploding["train"].update(lr=100.0, steps=40, log_every=2, checkpoint_every=2)  # diverges after ~10 steps
    with pytest.raises(NonFiniteLoss, match=r"the (loss|weights) became non-finite (at|by) step (\d+); stopping") as error:
        _train(workspace, "nan", "fixmatch_ra", params=exploding)
    bad_step = int(error.value.args[0].split(" step ")[1].split(";")[0])
    state = _final_state(workspace, "nan")
    assert state["step"] < bad_step and not state["finished"]
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values() if tensor.is_floating_point())


def test_resuming_with_other_settings_is_refused(workspace):
    root, params = workspace
    with pytest.raises(Interrupted):
        _train(workspace, "mismatch", "fixmatch_ra", stop=StopRequest(after_step=3))
    changed = copy.deepcopy(params)
    changed["threshold"] = 0.5
    with pytest.raises(CheckpointError, match="threshold: checkpoint has 0.95, this run has 0.5"):
        _train(workspace, "mismatch", "fixmatch_ra", params=changed)
