import pytest
import torch

from fixmatch_bench.checkpoint import CHECKPOINT_NAME, CheckpointError, load_for_resume, save_checkpoint

FINGERPRINT = {"run": "digits_20-fixmatch_ra-1", "threshold": 0.95, "train": {"steps": 100, "lr": 0.03}}


def test_save_is_atomic_and_round_trips(tmp_path):
    state = {"fingerprint": FINGERPRINT, "finished": False, "step": 7, "weights": torch.arange(3.0)}
    save_checkpoint(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no temporary file left behind
    loaded = load_for_resume(tmp_path, FINGERPRINT)
    assert loaded["step"] == 7 and torch.equal(loaded["weights"], torch.arange(3.0))


def test_no_checkpoint_or_a_finished_run_starts_from_scratch(tmp_path):
    assert load_for_resume(tmp_path, FINGERPRINT) is None
    save_checkpoint(tmp_path, {"fingerprint": {**FINGERPRINT, "threshold": 0.9}, "finished": True})
    assert load_for_resume(tmp_path, FINGERPRINT) is None


def test_an_unfinished_run_with_other_settings_is_refused_naming_the_differences(tmp_path):
    other = {**FINGERPRINT, "threshold": 0.9, "train": {"steps": 100, "lr": 0.1}}
    save_checkpoint(tmp_path, {"fingerprint": other, "finished": False})
    with pytest.raises(CheckpointError) as error:
        load_for_resume(tmp_path, FINGERPRINT)
    message = str(error.value)
    assert "threshold: checkpoint has 0.9, this run has 0.95" in message
    assert "train.lr: checkpoint has 0.1, this run has 0.03" in message
    assert f"delete {tmp_path} to start over" in message


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not a checkpoint"])
def test_a_corrupt_checkpoint_is_refused(tmp_path, damage):
    save_checkpoint(tmp_path, {"fingerprint": FINGERPRINT, "finished": False, "w": torch.zeros(1000)})
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_for_resume(tmp_path, FINGERPRINT)
