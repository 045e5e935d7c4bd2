"""Experiments run in parallel (`dvc queue start -j 2`) that share a run: the second trainer waits for
the first and reuses its finished run, and both experiments end as sequential runs of their stages do."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import REPO, digits_workspace, dvc, repo_on_suite
from fixmatch_bench.tools.compose import write_params
from fixmatch_bench.core.params import load_params
from fixmatch_bench.core.runs import Run
from fixmatch_bench.train.checkpoint import RunLock, run_checkpoint_dir
from fixmatch_bench.train.run_data import load_run_data
from fixmatch_bench.train.trainer import fingerprint
from test_pipeline import MINI_SUITE

THRESHOLDS = (0.1, 0.9)  # 0.1 keeps every pseudo-label of the 24-step runs, 0.9 none: two different results
SHARED = "digits_20-supervised-1"  # the run both experiments need
TIMING = ("wall_time_s", "steps_per_s")


def _compared(metrics: dict) -> dict:
    """A run's metrics but its timings (`dvc exp show` leaves null ones out)."""
    return {key: value for key, value in metrics.items() if key not in TIMING and value is not None}


def _lock_holders(path: Path) -> int:
    """How many open files hold a ``flock`` on ``path`` (Linux's /proc/locks)."""
    stat = path.stat()
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino} "
    return sum(inode in line and "->" not in line for line in Path("/proc/locks").read_text().splitlines())


def _sequential_metrics(workspace: Path, repo: Path, threshold: float, run: str) -> dict:
    """``run``'s metrics as its stage command computes them alone, in a fresh process."""
    out = workspace / f"sequential-{threshold}"
    out.mkdir(exist_ok=True)
    write_params(out / "params.yaml", [f"threshold={threshold}"], repo / "conf")
    command = [sys.executable, str(REPO / "pipeline/train.py"), run, "--params", str(out / "params.yaml"),
               "--prepared", str(workspace / "prepared"), "--splits", str(workspace / "splits"),
               "--results", str(out / "results"), "--models", str(out / "models")]
    env = {**os.environ, "FIXMATCH_CHECKPOINTS": str(out / "checkpoints")}
    subprocess.run(command, check=True, capture_output=True, env=env)
    return _compared(json.loads((out / "results" / run / "metrics.json").read_text()))


def _experiment_metrics(repo: Path) -> dict[float, dict[str, dict]]:
    """Each queued experiment's runs' metrics, by its threshold: `dvc exp show` names each run's
    metrics.json (a DVC-cached output) by its hash in DVC's cache."""
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    result = {}
    for experiment in (exp for rev in shown for exp in rev.get("experiments") or []):
        data = experiment["revs"][0]["data"]
        threshold = data["params"]["params.yaml"]["data"]["threshold"]
        digests = {path.split("/")[1]: out["hash"] for path, out in data["outs"].items()
                   if path.startswith("results/") and path.endswith("/metrics.json")}
        result[threshold] = {run: json.loads((repo / ".dvc/cache/files/md5" / digest[:2] / digest[2:]).read_text())
                             for run, digest in digests.items()}
    return result


def test_two_queued_experiments_sharing_a_run_both_finish_with_the_metrics_of_sequential_runs(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("FIXMATCH_CHECKPOINTS", str(checkpoints))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two trainers on two cores, and the same threads in both ways
    repo = repo_on_suite(tmp_path / "repo", "mini", MINI_SUITE)
    workspace, _ = digits_workspace(tmp_path / "data", {})  # the prepared data and split the stages will make
    data = load_run_data(workspace / "prepared/digits", workspace / "splits/digits_20-1.json", torch.device("cpu"))
    folder = run_checkpoint_dir(checkpoints, SHARED, fingerprint(load_params(repo / "params.yaml"),
                                                                 Run("digits", 20, "supervised", 1), data))
    held = RunLock(folder)  # until both experiments' trainers wait for it: they then surely run at once
    assert held.try_acquire()
    for threshold in THRESHOLDS:
        dvc(repo, "exp", "run", "--queue", "-S", f"threshold={threshold}", f"train@{SHARED}",
            "train@digits_20-fixmatch_ra-1")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # the workers run `dvc`
    with open(tmp_path / "queue.log", "w") as log:  # not a pipe: the workers it starts would hold it open
        subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    deadline = time.monotonic() + 300
    while _lock_holders(folder / ".waiting") < 3:  # this test and both trainers
        assert time.monotonic() < deadline, (tmp_path / "queue.log").read_text()
        time.sleep(0.2)
    held.release()
    while "Queued" in (status := dvc(repo, "queue", "status").stdout) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status

    logs = [dvc(repo, "queue", "logs", line.split()[1]).stdout for line in status.splitlines() if "Success" in line]
    assert all(f"{SHARED}: waiting for another trainer of this run" in log for log in logs), logs
    assert sum(f"{SHARED}: resuming at step 24 of 24" in log for log in logs) == 1, logs  # trained once, reused once
    assert list(checkpoints.iterdir()) == []  # the last trainer of the finished run removed its folder
    experiments = _experiment_metrics(repo)
    assert sorted(experiments) == sorted(THRESHOLDS)
    supervised = _sequential_metrics(workspace, repo, THRESHOLDS[0], SHARED)  # the threshold plays no part
    for threshold, runs in experiments.items():
        assert _compared(runs[SHARED]) == supervised, threshold
        assert _compared(runs["digits_20-fixmatch_ra-1"]) == _sequential_metrics(
            workspace, repo, threshold, "digits_20-fixmatch_ra-1"), threshold
    assert experiments[0.1]["digits_20-fixmatch_ra-1"]["mask_rate"] > experiments[0.9]["digits_20-fixmatch_ra-1"]["mask_rate"]
