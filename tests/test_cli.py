"""The package's commands (pyproject's [project.scripts]) and the notebook API for a trained run."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, digits_workspace
from fixmatch_bench.core.runs import Run
from fixmatch_bench.train.trainer import train
from fixmatch_bench.trained import error_on_test_set, load_model

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_command_is_installed_and_explains_itself(script):
    done = subprocess.run([str(Path(sys.executable).parent / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}") and len(done.stdout.splitlines()) > 3


def test_a_trained_runs_model_loads_in_three_lines_and_scores_what_its_run_measured(tmp_path):
    root, params = digits_workspace(tmp_path, {"steps": 12, "batch": 4, "uratio": 2, "eval_every": 12,
                                               "median_of_last": 1})
    metrics = train(params, Run("digits", 20, "fixmatch_ra", 1), root / "prepared/digits",
                    root / "splits/digits_20-1.json", root / "results", progress=False,
                    model_path=root / "models/digits_20-fixmatch_ra-1.pt")
    model = load_model("digits_20-fixmatch_ra-1", models=root / "models", params=root / "params.yaml")
    assert not model.training
    assert error_on_test_set(model, "digits", prepared=root / "prepared") == pytest.approx(metrics["error_last"], abs=1e-9)
