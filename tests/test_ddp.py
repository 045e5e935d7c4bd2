"""DDP on CPU (gloo, 2 processes under torchrun) against one process on the same global batch.

Two ranks see the same global batch and augmentations as one process, but
each normalises its own share with BatchNorm batch statistics (docs/protocol.md §7.3:
BN is per device) and rank 0's running statistics are kept. The reference is
therefore one process whose network normalises the same per-rank groups
(:func:`per_rank_batchnorm`); what remains is floating-point summation order
(gradient all-reduce, DA and window means over ranks, one thread per rank).
"""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import REPO, wait_for_lines
from fixmatch_bench.train import state as train_state
from fixmatch_bench.train import trainer
from fixmatch_bench.core.runs import Run
from fixmatch_bench.train.distributed import SINGLE_PROCESS, World, launch
from fixmatch_bench.models.wide_resnet import WideResNet
from test_trainer import workspace  # noqa: F401 (the tiny digits workspace fixture)

RANKS = 2
# Tolerance of curves, weights and CTAugment rates after 12 steps. Measured: weights bit-identical, curves
# within 6e-8 relative (the window means are summed over ranks in another order). A plain single process
# (BN over the whole global batch) differs by ~1e-2 in the loss and ~0.1 in the weights.
RTOL, ATOL = 1e-5, 1e-6
# A low threshold so that pseudo-labels pass in 12 steps and the unlabeled loss and DA are exercised.
THRESHOLD = 0.15


def _low_threshold(params: dict, method: str = "fixmatch_cta_da") -> dict:
    """``params`` with ``method``'s block at THRESHOLD (the composed blocks hold their own threshold)."""
    return {**params, "methods": {**params["methods"], method: {**params["methods"][method], "threshold": THRESHOLD}}}


