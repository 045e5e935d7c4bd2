"""The real DVC pipeline on a miniature quick suite, in a temporary git clone of the working tree."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import dvc, git, repo_on_suite

MINI_SUITE = """\
# @package _global_
suite_name: mini
folds: [1]
data: [digits]
cells: [digits_20]
ssl_methods: [fixmatch_ra]
train:
  steps: 24
  batch: 8
  uratio: 2
  ema: 0.9
  eval_every: 8
  median_of_last: 2
  eval_batch: 512
  log_every: 8
  checkpoint_every: 16
  device: cpu
check:
  max_ratio_to_supervised: 100.0   # 24 steps learn little; the quick suite keeps 1/3
"""


@pytest.fixture(scope="module")
def mini_repo(tmp_path_factory) -> Path:
    """The miniature suite in a fresh git repo after `dvc repro aggregate`: reports, no baseline yet."""
    repo = repo_on_suite(tmp_path_factory.mktemp("clone"), "mini", MINI_SUITE)
    dvc(repo, "repro", "aggregate")
    return repo


@pytest.fixture(scope="module")
def baselined_repo(mini_repo, tmp_path_factory) -> Path:
    """A copy of ``mini_repo`` with its baseline (one variation of the spread study, what `make baseline`
    runs, on the suite's one fold), the whole pipeline run and committed: where experiments start."""
    repo = tmp_path_factory.mktemp("baselined") / "repo"
    shutil.copytree(mini_repo, repo, symlinks=True)
    plan = repo / "one_fold_spread.yaml"
    plan.write_text("factor: 3.0\nfolds: [1]\nvariations:\n  pipeline: {}\n")
    subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.spread", "--plan", str(plan)], cwd=repo, check=True,
                   capture_output=True)
    plan.unlink()
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline run")
    return repo


def test_repro_builds_reports_and_the_check_needs_a_baseline(mini_repo):
    failed = dvc(mini_repo, "repro", check=False)
    assert failed.returncode != 0
    assert "no baseline reports/baseline/mini.json for suite 'mini'; create it with `make baseline`" \
        in failed.stderr + failed.stdout
    for name in ("results.md", "results.csv", "results.tex", "cost.md", "summary.json"):
        assert (mini_repo / "reports" / name).stat().st_size > 0
    table = (mini_repo / "reports/results.md").read_text()
    assert "(1/1)" in table  # the number of folds behind each cell
    summary = json.loads((mini_repo / "reports/summary.json").read_text())
    assert set(summary) >= {"digits_20-supervised", "digits_20-fixmatch_ra"}
    metrics = json.loads((mini_repo / "results/digits_20-fixmatch_ra-1/metrics.json").read_text())
    evaluations = (mini_repo / "results/digits_20-fixmatch_ra-1/curves/eval/error.tsv").read_text().splitlines()[1:]
    assert len(evaluations) == 3 and metrics["steps"] == 24 and 0 <= metrics["error"] <= 100
    image = Image.open(mini_repo / "reports/error_curves.png")
    assert image.size[0] > 200 and len(set(image.convert("L").get_flattened_data())) > 2


def test_the_baseline_holds_the_suites_results_and_the_check_passes_against_it(baselined_repo):
    """With no spread measured the tolerance is the floor, and the same results pass."""
    summary = json.loads((baselined_repo / "reports/summary.json").read_text())
    baseline = json.loads((baselined_repo / "reports/baseline/mini.json").read_text())
    assert baseline["cells"]["digits_20-fixmatch_ra"]["mean"] == summary["digits_20-fixmatch_ra"]
    assert baseline["cells"]["digits_20-fixmatch_ra"]["tolerance"] == 1.0
    assert (baselined_repo / "reports/baseline/mini_spread.png").stat().st_size > 0
    assert "0 fail, 0 incomplete" in (baselined_repo / "reports/check.txt").read_text()
    assert "Data and pipelines are up to date." in dvc(baselined_repo, "repro").stdout


def test_exp_run_with_another_threshold_reruns_only_what_depends_on_it(baselined_repo):
    done = dvc(baselined_repo, "exp", "run", "-S", "threshold=0.5")
    ran = {line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")}
    # validate re-checks any new params.yaml; check re-runs only if the summary changed; data, splits
    # and the supervised baseline never do.
    assert ({"validate", "train@digits_20-fixmatch_ra-1", "aggregate"} <= ran
            <= {"validate", "train@digits_20-fixmatch_ra-1", "aggregate", "check"})
    shown = json.loads(dvc(baselined_repo, "exp", "show", "--json").stdout)
    thresholds = set()
    for commit in shown:
        for experiment in [commit] + [exp for group in commit.get("experiments") or [] for exp in group["revs"]]:
            data = experiment.get("data") or {}
            thresholds.add(data.get("params", {}).get("params.yaml", {}).get("data", {}).get("threshold"))
            assert "digits_20-fixmatch_ra" in data.get("metrics", {}).get("reports/summary.json", {}).get("data", {})
    assert {0.5, 0.95} <= thresholds


def test_a_regressed_experiment_is_kept_with_its_failing_verdict(baselined_repo):
    done = dvc(baselined_repo, "exp", "run", "-S", "check.max_ratio_to_supervised=0.01")
    assert "FAIL       digits_20-fixmatch_ra vs supervised" in done.stdout
    failed = subprocess.run([sys.executable, "pipeline/check.py", "--strict"], cwd=baselined_repo,
                            capture_output=True, text=True)
    assert failed.returncode == 1  # what make quick and CI run after dvc repro
    shown = json.loads(dvc(baselined_repo, "exp", "show", "--json").stdout)
    verdicts = [experiment["data"]["metrics"]["reports/check.json"]["data"]["check"]["fail"]
                for commit in shown for group in commit.get("experiments") or [] for experiment in group["revs"]]
    assert 1 in verdicts  # saved, in dvc exp show, with its failing count


def test_an_ablation_variant_is_its_own_stage_and_computes_what_the_changed_param_computes(baselined_repo):
    """`ablations` adds one stage per variant, named after its changes: the variant trains exactly
    what an experiment with that param changed trains, and aggregate draws the axis."""
    dvc(baselined_repo, "exp", "run", "-S", "threshold=0.5")
    changed = json.loads((baselined_repo / "results/digits_20-fixmatch_ra-1/metrics.json").read_text())
    done = dvc(baselined_repo, "exp", "run", "-S", "+ablations.threshold=[{method.threshold: 0.5}, {method.threshold: 0.8}]")
    ran = {line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")}
    assert {"train@digits_20-fixmatch_ra-1+method.threshold=0.5", "train@digits_20-fixmatch_ra-1+method.threshold=0.8"} <= ran
    assert "train@digits_20-fixmatch_ra-1" not in ran  # the protocol's run comes back from the run-cache
    variant = json.loads((baselined_repo / "results/digits_20-fixmatch_ra-1+method.threshold=0.5/metrics.json").read_text())
    timings = {"wall_time_s", "steps_per_s"}
    assert {k: v for k, v in variant.items() if k not in timings} == {k: v for k, v in changed.items() if k not in timings}
    table = (baselined_repo / "reports/ablation/ablation.md").read_text()
    assert f"| threshold=0.5 | {variant['error']:.2f} (1/1)" in table and "| protocol |" in table
    assert Image.open(baselined_repo / "reports/ablation/threshold.png").size == (960, 360)
    assert "Data and pipelines are up to date." in dvc(baselined_repo, "status").stdout
