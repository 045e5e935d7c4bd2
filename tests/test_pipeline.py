"""The real DVC pipeline on a miniature quick suite, in a temporary git clone of the working tree."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO

MINI_SUITE = """\
# @package _global_
suite_name: mini
folds: [1]
data: [digits]
cells: [digits_20]
ssl_methods: [fixmatch_ra]
da_cells: []
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


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("FIXMATCH_MIRROR", None)
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture(scope="module")
def mini_repo(tmp_path_factory) -> Path:
    """The working tree's files (tracked and untracked, not ignored) in a fresh git repo, on the mini suite."""
    repo = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file() and not name.startswith(("results/", "data/")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    (repo / "conf/suite/mini.yaml").write_text(MINI_SUITE)
    config = repo / "conf/config.yaml"
    config.write_text(config.read_text().replace("  - suite: quick", "  - suite: mini"))
    subprocess.run([sys.executable, "-m", "fixmatch_bench.compose", "params.yaml"], cwd=repo, check=True)
    for lock in ("dvc.lock",):
        (repo / lock).unlink(missing_ok=True)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "mini")
    return repo


def test_repro_builds_reports_and_the_check_needs_a_baseline(mini_repo):
    dvc(mini_repo, "repro", "aggregate")
    failed = dvc(mini_repo, "repro", check=False)
    assert failed.returncode != 0
    assert "no baseline reports/baseline/mini.json for suite 'mini'; create it from a finished run with `make baseline`" \
        in failed.stderr + failed.stdout
    for name in ("results.md", "results.csv", "results.tex", "cost.md", "summary.json"):
        assert (mini_repo / "reports" / name).stat().st_size > 0
    table = (mini_repo / "reports/results.md").read_text()
    assert "(1/1)" in table  # the number of folds behind each cell
    summary = json.loads((mini_repo / "reports/summary.json").read_text())
    assert set(summary) >= {"digits_20-supervised", "digits_20-fixmatch_ra"}
    metrics = json.loads((mini_repo / "results/digits_20-fixmatch_ra-1/metrics.json").read_text())
    assert metrics["evaluations"] == 3 and metrics["steps"] == 24 and 0 <= metrics["error"] <= 100
    image = Image.open(mini_repo / "reports/error_curves.png")
    assert image.size[0] > 200 and len(set(image.convert("L").get_flattened_data())) > 2

    subprocess.run([sys.executable, "-m", "fixmatch_bench.report.check", "--write-baseline",
                    "reports/baseline/mini.json"], cwd=mini_repo, check=True, capture_output=True)
    dvc(mini_repo, "repro")
    assert "0 fail, 0 incomplete" in (mini_repo / "reports/check.txt").read_text()
    assert "Data and pipelines are up to date." in dvc(mini_repo, "repro").stdout
    git(mini_repo, "add", "-A")
    git(mini_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline run")


def test_exp_run_with_another_threshold_reruns_only_what_depends_on_it(mini_repo):
    done = dvc(mini_repo, "exp", "run", "-S", "threshold=0.5")
    ran = {line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")}
    # check re-runs only if the summary changed; data, splits and the supervised baseline never do.
    assert {"train@digits_20-fixmatch_ra-1", "aggregate"} <= ran <= {"train@digits_20-fixmatch_ra-1", "aggregate", "check"}
    shown = json.loads(dvc(mini_repo, "exp", "show", "--json").stdout)
    thresholds = set()
    for commit in shown:
        for experiment in [commit] + [exp for group in commit.get("experiments") or [] for exp in group["revs"]]:
            data = experiment.get("data") or {}
            thresholds.add(data.get("params", {}).get("params.yaml", {}).get("data", {}).get("threshold"))
            assert "digits_20-fixmatch_ra" in data.get("metrics", {}).get("reports/summary.json", {}).get("data", {})
    assert {0.5, 0.95} <= thresholds
