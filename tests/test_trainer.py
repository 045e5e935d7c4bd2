"""Real training on tiny data: resume equals never stopping, SIGTERM, NaN, checkpoints keyed by settings."""

import copy
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import torch
import yaml

from conftest import REPO, digits_workspace, wait_for_lines
from fixmatch_bench.core.errors import ParamsError
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import Run
from fixmatch_bench.data.prepared import PreparedDataChanged
from fixmatch_bench.train.checkpoint import RunLock, run_checkpoint_dir
from fixmatch_bench.train.run_data import load_run_data
from fixmatch_bench.train.state import _global_rng_states, _set_global_rng_states
from fixmatch_bench.train.trainer import (Interrupted, NonFiniteLoss, StopRequest, fingerprint, resolve_device,
                                          train)

TINY = {"steps": 12, "batch": 4, "uratio": 2, "eval_every": 4, "median_of_last": 2, "eval_batch": 256,
        "log_every": 2, "checkpoint_every": 4, "ema": 0.9}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return digits_workspace(tmp_path_factory.mktemp("trainer"), TINY)


def _with_checkpoints(params: dict, root, out: str) -> dict:
    """Each ``out`` keeps its own checkpoints, also when finished, so that runs can be compared."""
    return {**params, "checkpoints": {"dir": str(root / "checkpoints" / out), "keep_finished": True}}


def _train(workspace, out: str, method: str, params: dict | None = None, stop: StopRequest | None = None) -> dict:
    root, base = workspace
    return train(_with_checkpoints(params or base, root, out), Run("digits", 20, method, 1), root / "prepared/digits",
                 root / "splits/digits_20-1.json", root / out, stop=stop, progress=False)


def _checkpoint_dirs(workspace, out: str) -> list:
    return sorted((workspace[0] / "checkpoints" / out).iterdir())


def _final_state(workspace, out: str) -> dict:
    (directory,) = _checkpoint_dirs(workspace, out)
    return torch.load(directory / "state.pt", weights_only=True)


def _curves(workspace, out: str) -> dict[str, str]:
    curves = workspace[0] / out / "curves"
    return {str(path.relative_to(curves)): path.read_text() for path in sorted(curves.rglob("*.tsv"))}


def _assert_same_run(workspace, a: str, b: str, metrics_a: dict, metrics_b: dict) -> None:
    common = (set(metrics_a) & set(metrics_b)) - {"wall_time_s", "steps_per_s"}  # a file holds fewer fields
    assert common >= {"error", "error_last", "error_best", "mask_rate", "steps"}
    assert {k: metrics_a[k] for k in common} == {k: metrics_b[k] for k in common}
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
    with pytest.raises(Interrupted, match="stopped by request at step 5"):
        _train(workspace, "compiled/resumed", method, params, stop=StopRequest(after_step=5))
    root = workspace[0]
    for folder in (root, root / "checkpoints"):  # the same interrupted run, resumed a second way below
        shutil.copytree(folder / "compiled/resumed", folder / "compiled/resumed_eager")
    assert isinstance(_final_state(workspace, "compiled/resumed")["optimizer"]["param_groups"][0]["lr"], torch.Tensor)
    resumed = _train(workspace, "compiled/resumed", method, params)
    _assert_same_run(workspace, "compiled/straight", "compiled/resumed", reference, resumed)
    eager = _train(workspace, "compiled/resumed_eager", method)
    assert eager["steps"] == 12 and eager["speed"]["compile"] == "none"
    assert isinstance(_final_state(workspace, "compiled/resumed_eager")["optimizer"]["param_groups"][0]["lr"], float)