def per_rank_batchnorm(batch: int, uratio: int, ranks: int) -> type[WideResNet]:
    """WideResNet whose training forward normalises each rank's share separately, as DDP ranks do.

    The concatenated [labeled, weak, strong] input is cut into ``ranks`` groups
    [labeled_r, weak_r, strong_r] (rank r's share); BN running statistics keep
    group 0's update only (rank 0's buffers are the authoritative ones).
    """
    class PerRankBatchNorm(WideResNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training:
                return super().forward(x)
            sizes = [batch, batch * uratio, batch * uratio] if len(x) == batch * (1 + 2 * uratio) else [batch]
            parts = [part.chunk(ranks) for part in x.split(sizes)]
            norms = [module for module in self.modules() if isinstance(module, nn.BatchNorm2d)]
            outputs = []
            for rank in range(ranks):
                group = [part[rank] for part in parts]
                for norm in norms:  # batch statistics for every group, running statistics from group 0 only
                    norm.track_running_stats = rank == 0
                outputs.append(super().forward(torch.cat(group)).split([len(piece) for piece in group]))
            for norm in norms:
                norm.track_running_stats = True
            return torch.cat([outputs[rank][part] for part in range(len(sizes)) for rank in range(ranks)])

    return PerRankBatchNorm


def _grouped_reference(root, params: dict, method: str, out: str, monkeypatch) -> dict:
    """One process, one thread (as each torchrun rank), whose network normalises the per-rank groups."""
    monkeypatch.setattr(train_state, "WideResNet", per_rank_batchnorm(params["train"]["batch"], params["train"]["uratio"],
                                                                  RANKS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = Run("digits", 20, method, 1)
        return trainer.train(_checkpoints_in(params, root, out), run, root / "prepared/digits",
                             root / "splits/digits_20-1.json", root / out / run.key, progress=False)
    finally:
        torch.set_num_threads(threads)


def _checkpoints_in(params: dict, root, out: str) -> dict:
    """Each ``out`` keeps its own checkpoints, also when finished, so that runs can be compared."""
    return {**params, "checkpoints": {"dir": str(root / "checkpoints" / out), "keep_finished": True}}


def _torchrun(root, method: str, out: str, params: dict, **kwargs) -> subprocess.Popen:
    (root / f"{out}.yaml").write_text(json.dumps(_checkpoints_in(params, root, out)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(RANKS), "--standalone",
               str(REPO / "pipeline/train.py"), f"digits_20-{method}-1",
               "--prepared", str(root / "prepared"), "--splits", str(root / "splits"),
               "--params", str(root / f"{out}.yaml"), "--results", str(root / out), "--models", str(root / out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                            **kwargs)


def _tsv(path) -> list[tuple[int, float]]:
    rows = path.read_text().splitlines()[1:]
    return [(int(step), float(value)) for step, value in (row.split("\t") for row in rows)]


def _curves(root, out: str) -> dict[str, list[tuple[int, float]]]:
    (curves,) = (root / out).glob("*/curves")
    return {str(path.relative_to(curves)): _tsv(path) for path in sorted(curves.rglob("*.tsv"))}


def _state(root, out: str) -> dict:
    (directory,) = (root / "checkpoints" / out).iterdir()
    return torch.load(directory / "state.pt", weights_only=True)


def _assert_close_runs(root, a: str, b: str) -> None:
    curves_a, curves_b = _curves(root, a), _curves(root, b)
    assert curves_a.keys() == curves_b.keys()
    for name, rows in curves_a.items():
        assert [step for step, _ in rows] == [step for step, _ in curves_b[name]], name
        torch.testing.assert_close(torch.tensor([v for _, v in rows]), torch.tensor([v for _, v in curves_b[name]]),
                                   rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")
    state_a, state_b = _state(root, a), _state(root, b)
    assert state_a["step"] == state_b["step"] and state_a["finished"] == state_b["finished"]
    for part in ("model", "ema"):
        for name, tensor in state_a[part].items():
            torch.testing.assert_close(tensor, state_b[part][name], rtol=RTOL, atol=ATOL,
                                       msg=lambda m, name=f"{part}.{name}": f"{name}: {m}")
    if "rates" in state_a["augmenter"]:
        torch.testing.assert_close(state_a["augmenter"]["rates"], state_b["augmenter"]["rates"], rtol=RTOL, atol=ATOL)
    for name in ("sample", "augment"):  # the same global batches and augmentations were drawn
        assert torch.equal(state_a["generators"][name], state_b["generators"][name])


@pytest.fixture(scope="module")
def two_ranks(workspace):  # noqa: F811
    """One 12-step FixMatch+CTA+DA run on 2 gloo ranks (launched once for the tests below)."""
    root, params = workspace
    process = _torchrun(root, "fixmatch_cta_da", "ddp", _low_threshold(params))
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    return root, json.loads((root / "ddp/digits_20-fixmatch_cta_da-1/metrics.json").read_text()), stdout


def test_two_ranks_follow_one_process_with_the_same_per_rank_batchnorm_groups(
        workspace, two_ranks, monkeypatch):  # noqa: F811
    root, params = workspace
    _, ddp_metrics, stdout = two_ranks
    reference = _grouped_reference(root, _low_threshold(params), "fixmatch_cta_da", "grouped", monkeypatch)
    _assert_close_runs(root, "ddp", "grouped")
    assert reference["world_size"] == 1
    for key in ("error", "error_last", "error_best", "steps", "mask_rate", "pseudo_label_accuracy"):
        assert ddp_metrics[key] == pytest.approx(reference[key], rel=RTOL, abs=ATOL), key
    curves = _curves(root, "ddp")
    assert any(0 < rate < 1 for _, rate in curves["train/mask_rate.tsv"])  # partial masks: a real threshold
    assert max(loss for _, loss in curves["train/loss_u.tsv"]) > 0
    assert stdout.count("digits_20-fixmatch_cta_da-1: error") == 1  # only rank 0 reports


def test_only_rank_0_writes_and_every_rank_holds_the_same_state(two_ranks):
    root, metrics, _ = two_ranks
    assert sorted(path.name for path in (root / "ddp").iterdir()) == ["digits_20-fixmatch_cta_da-1",
                                                                     "digits_20-fixmatch_cta_da-1.pt"]
    assert sorted(path.name for path in (root / "ddp/digits_20-fixmatch_cta_da-1").iterdir()) == ["curves",
                                                                                               "metrics.json"]
    (checkpoint,) = (root / "checkpoints/ddp").iterdir()
    assert sorted(path.name for path in checkpoint.iterdir()) == [".lock", ".waiting", "state.pt"]
    assert len(_curves(root, "ddp")["eval/error.tsv"]) == 3 and metrics["steps"] == 12 and _state(root, "ddp")["finished"]


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_the_rerun_resumes(workspace, monkeypatch):  # noqa: F811
    root, params = workspace
    longer = {**params, "train": {**params["train"], "steps": 80, "checkpoint_every": 1000, "log_every": 2}}
    process = _torchrun(root, "fixmatch_ra", "ddp_sigterm", longer, start_new_session=True)
    loss = root / "ddp_sigterm/digits_20-fixmatch_ra-1/curves/train/loss.tsv"
    wait_for_lines(loss, 3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "stopped by SIGTERM at step" in stderr
    stopped = _state(root, "ddp_sigterm")
    assert 0 < stopped["step"] < 80 and not stopped["finished"]
    assert _tsv(loss)[-1][0] <= stopped["step"]

    resumed = _torchrun(root, "fixmatch_ra", "ddp_sigterm", longer)
    _, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, stderr
    assert _state(root, "ddp_sigterm")["finished"]
    steps = [step for step, _ in _tsv(loss)]
    assert steps == list(range(2, 81, 2))  # no step lost or logged twice across the stop
    _grouped_reference(root, longer, "fixmatch_ra", "grouped_long", monkeypatch)
    _assert_close_runs(root, "ddp_sigterm", "grouped_long")  # the resumed run is the uninterrupted one


def test_a_nan_loss_stops_every_rank_and_keeps_the_last_good_checkpoint(workspace):  # noqa: F811
    root, params = workspace
    exploding = {**params, "train": {**params["train"], "lr": 100.0, "steps": 40, "log_every": 2,
                                     "checkpoint_every": 2}}  # diverges after ~10 steps
    process = _torchrun(root, "fixmatch_ra", "ddp_nan", exploding)
    _, stderr = process.communicate(timeout=120)  # no rank may hang in a collective the others left
    assert process.returncode != 0
    errors = re.findall(r"error: the (?:loss|weights) became non-finite (?:at|by) step \d+", stderr)
    assert len(errors) == RANKS and len(set(errors)) == 1, stderr  # every rank stops, at the same step
    state = _state(root, "ddp_nan")
    assert 0 < state["step"] < 40 and not state["finished"]
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values() if tensor.is_floating_point())


@pytest.mark.parametrize("rank, world_size, size, expected", [(0, 2, 8, slice(0, 4)), (1, 2, 8, slice(4, 8)),
                                                               (2, 3, 6, slice(4, 6)), (0, 1, 5, slice(0, 5))])
def test_each_rank_takes_its_contiguous_share_of_the_global_batch(rank, world_size, size, expected):
    assert World(rank=rank, world_size=world_size).share(size, "train.batch") == expected


def test_a_global_batch_not_divisible_by_the_ranks_is_refused():
    with pytest.raises(ValueError, match=r"train.batch \* train.uratio = 14 is not divisible by the number of "
                                         r"processes 4: .*use a multiple of 4"):
        World(rank=0, world_size=4).share(14, "train.batch * train.uratio")


def test_without_torchrun_nothing_is_initialised(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with launch("cpu") as world:
        assert world is SINGLE_PROCESS and not world.distributed and world.is_main
        assert not torch.distributed.is_initialized()
        values = torch.tensor([1.0, 3.0])
        assert world.mean(values) is values and world.gather(values) is values
        assert world.any(True) and not world.any(False) and world.from_main(lambda: 2.5) == 2.5


def test_a_partial_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match="environment has WORLD_SIZE but not LOCAL_RANK, RANK: start"), launch("cpu"):
        pass
