"""The cost of a suite before it starts (`python -m fixmatch_bench.tools.plan`), and the train stage's
refusal of a run its device cannot hold or that would run for longer than max_run_hours."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO, digits_workspace
from fixmatch_bench.tools.compose import compose_params
from fixmatch_bench.core.errors import ParamsError
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import Run
from fixmatch_bench.train.budget import device_memory, refuse_unaffordable, workload
from fixmatch_bench.train.memory import estimate


def _plan(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.plan", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_quick_suites_plan_projects_its_time_from_its_own_runs():
    plan = _plan()
    assert "6 runs (2 supervised, 4 of other methods) on 1 cells x 2 folds, 6,144 steps in all." in plan
    rows = [line for line in plan.splitlines() if line.startswith("| ResNet")]
    assert len(rows) == 3 and all("median of 2 of this suite's runs on cpu" in row for row in rows)
    assert "Projected time:" in plan and "not measured" not in plan


def test_the_paper_suites_plan_says_what_is_not_measured_and_projects_gpu_hours_from_a_gpu_figure(tmp_path):
    plan = _plan("-S", "suite=paper", "--reports", str(tmp_path))
    assert "155 runs (50 supervised, 105 of other methods) on 10 cells x 5 folds, 162,529,280 steps in all." in plan
    assert plan.count("| not measured on this device |") == 9
    assert "Projected time: not measured (no steps/s measured on this device" in plan  # none of the 155 runs
    assert "- models: 5.2 GiB (the EMA weights of 155 runs)" in plan
    paper = validate_params(compose_params(["suite=paper"], REPO / "conf"))
    ra = workload(paper, Run("cifar10", 40, "fixmatch_ra", 1))
    protocol = {"steps_per_s": 20.0, "speed_options": paper.speed.model_dump()}
    (tmp_path / "throughput.json").write_text(json.dumps({
        "device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "protocol_options": paper.speed.model_dump(),
        "results": [{"config": "WRN-28-2 CIFAR-10 RandAugment", "workload": ra, "protocol": protocol}]}))
    plan = _plan("-S", "suite=paper", "--reports", str(tmp_path))
    hours = 30 * 2**20 / 20.0 / 3600
    assert f"| {ra} | 30 | 31,457,280 | 5.3 GiB | 20.00 (protocol) | {hours:,.1f} h |" in plan
    assert "Projected GPU-hours on NVIDIA H100 80GB HBM3" in plan and "plus 125 runs with no figure" in plan


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return digits_workspace(tmp_path_factory.mktemp("budget"), {"steps": 12, "batch": 4, "uratio": 2})


def test_the_memory_estimate_grows_with_the_batch_and_names_the_largest_that_fits():
    paper = validate_params(compose_params(["suite=paper"], REPO / "conf"))
    run = Run("cifar100", 400, "fixmatch_ra", 1)
    needed = estimate(paper, run)
    assert needed.images_per_step == 64 * 15 and 19 * 2**30 < needed.total < 22 * 2**30  # WRN-28-8, B = 64, mu = 7
    fits = needed.largest_batch(16 * 2**30, uratio=7, views=2)
    larger, smaller = (estimate(validate_params({**paper.model_dump(), "train": {**paper.train.model_dump(),
                                                                                  "batch": batch}}), run)
                       for batch in (fits + 1, fits))
    assert smaller.total <= 16 * 2**30 < larger.total


def test_a_batch_the_machine_cannot_hold_is_refused_in_one_line_before_any_work(workspace, tmp_path):
    root, params = workspace
    huge = copy.deepcopy(params)
    huge["train"]["batch"] = 100000
    (root / "huge.yaml").write_text(yaml.safe_dump(huge))
    command = [sys.executable, str(REPO / "pipeline/train.py"), "digits_20-fixmatch_ra-1", "--prepared",
               str(root / "prepared"), "--splits", str(root / "splits"), "--params", str(root / "huge.yaml"),
               "--results", str(tmp_path / "results"), "--models", str(tmp_path / "models")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    _, memory = device_memory(torch.device("cpu"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: invalid params: train.batch = 100000 (needs at least ")
    assert f"on cpu, which has {memory / 2**30:.1f} GiB: a batch of at most " in done.stderr
    assert not (tmp_path / "results").exists()  # refused before the run's folders were made


def test_a_run_projected_past_max_run_hours_is_refused_unless_the_bound_is_raised(workspace, tmp_path):
    """Projected from the run's own earlier result on this device (here: 10 steps/s on the CPU)."""
    _, params = workspace
    run = Run("digits", 20, "fixmatch_ra", 1)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/runs.json").write_text(json.dumps({run.key: {"device": "cpu", "steps_per_s": 10.0}}))
    endless = copy.deepcopy(params)
    endless["train"]["steps"] = 10**12
    with pytest.raises(ParamsError, match=r"^invalid params: train.steps = 1000000000000 \(projected 27,777,778 "
                                          r"hours on cpu at the 10.0 steps/s measured there, over max_run_hours = 1000"):
        refuse_unaffordable(validate_params(endless), run, torch.device("cpu"), root=tmp_path)
    endless["max_run_hours"] = 10**9
    refuse_unaffordable(validate_params(endless), run, torch.device("cpu"), root=tmp_path)
    refuse_unaffordable(validate_params(params), run, torch.device("cpu"), root=tmp_path / "elsewhere")  # no figure