def test_sigterm_to_a_real_training_process_checkpoints_and_the_rerun_resumes(workspace):
    root, params = workspace
    longer = copy.deepcopy(params)
    longer["train"].update(steps=160, checkpoint_every=50, log_every=2)
    (root / "long.yaml").write_text(yaml.safe_dump(_with_checkpoints(longer, root, "sigterm")))
    command = [sys.executable, str(REPO / "pipeline/train.py"), "digits_20-fixmatch_ra-1",
               "--prepared", str(root / "prepared"), "--splits", str(root / "splits"),
               "--params", str(root / "long.yaml"), "--results", str(root / "sigterm"), "--models", str(root / "models")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(root / "sigterm/digits_20-fixmatch_ra-1/curves/train/loss.tsv", 3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at step" in stderr
    stopped_at = _final_state(workspace, "sigterm")["step"]
    assert 0 < stopped_at < 160 and not _final_state(workspace, "sigterm")["finished"]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    resumed = json.loads((root / "sigterm/digits_20-fixmatch_ra-1/metrics.json").read_text())
    reference = _train(workspace, "sigterm_reference", "fixmatch_ra", params=longer)
    (root / "sigterm/curves").symlink_to(root / "sigterm/digits_20-fixmatch_ra-1/curves")
    _assert_same_run(workspace, "sigterm_reference", "sigterm", reference, resumed)
    ema = torch.load(root / "models/digits_20-fixmatch_ra-1.pt", weights_only=True)
    assert all(torch.equal(tensor, _final_state(workspace, "sigterm")["ema"][name]) for name, tensor in ema.items())


def test_a_compiler_failure_stops_the_run_in_one_line_naming_the_speed_option_to_turn_off(workspace, tmp_path):
    """A machine whose Inductor cannot build kernels (no working C++ compiler for CPU kernels):
    the run stops before its first step with one line, no traceback and no silent eager fallback."""
    root, params = workspace
    compiled = copy.deepcopy(params)
    compiled["speed"].update(compile="step")
    (root / "compile.yaml").write_text(yaml.safe_dump(_with_checkpoints(compiled, root, "compile-fails")))
    command = [sys.executable, str(REPO / "pipeline/train.py"), "digits_20-fixmatch_ra-1",
               "--prepared", str(root / "prepared"), "--splits", str(root / "splits"),
               "--params", str(root / "compile.yaml"), "--results", str(root / "compile-fails"),
               "--models", str(root / "models-compile-fails")]
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: speed.compile=step failed on this machine (InductorError: ")
    assert "set speed.compile=none and re-run" in done.stderr
    assert not (root / "compile-fails/digits_20-fixmatch_ra-1/metrics.json").exists()


@pytest.mark.parametrize("checkpoint_every", [2, 40])
def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(workspace, checkpoint_every):
    root, params = workspace
    exploding = copy.deepcopy(params)
    exploding["train"].update(lr=100.0, steps=40, log_every=2, checkpoint_every=checkpoint_every)  # diverges by step ~10
    out = f"nan-{checkpoint_every}"
    with pytest.raises(NonFiniteLoss, match=r"the (loss|weights) became non-finite (at|by) step (\d+); stopping") as error:
        _train(workspace, out, "fixmatch_ra", params=exploding)
    if checkpoint_every == 40:  # diverged before its first checkpoint: the message says so
        assert str(error.value).endswith("; stopping, no checkpoint was written before it")
        assert not any(path.name == "state.pt" for path in (root / "checkpoints" / out).rglob("*"))
        return
    assert str(error.value).endswith("; stopping, the last good checkpoint is kept")
    bad_step = int(error.value.args[0].split(" step ")[1].split(";")[0])
    state = _final_state(workspace, out)
    assert state["step"] < bad_step and not state["finished"]
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values() if tensor.is_floating_point())


def test_other_settings_get_their_own_checkpoint_and_the_interrupted_run_still_resumes(workspace):
    root, params = workspace
    with pytest.raises(Interrupted):
        _train(workspace, "settings", "fixmatch_ra", stop=StopRequest(after_step=3))
    changed = copy.deepcopy(params)
    changed["methods"]["fixmatch_ra"]["threshold"] = 0.5
    other = _train(workspace, "settings", "fixmatch_ra", params=changed)
    assert other["steps"] == 12 and len(_checkpoint_dirs(workspace, "settings")) == 2
    states = [torch.load(d / "state.pt", weights_only=True) for d in _checkpoint_dirs(workspace, "settings")]
    assert sorted((s["fingerprint"]["method"]["threshold"], s["step"]) for s in states) == [(0.5, 12), (0.95, 3)]
    resumed = _train(workspace, "settings", "fixmatch_ra")
    straight = _train(workspace, "settings_straight", "fixmatch_ra")
    assert resumed["error"] == straight["error"] and _curves(workspace, "settings") == _curves(workspace, "settings_straight")


def test_a_finished_run_is_removed_unless_kept_and_a_finished_checkpoint_rewrites_the_outputs(workspace):
    root, params = workspace
    removed = {**params, "checkpoints": {"dir": str(root / "checkpoints/removed"), "keep_finished": False}}
    metrics = train(removed, Run("digits", 20, "supervised", 1), root / "prepared/digits",
                    root / "splits/digits_20-1.json", root / "removed", progress=False)
    assert list((root / "checkpoints/removed").iterdir()) == [] and metrics["evaluations"] == 3
    first = _train(workspace, "kept", "supervised")
    (root / "kept/metrics.json").unlink()
    # From the finished checkpoint: not a single step runs (a stop requested after step 1 never triggers).
    again = _train(workspace, "kept", "supervised", stop=StopRequest(after_step=1))
    timing = ("wall_time_s", "steps_per_s")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in first.items() if k not in timing}
    assert (root / "kept/metrics.json").exists()


def test_a_second_trainer_of_a_run_waits_for_the_first_then_resumes_from_its_checkpoint(workspace, capsys):
    with pytest.raises(Interrupted):
        _train(workspace, "locked", "fixmatch_ra", stop=StopRequest(after_step=2))
    (folder,) = _checkpoint_dirs(workspace, "locked")
    first = RunLock(folder)  # as another trainer of the same run (a parallel experiment) holds it
    assert first.try_acquire()
    threading.Timer(1.0, first.release).start()  # it stops after its checkpoint at step 2
    assert _train(workspace, "locked", "fixmatch_ra")["steps"] == 12
    output = capsys.readouterr().out
    assert f"digits_20-fixmatch_ra-1: waiting for another trainer of this run (pid {os.getpid()})" in output
    assert output.index("waiting for another trainer") < output.index("resuming at step 2 of 12")


def test_a_finished_run_waited_for_is_reused_without_training_and_removed_by_the_last_trainer(workspace, capsys):
    root, params = workspace
    removed = {**params, "checkpoints": {"dir": str(root / "checkpoints/shared"), "keep_finished": False}}

    def trainer(out: str, stop: StopRequest | None = None) -> dict:
        return train(removed, Run("digits", 20, "supervised", 1), root / "prepared/digits",
                     root / "splits/digits_20-1.json", root / out, stop=stop, progress=False)

    with pytest.raises(Interrupted):
        trainer("first", StopRequest(after_step=1))  # (creates the run's folder)
    (folder,) = sorted((root / "checkpoints/shared").iterdir())
    waiting = RunLock(folder)  # a second trainer of the run, waiting for the first
    first = trainer("first")
    assert (folder / "state.pt").exists()  # finished, kept for the trainer that waits
    waiting.release()
    second = trainer("second", StopRequest(after_step=1))  # reused: not a single step runs
    timing = ("wall_time_s", "steps_per_s")
    assert {k: v for k, v in second.items() if k not in timing} == {k: v for k, v in first.items() if k not in timing}
    assert list((root / "checkpoints/shared").iterdir()) == []  # the last trainer of the run removed it


@pytest.mark.parametrize("blocked", ["checkpoints", "results", "models"])
def test_an_unwritable_checkpoint_or_output_location_is_refused_in_one_line_before_training(workspace, blocked):
    """A file where the folder should be: refused for any user (root ignores permission bits)."""
    root, params = workspace
    base = root / f"unwritable-{blocked}"
    base.mkdir()
    (base / blocked).write_text("a file, not a folder")
    (root / f"{blocked}.yaml").write_text(yaml.safe_dump(
        {**params, "checkpoints": {"dir": str(base / "checkpoints" / "sub"), "keep_finished": False}}))
    command = [sys.executable, str(REPO / "pipeline/train.py"), "digits_20-fixmatch_ra-1",
               "--prepared", str(root / "prepared"), "--splits", str(root / "splits"),
               "--params", str(root / f"{blocked}.yaml"), "--results", str(base / "results" / "sub"),
               "--models", str(base / "models" / "sub")]
    if blocked != "checkpoints":
        (base / "checkpoints").mkdir()
    for other in {"results", "models"} - {blocked}:
        (base / other).mkdir()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and "is not writable" in done.stderr and str(base / blocked) in done.stderr
    assert "%" not in done.stdout  # no progress: refused before training


def test_a_checkpoint_resumes_only_on_the_device_type_it_was_made_on(workspace):
    """CPU and CUDA generators hold different kinds of state: the device type is part of the fingerprint,
    so a run on another device type gets its own checkpoint folder (simulated with the meta device)."""
    root, params = workspace
    typed, run = validate_params(params), Run("digits", 20, "fixmatch_ra", 1)
    data = load_run_data(root / "prepared/digits", root / "splits/digits_20-1.json", torch.device("cpu"))
    on_cpu = fingerprint(typed, run, data)
    elsewhere = fingerprint(typed, run, dataclasses.replace(data, test_images=data.test_images.to("meta")))
    assert (on_cpu["device"], elsewhere["device"]) == ("cpu", "meta")
    assert run_checkpoint_dir(root, run.key, on_cpu) != run_checkpoint_dir(root, run.key, elsewhere)


def test_the_global_random_states_resume_with_fewer_visible_gpus(monkeypatch):
    """A checkpoint saved with 4 visible GPUs restores the states of the devices visible now (simulated)."""
    saved = _global_rng_states()
    saved["cuda"] = [torch.full((16,), index, dtype=torch.uint8) for index in range(4)]
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append((index, int(state[0]))))
    _set_global_rng_states(saved)
    assert restored == [(0, 0), (1, 1)]


