"""The comparison suites: every method of the paper's table on the paper's cells and folds (GPU), and
the same on the digits offline. What runs, what it will cost, and what the report shows before and
after any run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import all_runs
from fixmatch_bench.methods.registry import check_methods
from fixmatch_bench.tools.compose import compose_params, write_params

COMPARED = {"fixmatch_ra", "fixmatch_cta", "pi_model", "pseudo_labeling", "mean_teacher", "mixmatch", "uda", "remixmatch"}
PAPER_CELLS = {"cifar10_40", "cifar10_250", "cifar10_4000", "cifar100_400", "cifar100_2500", "cifar100_10000",
               "svhn_40", "svhn_250", "svhn_1000", "stl10_1000"}


def test_the_comparison_suite_trains_every_method_on_every_paper_cell_and_fold():
    params = validate_params(compose_params(["suite=comparison"], REPO / "conf"))
    methods = check_methods(params)
    runs = all_runs(params)
    assert COMPARED <= set(params.ssl_methods)
    for name in params.ssl_methods:
        assert {(run.cell, run.fold) for run in runs if run.method == name} == {
            (cell, fold) for cell in PAPER_CELLS for fold in range(1, 6)}
        assert methods[name].views  # each trains on unlabeled data
    assert {run.cell for run in runs if run.method == "fixmatch_cta_da"} == {"cifar100_400"}
    assert len(runs) == (1 + len(params.ssl_methods)) * 50 + 5
    assert params.train.device == "cuda" and params.train.steps == 2**20
    # the baselines' unlabeled batch is B (the official ClassifySemi.train), UDA's and FixMatch's 7 B
    assert {name: methods[name].uratio(params) for name in ("pi_model", "mean_teacher", "uda", "fixmatch_ra")} == {
        "pi_model": 1, "mean_teacher": 1, "uda": 7, "fixmatch_ra": 7}


def test_its_plan_counts_the_runs_and_each_workloads_memory_before_it_starts():
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.plan", "-S", "suite=comparison"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    params = validate_params(compose_params(["suite=comparison"], REPO / "conf"))
    runs = len(all_runs(params))
    assert f"{runs} runs (50 supervised, {runs - 50} of other methods)" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ResNet")]
    assert any("mu=1 |" in row for row in rows) and any("mu=7 |" in row for row in rows)
    assert all("GiB" in row for row in rows)


def test_its_report_has_a_row_per_method_with_the_published_values_before_any_run(tmp_path):
    write_params(tmp_path / "params.yaml", ["suite=comparison"], REPO / "conf")
    done = subprocess.run([sys.executable, "pipeline/aggregate.py", "--params", str(tmp_path / "params.yaml"),
                           "--results", str(tmp_path / "results"), "--out", str(tmp_path / "reports")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "reports/results.md").read_text()
    names = yaml.safe_load((REPO / "reports/published.yaml").read_text())["names"]["methods"]
    for method in COMPARED | {"supervised"}:
        assert any(line.startswith(f"| {names[method]} |") for line in table.splitlines()), method
    cifar10, *_, svhn, stl10 = [line for line in table.splitlines() if line.startswith("| UDA |")]  # one per dataset
    assert "missing (0/5) | 29.05 ± 5.93" in cifar10  # no run yet, and the published CIFAR-10@40 value beside it
    assert "n/r" in svhn  # a cell no citable source gives
    assert (tmp_path / "reports/methods.png").stat().st_size > 0


def test_the_quick_comparison_trains_every_method_on_the_digits_and_checks_nothing_against_a_baseline():
    params = validate_params(compose_params(["suite=quick_comparison"], REPO / "conf"))
    check_methods(params)
    assert set(params.ssl_methods) == set(validate_params(compose_params(["suite=comparison"], REPO / "conf")).ssl_methods)
    assert params.cells == ["digits_20"] and params.folds == [1, 2] and params.train.device == "cpu"
    assert params.check.reference == "none" and params.check.max_ratio_to_supervised is None
