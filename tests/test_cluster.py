"""`python -m fixmatch_bench.tools.cluster` against a real one-node SLURM cluster on localhost
(tests/slurm_cluster.py): results come back through DVC equal to a local `dvc repro`, a requeued
run resumes from its checkpoint, failures are visible, and submitting again skips what is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import dvc, repo_on_suite
from fixmatch_bench.tools.cluster import steps_done
from slurm_cluster import Cluster, start_cluster
from test_pipeline import MINI_SUITE

RUNS = ("digits_20-supervised-1", "digits_20-fixmatch_ra-1")
BASELINE = json.dumps({"suite": "mini", "cells": {  # wide: this suite's 24 steps learn little
    "digits_20-supervised": {"mean": 50.0, "tolerance": 60.0, "sigma_mean": 20.0},
    "digits_20-fixmatch_ra": {"mean": 50.0, "tolerance": 60.0, "sigma_mean": 20.0}}})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Each job trains on one CPU (OMP_NUM_THREADS=1): the local reference does the same, so that
    the comparison can be exact."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _repo(path: Path, suite: str) -> Path:
    return repo_on_suite(path, "mini", suite, {"reports/baseline/mini.json": BASELINE})


def _cluster_cli(cluster: Cluster, repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**cluster.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.cluster", *args], cwd=repo, env=env,
                          capture_output=True, text=True)


def _submit(cluster: Cluster, repo: Path) -> dict:
    done = _cluster_cli(cluster, repo, "submit")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((repo / ".cluster/submission.json").read_text())


def _jobs(record: dict) -> list[str]:
    return [record["upstream"], *record["runs"].values(), record["final"]]


def _logs(repo: Path) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text()}" for path in sorted((repo / ".cluster/logs").glob("*")))


def _curves(repo: Path, run: str) -> dict[str, str]:
    folder = repo / "results" / run / "curves"
    return {str(path.relative_to(folder)): path.read_text() for path in sorted(folder.rglob("*.tsv"))}


def _error(repo: Path, run: str) -> float:
    return json.loads((repo / "results" / run / "metrics.json").read_text())["error"]


def _errors(repo: Path) -> dict[str, float]:
    return {run: _error(repo, run) for run in RUNS}


def test_a_submitted_suite_comes_back_through_dvc_equal_to_a_local_repro(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("FIXMATCH_CHECKPOINTS", str(tmp_path / "local-checkpoints"))
    repo = _repo(tmp_path / "repo", MINI_SUITE)
    started = time.monotonic()
    record = _submit(cluster, repo)
    states = cluster.wait(_jobs(record))
    on_cluster = time.monotonic() - started
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(repo))
    final = (repo / ".cluster/logs/final.log").read_text()
    assert "Running stage 'train@" not in final, final  # every run, supervised included, is a train@ stage
    assert final.count("is cached - skipping run, checking out outputs") == len(RUNS), final
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}

    reference = _repo(tmp_path / "reference", MINI_SUITE)
    started = time.monotonic()
    dvc(reference, "repro")
    local = time.monotonic() - started
    assert (repo / "reports/results.csv").read_text() == (reference / "reports/results.csv").read_text()
    assert _errors(repo) == _errors(reference)
    for run in RUNS:
        assert _curves(repo, run) == _curves(reference, run)
    print(f"\nwall time: SLURM-submitted {on_cluster:.0f} s, local dvc repro {local:.0f} s")

    status = _cluster_cli(cluster, repo, "status")
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == len(RUNS) + 2, status.stdout
    assert "24/24" in status.stdout
    again = _submit(cluster, repo)  # nothing is missing: no run job, the final job restores nothing new
    assert again["runs"] == {} and sorted(again["skipped"]) == sorted(RUNS)
    assert set(cluster.wait(_jobs(again)).values()) == {"COMPLETED"}, _logs(repo)


LONGER = (MINI_SUITE.replace("steps: 24", "steps: 240").replace("eval_every: 8", "eval_every: 80")
          .replace("checkpoint_every: 16", "checkpoint_every: 8"))


def _wait_for_steps(repo: Path, run: str, steps: int, deadline: float) -> None:
    while steps_done(repo / ".cluster/worktrees" / run, run) < steps and time.monotonic() < deadline:
        time.sleep(0.2)


def test_a_requeued_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(cluster, tmp_path, monkeypatch):
    """Two interruptions of one run: `scontrol requeue` from outside, then the signal SLURM sends
    before the time limit (--signal=B:USR1@...: sent here by hand, not waited for), on which the job
    requeues itself. Each time the trainer checkpoints and the requeued job resumes."""
    monkeypatch.setenv("FIXMATCH_CHECKPOINTS", str(tmp_path / "local-checkpoints"))
    repo = _repo(tmp_path / "repo", LONGER)
    record = _submit(cluster, repo)
    run = "digits_20-fixmatch_ra-1"
    job, deadline = record["runs"][run], time.monotonic() + 300
    _wait_for_steps(repo, run, 40, deadline)
    requeued = cluster.run("scontrol", "requeue", job)
    assert requeued.returncode == 0, requeued.stderr
    _wait_for_steps(repo, run, 120, deadline)
    signalled = cluster.run("scancel", "--batch", "--signal=USR1", job)
    assert signalled.returncode == 0, signalled.stderr
    states = cluster.wait(_jobs(record))
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(repo))
    log = (repo / ".cluster/logs" / f"{run}.log").read_text()
    assert f"fixmatch-bench: time limit near, requeueing job {job}" in log
    resumed = [int(line.split("step ")[1].split()[0]) for line in log.splitlines()
               if f"{run}: resuming at step" in line]
    assert len(resumed) == 2 and 0 < resumed[0] < resumed[1] < 240, log
    print(f"\nrequeued at steps {resumed}; error {_error(repo, run):.2f}")

    reference = _repo(tmp_path / "reference", LONGER)
    dvc(reference, "repro", f"train@{run}")  # this run alone, uninterrupted
    assert _error(repo, run) == _error(reference, run)
    assert _curves(repo, run) == _curves(reference, run)
    print(f"uninterrupted: error {_error(reference, run):.2f}")


def test_a_failing_run_fails_its_job_with_the_stage_error_and_the_final_job_reports_it(cluster, tmp_path):
    diverging = MINI_SUITE.replace("  steps: 24\n", "  steps: 24\n  lr: 100.0\n")
    repo = _repo(tmp_path / "repo", diverging)
    record = _submit(cluster, repo)
    states = cluster.wait(_jobs(record))
    assert states[record["upstream"]] == "COMPLETED"
    assert {states[job] for job in record["runs"].values()} == {"FAILED"}, _logs(repo)
    assert states[record["final"]] == "FAILED"
    for run in RUNS:
        last = (repo / ".cluster/logs" / f"{run}.log").read_text().strip().splitlines()[-1]
        assert last.startswith(f"fixmatch-bench: {run} failed (exit ") and "error: the " in last, last
        assert "became non-finite" in last
    final = (repo / ".cluster/logs/final.log").read_text()
    assert "Running stage 'train@" in final and "is missing: it did not finish in its cluster job" in final
    assert "INCOMPLETE" in final.upper() and "0 pass" in final, final
    again = _submit(cluster, repo)  # what failed is submitted again, nothing else
    assert sorted(again["runs"]) == sorted(RUNS) and again["skipped"] == []
    cluster.run("scancel", *_jobs(again))  # they would fail as before
    cluster.wait(_jobs(again))