def test_a_device_the_run_cannot_use_is_refused_in_one_line_before_any_work(params, monkeypatch):
    cuda = copy.deepcopy(params)
    cuda["train"]["device"] = "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError, match=r"^invalid params: train.device = 'cuda' \(no CUDA device is available"):
        resolve_device(validate_params(cuda))
    reference = copy.deepcopy(params)
    reference["train"]["device"], reference["augment"]["impl"] = "auto", "reference"
    assert resolve_device(validate_params(reference)).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU, simulated
    with pytest.raises(ParamsError, match=r"^invalid params: augment.impl = 'reference' \(per-image PIL runs on the "
                                          r"CPU only, and train.device resolves to cuda here"):
        resolve_device(validate_params(reference))


def _file_size_limit(limit: int) -> None:
    """In a child process: no file may grow past ``limit`` bytes (a write past it fails with EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_stops_the_run_in_one_line_leaves_no_temporary_file_and_the_rerun_resumes(workspace, tmp_path):
    """The checkpoint folder on a tmpfs with room for one checkpoint but not a second beside it (where this
    user may mount one; elsewhere a file-size limit smaller than a checkpoint)."""
    root, params = workspace
    with pytest.raises(Interrupted):
        _train(workspace, "full", "fixmatch_ra", stop=StopRequest(after_step=4))
    (saved,) = _checkpoint_dirs(workspace, "full")
    size = (saved / "state.pt").stat().st_size
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2}", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    try:
        folder = small / saved.name
        shutil.copytree(saved, folder)  # the last checkpoint, at step 4
        (root / "full.yaml").write_text(yaml.safe_dump(
            {**params, "checkpoints": {"dir": str(small), "keep_finished": False}}))
        command = [sys.executable, str(REPO / "pipeline/train.py"), "digits_20-fixmatch_ra-1",
                   "--prepared", str(root / "prepared"), "--splits", str(root / "splits"),
                   "--params", str(root / "full.yaml"), "--results", str(tmp_path / "results"),
                   "--models", str(tmp_path / "models")]
        limit = None if mounted else lambda: _file_size_limit(size // 2)
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limit)
        error = done.stderr.splitlines()[-1]  # after the progress lines of steps 5 to 8
        assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("error:") == 1, done.stderr
        assert error.startswith(f"error: cannot write state.pt in {folder}: "), done.stderr
        assert re.search(r" \(\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free there, \d+\.\d KiB needed\)$", error), error
        assert sorted(path.name for path in folder.iterdir()) == [".lock", ".waiting", "state.pt"]  # no temporary
        assert torch.load(folder / "state.pt", weights_only=True)["step"] == 4  # the last checkpoint is intact
        if mounted:
            subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(small)], check=True)  # space freed
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "digits_20-fixmatch_ra-1: resuming at step 4 of 12" in again.stdout, again.stderr
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=True)


def test_a_prepared_file_changed_with_its_modification_time_kept_is_refused_when_a_run_starts(workspace, tmp_path):
    root, params = workspace
    prepared = tmp_path / "prepared/digits"
    shutil.copytree(root / "prepared/digits", prepared)
    labels = prepared / "test_labels.npy"
    before = labels.stat()
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1  # one label, same size
    labels.write_bytes(bytes(data))
    os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns))  # DVC's state would call it unchanged
    with pytest.raises(PreparedDataChanged) as error:
        train(_with_checkpoints(params, tmp_path, "changed"), Run("digits", 20, "supervised", 1), prepared,
              root / "splits/digits_20-1.json", tmp_path / "out", progress=False)
    assert str(error.value) == (f"prepared file {labels} does not match the hash recorded in {prepared / 'info.json'} "
                                f"(changed after the prepare stage wrote it); restore it with "
                                f"`dvc checkout --relink {prepared}`")
    assert not (tmp_path / "out/metrics.json").exists()
