import json
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from fixmatch_bench.report.ablation import experiment_points, flatten, main, plot_ablation

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(repo, *command):
    return subprocess.run(command, cwd=repo, env=ENV, check=True, capture_output=True, text=True).stdout


def dvc(repo, *args):
    return sh(repo, sys.executable, "-m", "dvc", *args)


@pytest.fixture(scope="module")
def exp_show(tmp_path_factory):
    """`dvc exp show --json` of a real repo: a baseline at threshold 0.95 and experiments at 0.8 and 0.5."""
    repo = tmp_path_factory.mktemp("ablation_repo")
    (repo / "params.yaml").write_text("threshold: 0.95\n")
    (repo / "train.py").write_text(textwrap.dedent("""\
        import json, os, yaml
        t = yaml.safe_load(open("params.yaml"))["threshold"]
        os.makedirs("reports", exist_ok=True)
        json.dump({"digits_20-fixmatch_ra": round(10 - 5 * t, 4), "digits_20-supervised": 30.0,
                   "folds_missing": {"digits_20-fixmatch_ra": 0, "digits_20-supervised": 0},
                   "mask_rate": {"digits_20-fixmatch_ra": t / 2}}, open("reports/summary.json", "w"))
        """))
    (repo / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          train:
            cmd: {sys.executable} train.py
            deps:
              - train.py
            params:
              - threshold
            metrics:
              - reports/summary.json:
                  cache: false
        """))
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "repro", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    dvc(repo, "exp", "run", "-q", "-S", "threshold=0.8")
    dvc(repo, "exp", "run", "-q", "-S", "threshold=0.5", "-n", "low")
    return json.loads(dvc(repo, "exp", "show", "--json"))


def test_points_from_real_exp_show(exp_show):
    points = experiment_points(exp_show)
    # workspace (= the last experiment, kept once), the baseline commit, two experiments
    ra = {point.settings["threshold"]: point for point in points if point.series == "digits_20-fixmatch_ra"}
    assert sorted(ra) == [0.5, 0.8, 0.95]
    assert ra[0.8].error == 6.0 and ra[0.5].mask_rate == 0.25 and ra[0.5].label == "low"
    assert list(dict.fromkeys(point.series for point in points)) == ["digits_20-fixmatch_ra", "digits_20-supervised"]


def test_failed_and_foreign_rows_are_skipped():
    row = {"rev": "abc1234567", "name": None, "error": None, "experiments": [
        {"revs": [{"rev": "f", "name": "failed", "error": {"msg": "boom"}, "data": None, "experiments": None}]},
        {"revs": [{"rev": "q", "name": "other-file", "error": None, "experiments": None, "data": {
            "params": {"params.yaml": {"data": {"threshold": 0.7}}}, "metrics": {"other.json": {"data": {"x": 1}}}}}]},
    ], "data": {"params": {"params.yaml": {"data": {"train": {"threshold": 0.9}}}},
                "metrics": {"reports/summary.json": {"data": {"a_1-m": 3.0}}}}}
    assert experiment_points([row]) == []  # the nested param is not `threshold`
    points = experiment_points([row], params=["train.threshold"])
    assert [(p.label, dict(p.settings), p.series, p.error) for p in points] == [
        ("abc123456", {"train.threshold": 0.9}, "a_1-m", 3.0)]


def test_flatten_uses_dotted_keys():
    assert flatten({"a": 1, "g": {"b": 2.5, "c": True}}) == {"a": 1.0, "g.b": 2.5}


def test_plot_and_cli(exp_show, tmp_path, capsys):
    figure = plot_ablation(experiment_points(exp_show), tmp_path / "threshold.png", "threshold")
    assert Image.open(tmp_path / "threshold.png").size == (960, 360)  # error and mask-rate panels
    error, mask = figure.axes
    # the experiments' summaries: error = 10 - 5 t, supervised 30, mask rate t / 2 (in %), against t
    assert {line.get_label(): line.get_xydata().tolist() for line in error.get_lines()} == {
        "digits_20-fixmatch_ra": [[0.5, 7.5], [0.8, 6.0], [0.95, 5.25]],
        "digits_20-supervised": [[0.5, 30.0], [0.8, 30.0], [0.95, 30.0]]}
    assert {line.get_label(): line.get_xydata().tolist() for line in mask.get_lines()} == {
        "digits_20-fixmatch_ra": [[0.5, 25.0], [0.8, 40.0], [0.95, 47.5]]}
    source = tmp_path / "exp.json"
    source.write_text(json.dumps(exp_show))
    assert main(["--exp-show-json", str(source), "--out", str(tmp_path / "cli.png"),
                 "--metric", "digits_20-supervised"]) == 0
    assert Image.open(tmp_path / "cli.png").size == (480, 360)  # the supervised key has no mask rate
    assert main(["--exp-show-json", str(source), "--out", str(tmp_path / "x.png"), "--metric", "nope"]) == 2
    assert "no experiment in the input has the params threshold and the metrics nope" in capsys.readouterr().err


def test_cli_reads_stdin(exp_show, tmp_path):
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.report.ablation", "--exp-show-json", "-",
                           "--out", str(tmp_path / "stdin.png")], input=json.dumps(exp_show), text=True,
                          capture_output=True, env=ENV, check=False)
    assert done.returncode == 0, done.stderr
    assert "3 experiments" in done.stdout
