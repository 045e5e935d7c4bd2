from pathlib import Path

import pytest
import torch

from fixmatch_bench.train.checkpoint import (CHECKPOINT_NAME, CheckpointError, checkpoint_root, load_for_resume,
                                             run_checkpoint_dir, save_checkpoint)

FINGERPRINT = {"run": "digits_20-fixmatch_ra-1", "method": {"impl": "fixmatch", "threshold": 0.95},
               "train": {"steps": 100, "lr": 0.03}}


def test_save_is_atomic_and_round_trips(tmp_path):
    state = {"fingerprint": FINGERPRINT, "finished": False, "step": 7, "weights": torch.arange(3.0)}
    save_checkpoint(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no temporary file left behind
    loaded = load_for_resume(tmp_path, FINGERPRINT)
    assert loaded["step"] == 7 and torch.equal(loaded["weights"], torch.arange(3.0))


def test_no_checkpoint_starts_from_scratch_and_a_finished_one_is_returned(tmp_path):
    assert load_for_resume(tmp_path, FINGERPRINT) is None
    save_checkpoint(tmp_path, {"fingerprint": FINGERPRINT, "finished": True, "step": 100})
    assert load_for_resume(tmp_path, FINGERPRINT)["step"] == 100


def test_each_run_and_fingerprint_has_its_own_folder_under_a_configurable_root(tmp_path):
    first = run_checkpoint_dir(tmp_path, "digits_20-fixmatch_ra-1", FINGERPRINT)
    assert first.parent == tmp_path and first.name.startswith("digits_20-fixmatch_ra-1-")
    assert first == run_checkpoint_dir(tmp_path, "digits_20-fixmatch_ra-1", dict(reversed(FINGERPRINT.items())))
    assert first != run_checkpoint_dir(tmp_path, "digits_20-fixmatch_ra-1", {**FINGERPRINT, "method": {"impl": "fixmatch", "threshold": 0.9}})
    assert checkpoint_root("/shared/ckpt", {"FIXMATCH_CHECKPOINTS": "/elsewhere"}) == Path("/shared/ckpt")
    assert checkpoint_root(None, {"FIXMATCH_CHECKPOINTS": "/elsewhere"}) == Path("/elsewhere")
    assert checkpoint_root(None, {"XDG_CACHE_HOME": "/cache"}) == Path("/cache/fixmatch-bench/checkpoints")


def test_a_folder_holding_a_run_with_other_settings_is_refused_naming_the_differences(tmp_path):
    other = {**FINGERPRINT, "method": {"impl": "fixmatch", "threshold": 0.9}, "train": {"steps": 100, "lr": 0.1}}
    save_checkpoint(tmp_path, {"fingerprint": other, "finished": False})
    with pytest.raises(CheckpointError) as error:
        load_for_resume(tmp_path, FINGERPRINT)
    message = str(error.value)
    assert "method.threshold: checkpoint has 0.9, this run has 0.95" in message
    assert "train.lr: checkpoint has 0.1, this run has 0.03" in message
    assert f"Delete {tmp_path} to start over" in message


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not a checkpoint"])
def test_a_corrupt_checkpoint_is_refused(tmp_path, damage):
    save_checkpoint(tmp_path, {"fingerprint": FINGERPRINT, "finished": False, "w": torch.zeros(1000)})
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_for_resume(tmp_path, FINGERPRINT)
