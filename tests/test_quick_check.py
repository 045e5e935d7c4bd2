"""The quick suite's regression check on both sides, with the committed baseline and its measured spread:
results that moved within the spread pass, and a real regression, trained here, fails."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, digits_workspace
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import Run, expected_runs, run_table
from fixmatch_bench.report.cells import CellResult
from fixmatch_bench.report.check import (Tolerance, baseline_references, check_against_reference,
                                         check_ratio_to_supervised, load_baseline)
from fixmatch_bench.data.prepared import load_prepared
from fixmatch_bench.data.splits import make_split, write_split
from fixmatch_bench.train.trainer import train
from fixmatch_bench.tools.spread import load_plan

BASELINE = REPO / "reports/baseline/quick.json"
SPREAD = json.loads((REPO / "reports/baseline/quick_spread.json").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def variation_cells(variation: str) -> list[CellResult]:
    """The cells of the suite as one variation of the spread study measured them."""
    cells: dict[str, dict[int, float]] = {}
    for record in SPREAD["runs"]:
        if record["variation"] == variation and record["fold"] in PARAMS["folds"]:
            cells.setdefault(record["cell"], {})[record["fold"]] = record["error"]
    result = []
    for key, errors in cells.items():
        cell, method = key.split("-")
        dataset, labels = cell.rsplit("_", 1)
        result.append(CellResult(dataset, int(labels), method, errors, tuple(PARAMS["folds"]), (5,), None, None))
    return result


def quick_check(cells: list[CellResult]) -> dict[str, str]:
    check = PARAMS["check"]
    results = check_against_reference(cells, baseline_references(load_baseline(BASELINE)),
                                      Tolerance(check["std_factor"], check["floor"]))
    results += check_ratio_to_supervised(cells, check["max_ratio_to_supervised"])
    return {result.key: result.status for result in results}


def test_the_baseline_is_the_spread_study_of_the_committed_suite():
    baseline = load_baseline(BASELINE)
    assert baseline["suite"] == PARAMS["suite_name"]
    ran = {(record["cell"], record["fold"]) for record in SPREAD["runs"]}
    study_folds = load_plan(REPO / "conf/spread.yaml").folds
    assert set(PARAMS["folds"]) <= set(study_folds)
    study = validate_params({**PARAMS, "folds": list(study_folds)})
    assert ran == {(run.name, run.fold) for run in expected_runs(study)}
    for key, cell in baseline["cells"].items():
        assert cell["mean"] == SPREAD["statistics"][key]["mean"]
        assert cell["tolerance"] == SPREAD["statistics"][key]["tolerance"] >= PARAMS["check"]["floor"]


@pytest.mark.parametrize("variation", [v["name"] for v in SPREAD["variations"]])
def test_results_perturbed_within_the_measured_spread_pass(variation):
    statuses = quick_check(variation_cells(variation))
    assert set(statuses.values()) == {"pass"}, statuses


def committed_results(destination: Path) -> Path:
    """The committed runs' metrics (reports/runs.json, gathered by aggregate) as a results folder: in a
    clone without DVC's cache the runs' own metrics.json files (cached outputs) are absent."""
    for run, metrics in json.loads((REPO / "reports/runs.json").read_text()).items():
        (destination / run).mkdir(parents=True, exist_ok=True)
        (destination / run / "metrics.json").write_text(json.dumps(metrics))
    return destination


@pytest.fixture(scope="module")
def regressed_results(tmp_path_factory):
    """The committed results of the suite, with FixMatch (RA) retrained on every fold with its unlabeled
    batch switched off (train.uratio = 0: no unlabeled loss), the quick suite's settings otherwise.
    The FixMatch methods allow it by name (methods.<method>.allow_no_unlabeled_loss), as an ablation must."""
    root, params = digits_workspace(tmp_path_factory.mktemp("regressed"), {"uratio": 0})
    for method in params["ssl_methods"]:
        params["methods"][method]["allow_no_unlabeled_loss"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = load_prepared(root / "prepared/digits")
    results = committed_results(root / "results")
    for fold in params["folds"]:
        split = root / f"splits/digits_20-{fold}.json"
        write_split(make_split(prepared, 20, fold), split)
        run = Run("digits", 20, "fixmatch_ra", fold)
        shutil.rmtree(results / run.key)
        train(params, run, root / "prepared/digits", split, results / run.key, progress=False)
    return root, results


def test_the_check_stage_fails_when_fixmatch_loses_its_unlabeled_loss(regressed_results):
    root, results = regressed_results
    command = [sys.executable, "pipeline/check.py", "--params", str(root / "params.yaml"), "--results", str(results),
               "--out", str(root / "check.txt"), "--metrics", str(root / "check.json")]
    recorded = subprocess.run(command, cwd=REPO, capture_output=True, text=True)  # as the DVC stage runs it
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert json.loads((root / "check.json").read_text())["check"] == {"pass": 3, "fail": 2, "incomplete": 0,
                                                                     "unchecked": 0}
    done = subprocess.run([*command, "--strict"], cwd=REPO, capture_output=True, text=True)  # as make quick and CI
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    failed = [line.split()[1].rstrip(":") for line in lines if line.startswith("FAIL")]
    assert failed == ["digits_20-fixmatch_ra", "digits_20-fixmatch_ra"]  # the baseline and the 1/3 rule
    assert "vs supervised" in lines[1]
    assert lines[-1].startswith("3 pass, 2 fail, 0 incomplete")


def test_a_baseline_cell_the_suite_does_not_run_is_incomplete_never_a_pass(tmp_path):
    """ssl_methods = [] (allowed once the 1/3 rule is off): the baseline's FixMatch cells have no run at all."""
    params = {**PARAMS, "ssl_methods": [], "check": {**PARAMS["check"], "max_ratio_to_supervised": None}}
    params["runs"] = run_table(validate_params(params))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "pipeline/check.py", "--params", str(tmp_path / "params.yaml"), "--out",
               str(tmp_path / "check.txt"), "--metrics", str(tmp_path / "check.json"), "--strict",
               "--results", str(committed_results(tmp_path / "results"))]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"INCOMPLETE digits_20-{method}: measured none, reference {cell['mean']:.2f} (baseline), tolerance "
        f"{cell['tolerance']:.2f}, folds 0/2 (missing 1, 2)"
        for method in ("fixmatch_ra", "fixmatch_cta") for cell in [load_baseline(BASELINE)["cells"][f"digits_20-{method}"]]
    ] + ["1 pass, 0 fail, 2 incomplete, 0 unchecked"]
