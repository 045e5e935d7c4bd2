import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixmatch_bench.report.cells import CellResult
from fixmatch_bench.report.check import (
    Reference,
    Tolerance,
    baseline_references,
    check_against_reference,
    compare_revisions,
    load_baseline,
    paper_references,
    report,
    summaries_from_metrics_diff,
)
from fixmatch_bench.report.published import load_published

PUBLISHED = load_published(Path(__file__).resolve().parents[1] / "reports" / "published.yaml")
PAPER = Tolerance(k=2.0, floor=1.0)
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def cell(dataset, labels, method, errors, expected=(1, 2, 3, 4, 5)):
    return CellResult(dataset, labels, method, dict(errors), tuple(expected), (20,), None, None)


def five(mean):
    """Five folds with the given mean (spread ±1)."""
    return {1: mean - 1, 2: mean - 0.5, 3: mean, 4: mean + 0.5, 5: mean + 1}


def statuses(results):
    return {result.key: result.status for result in results}


def test_paper_tolerance_is_k_std_with_a_floor():
    refs = paper_references(PUBLISHED)
    assert PAPER.for_reference(refs["cifar10_40-fixmatch_ra"]) == pytest.approx(6.74)  # 2 x 3.37
    assert PAPER.for_reference(refs["cifar10_4000-fixmatch_ra"]) == 1.0  # 2 x 0.05 < floor
    assert PAPER.for_reference(refs["cifar100_400-fixmatch_cta_da"]) == 1.0  # no std: the floor
    assert refs["cifar100_400-fixmatch_cta_da"].source == "paper, secondary"


def test_pass_fail_incomplete_and_unchecked():
    cells = [
        cell("cifar10", 40, "fixmatch_ra", five(20.0)),        # |20.00 - 13.81| = 6.19 <= 6.74: pass
        cell("cifar10", 250, "fixmatch_ra", five(5.07 + 1.31)),  # 1.31 > 2 x 0.65: fail
        cell("cifar10", 4000, "fixmatch_ra", five(2.0)),       # 2.26 below, two-sided: fail
        cell("svhn", 40, "fixmatch_ra", {1: 3.96, 2: 3.96}),   # right value but 2/5 folds: incomplete
        cell("svhn", 250, "fixmatch_ra", {}),                  # nothing finished: incomplete
        cell("cifar100", 400, "fixmatch_cta_da", five(41.0)),  # no std, |0.86| <= floor 1: pass
        cell("cifar100", 400, "fixmatch_ra", five(50.5)),      # |1.65| <= 2 x 1.75: pass
        cell("cifar10", 40, "supervised", five(60.0)),         # no published number: unchecked
    ]
    results = check_against_reference(cells, paper_references(PUBLISHED), PAPER)
    assert statuses(results) == {
        "cifar10_40-fixmatch_ra": "pass", "cifar10_250-fixmatch_ra": "fail", "cifar10_4000-fixmatch_ra": "fail",
        "svhn_40-fixmatch_ra": "incomplete", "svhn_250-fixmatch_ra": "incomplete",
        "cifar100_400-fixmatch_cta_da": "pass", "cifar100_400-fixmatch_ra": "pass", "cifar10_40-supervised": "unchecked",
    }
    text, code = report(results)
    assert code == 1
    lines = text.splitlines()
    assert lines[0] == ("FAIL       cifar10_250-fixmatch_ra: measured 6.38, reference 5.07 (paper, secondary), "
                        "tolerance 1.30, folds 5/5")
    assert lines[2] == ("INCOMPLETE svhn_40-fixmatch_ra: measured 3.96, reference 3.96 (paper, secondary), "
                        "tolerance 4.34, folds 2/5 (missing 3, 4, 5)")
    assert lines[3].startswith("INCOMPLETE svhn_250-fixmatch_ra: measured none")
    assert lines[-1] == "3 pass, 2 fail, 2 incomplete, 1 unchecked (no reference: cifar10_40-supervised)"


def test_all_passing_exits_zero():
    results = check_against_reference([cell("cifar10", 40, "fixmatch_cta", five(11.0))], paper_references(PUBLISHED), PAPER)
    assert report(results) == ("1 pass, 0 fail, 0 incomplete, 0 unchecked", 0)


def test_tolerance_rejects_negative_values():
    with pytest.raises(ValueError, match="tolerance floor = -1 is invalid"):
        Tolerance(k=2.0, floor=-1)


def baseline_file(tmp_path, cells):
    path = tmp_path / "quick.json"
    path.write_text(json.dumps({"suite": "quick", "rule": "test", "cells": cells}))
    return path


def test_quick_baseline_tolerance_is_its_own_never_below_the_floor(tmp_path):
    path = baseline_file(tmp_path, {
        "digits_20-fixmatch_ra": {"mean": 8.0, "tolerance": 3.0, "sigma_mean": 1.0, "folds": 2},
        "digits_20-supervised": {"mean": 30.0, "tolerance": 0.6, "sigma_mean": 0.2, "folds": 2}})
    refs = baseline_references(load_baseline(path))
    assert refs == {"digits_20-fixmatch_ra": Reference(8.0, 1.0, "baseline", 3.0),
                    "digits_20-supervised": Reference(30.0, 0.2, "baseline", 0.6)}
    floor = Tolerance(k=2.0, floor=1.0)
    cells = [cell("digits", 20, "fixmatch_ra", {1: 10.0, 2: 11.8}, (1, 2)),  # +2.9 within 3.0 (not 2 x 1.0)
             cell("digits", 20, "supervised", {1: 29.0, 2: 30.8}, (1, 2))]   # -0.1, the floor 1.0 applies
    results = check_against_reference(cells, refs, floor)
    assert statuses(results) == {"digits_20-fixmatch_ra": "pass", "digits_20-supervised": "pass"}
    assert [r.tolerance for r in results] == [3.0, 1.0]
    cells[0] = cell("digits", 20, "fixmatch_ra", {1: 4.8, 2: 5.0}, (1, 2))  # -3.1: two-sided
    assert statuses(check_against_reference(cells, refs, floor))["digits_20-fixmatch_ra"] == "fail"


def test_a_baseline_without_tolerances_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a baseline"):
        load_baseline(baseline_file(tmp_path, {}))
    with pytest.raises(ValueError, match="cell 'digits_20-supervised' field 'tolerance' = None"):
        load_baseline(baseline_file(tmp_path, {"digits_20-supervised": {"mean": 30.0}}))


def test_compare_revisions():
    old = {"a_1-m": 10.0, "b_1-m": 5.0, "c_1-m": 7.0, "d_1-m": 3.0, "folds_missing": {"d_1-m": 0}}
    new = {"a_1-m": 10.4, "b_1-m": 5.6, "d_1-m": 2.0, "e_1-m": 1.0, "folds_missing": {"d_1-m": 2}}
    results = compare_revisions(old, new, tolerance=0.5)
    assert statuses(results) == {"a_1-m": "pass", "b_1-m": "fail", "c_1-m": "fail", "d_1-m": "incomplete",
                                 "e_1-m": "unchecked"}
    text, code = report(results)
    assert code == 1
    assert "FAIL       c_1-m: measured none, reference 7.00 (old revision), tolerance 0.50" in text.splitlines()
    # an improvement is never a regression
    assert statuses(compare_revisions({"a_1-m": 10.0}, {"a_1-m": 2.0}, 0.5)) == {"a_1-m": "pass"}


def test_summaries_from_metrics_diff_unflattens_groups():
    diff = {"reports/summary.json": {
        "mask_rate.a_1-m": {"old": 0.5, "new": 0.25, "diff": -0.25},
        "a_1-m": {"old": 5.25, "new": 7.9, "diff": 2.65},
        "b_1-m": {"old": None, "new": 3.0},
        "c_1-m": {"old": 4.0, "new": None},
    }}
    old, new = summaries_from_metrics_diff(diff, "reports/summary.json")
    assert old == {"mask_rate": {"a_1-m": 0.5}, "a_1-m": 5.25, "c_1-m": 4.0}
    assert new == {"mask_rate": {"a_1-m": 0.25}, "a_1-m": 7.9, "b_1-m": 3.0}


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, env=ENV, check=True, capture_output=True)


def write_summary(repo, summary):
    (repo / "reports").mkdir(exist_ok=True)
    (repo / "reports" / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A real git + DVC repo whose HEAD commits a summary declared as metrics in dvc.yaml."""
    repo = tmp_path_factory.mktemp("revision_repo")
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, env=ENV, check=True)
    (repo / "dvc.yaml").write_text("metrics:\n  - reports/summary.json\n")
    write_summary(repo, {"digits_20-fixmatch_ra": 2.5, "digits_20-supervised": 30.0,
                         "folds_missing": {"digits_20-fixmatch_ra": 0, "digits_20-supervised": 0}})
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "summary")
    return repo


def run_cli(repo, *args):
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.report.check", "--repo", str(repo), *args],
                          env=ENV, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def test_against_rev_passes_when_nothing_changed(repo):
    assert run_cli(repo, "--against-rev", "HEAD", "--tolerance", "0.5") == (0, "2 pass, 0 fail, 0 incomplete, 0 unchecked\n", "")


def test_against_rev_fails_on_a_rise_and_a_missing_cell(repo):
    write_summary(repo, {"digits_20-fixmatch_ra": 3.2, "folds_missing": {"digits_20-fixmatch_ra": 0}})
    try:
        code, out, _ = run_cli(repo, "--against-rev", "HEAD", "--tolerance", "0.5")
    finally:
        git(repo, "checkout", "--", "reports/summary.json")
    assert code == 1
    assert out.splitlines() == [
        "FAIL       digits_20-fixmatch_ra: measured 3.20, reference 2.50 (old revision), tolerance 0.50",
        "FAIL       digits_20-supervised: measured none, reference 30.00 (old revision), tolerance 0.50",
        "0 pass, 2 fail, 0 incomplete, 0 unchecked",
    ]


def test_against_an_unknown_rev_is_an_error(repo):
    code, _, err = run_cli(repo, "--against-rev", "no-such-rev", "--tolerance", "0.5")
    assert code == 2 and "dvc metrics diff no-such-rev` failed" in err

