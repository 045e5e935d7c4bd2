"""Ablation suites: variants as runs named after their changes, validated before anything runs, and
their tables and figures (suite=ablation on CIFAR-10@250, suite=quick_ablation on the digits)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from fixmatch_bench.tools.compose import compose_params, write_params
from fixmatch_bench.core.errors import ParamsError
from fixmatch_bench.core.params import parse_run, run_params, validate_params, with_variant
from fixmatch_bench.core.runs import Run, ablation_runs, run_table
from fixmatch_bench.report.ablation import AblationPoint, plot_ablation, suite_points, write_suite_ablations
from fixmatch_bench.report.published import parse_published
from fixmatch_bench.methods.registry import check_methods, run_method

from conftest import REPO


def _suite(name: str, *overrides: str):
    return validate_params(compose_params([f"suite={name}", *overrides], REPO / "conf"))


def test_a_variant_run_is_named_after_its_changes_and_parses_back():
    params = _suite("quick_ablation")
    keys = [key for key, (_, method, _) in run_table(params).items() if method != params.baseline]
    assert keys == ["digits_20-fixmatch_cta-1", "digits_20-fixmatch_cta-1+method.threshold=0.5",
                    "digits_20-fixmatch_cta-1+method.threshold=0.7", "digits_20-fixmatch_cta-1+method.threshold=0.8",
                    "digits_20-fixmatch_cta-1+method.threshold=0.9", "digits_20-fixmatch_cta-1+method.threshold=0.99",
                    "digits_20-fixmatch_cta-1+augment.strong_branch=no_cutout",
                    "digits_20-fixmatch_cta-1+augment.strong_branch=only_cutout"]
    for run in ablation_runs(params):
        assert parse_run(run.key, params) == run
    run = parse_run("digits_20-fixmatch_cta-1+method.threshold=0.8+augment.strong_branch=no_cutout", params)
    trained = run_params(params, run)
    assert (run_method(trained, run.method).params.threshold, trained.augment.strong_branch) == (0.8, "no_cutout")
    assert params.methods["fixmatch_cta"].threshold == 0.95  # the suite's params are left alone
    assert run_params(params, Run("digits", 20, "fixmatch_cta", 1)) is params


def test_the_paper_ablation_suite_composes_every_axis_on_cifar10_250():
    params = _suite("ablation")
    assert (params.cells, params.folds, params.ssl_methods, params.train.steps) == (["cifar10_250"], [1],
                                                                                   ["fixmatch_cta"], 1048576)
    assert list(params.ablations) == ["threshold", "sharpening", "augmentation", "pseudo_labels", "optimizer",
                                      "schedule", "uratio_lr", "weight_decay"]
    runs = ablation_runs(params)
    assert len(runs) == sum(len(variants) for variants in params.ablations.values()) == 39
    adam = run_params(params, next(run for run in runs if ("train.optimizer", "adam") in run.variant))
    assert (adam.train.optimizer, adam.train.lr, adam.train.adam_beta1, adam.train.adam_beta2) == ("adam", 0.002,
                                                                                                  0.9, 0.999)
    decay = run_params(params, runs[-1])
    assert decay.datasets["cifar10"].weight_decay == 0.005 and params.datasets["cifar10"].weight_decay == 0.0005


@pytest.mark.parametrize("ablations, message", [
    ({"a": [{"method.threshold": 1.5}]},
     "invalid params: ablations.a[0]: methods.fixmatch_ra.threshold = 1.5 (must be a number in [0.0, 1.0])"),
    ({"a": [{"threshold": 0.5}]}, "invalid params: ablations.a[0]: threshold = 0.5 (not a params value an ablation "
                                  "can change (one of method, train, augment, speed, datasets, e.g. method.threshold, train.lr))"),
    ({"a": [{"folds": 3}]}, "invalid params: ablations.a[0]: folds = 3 (not a params value an ablation can change "
                            "(one of method, train, augment, speed, datasets, e.g. method.threshold, train.lr))"),
    ({"a": [{"train.lr_schedule": "linear"}]},
     "invalid params: ablations.a[0]: train.lr_end = None (a number with lr_schedule: linear, null with linear)"),
    ({"a": [{"train.lr": 0.1}], "b-c": [{"method.threshold": 0.5}]},
     "invalid params: ablations = 'b-c' (an axis name is a word (letters, digits, _))"),
    ({"a": []}, "invalid params: ablations.a = [] (must not be empty)"),
])
def test_a_bad_variant_is_refused_in_one_line(ablations, message):
    params = compose_params(["suite=quick"], REPO / "conf")
    with pytest.raises(ParamsError) as error:
        check_methods(validate_params({**params, "ablations": ablations}))  # the structure, then the method blocks
    assert str(error.value) == message


def test_dvc_exp_run_with_a_bad_variant_fails_while_params_are_composed(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.compose", str(tmp_path / "p.yaml"),
                           "+ablations={a: [{method.threshold: 1.5}]}"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and not (tmp_path / "p.yaml").exists()
    assert done.stderr == ("error: invalid params: ablations.a[0]: methods.fixmatch_ra.threshold = 1.5 "
                           "(must be a number in [0.0, 1.0])\n")


def test_a_run_key_with_bad_changes_is_refused_in_one_line():
    params = _suite("quick")
    with pytest.raises(ParamsError, match=r"^invalid params: run digits_20-fixmatch_ra-1\+threshold=2: threshold = 2 "
                                          r"\(not a params value an ablation can change"):
        parse_run("digits_20-fixmatch_ra-1+threshold=2", params)
    # the method block's values are its class's to check, as the train stage does after parsing the key
    run = parse_run("digits_20-fixmatch_ra-1+method.threshold=2", params)
    with pytest.raises(ParamsError, match=r"^invalid params: run digits_20-fixmatch_ra-1\+method.threshold=2: "
                                          r"methods.fixmatch_ra.threshold = 2 \(must be a number in \[0.0, 1.0\]\)"):
        run_method(run_params(params, run), run.method, where=f"run {run.key}")
    with pytest.raises(ParamsError, match=r"an ablation change is <params key>=<value>, got 'train.lr'"):
        parse_run("digits_20-fixmatch_ra-1+train.lr", params)
    with pytest.raises(ParamsError, match=r"train.optimizer = 'a b' \(a string variant value must be a word"):
        with_variant(params, {"train.optimizer": "a b"})


def _write_metrics(results, run: Run, error: float, mask: float) -> None:
    folder = results / run.key
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "error": error, "error_last": error, "error_best": error, "mask_rate": mask, "pseudo_label_accuracy": 0.9,
        "median_of_last": 5, "steps": 1024, "wall_time_s": 80.0, "steps_per_s": 12.8, "device": "cpu", "tf32": False}))


PUBLISHED = {
    "sources": {"p": "a source"}, "names": {"datasets": {}, "methods": {}},
    "results": [{"dataset": "digits", "labels": 20, "method": "fixmatch_cta", "mean": 7.0, "std": None,
                 "confidence": "secondary", "sources": ["p"]}],
    "ablations": [{"dataset": "digits", "labels": 20, "method": "fixmatch_cta", "settings": {"augment.strong_branch":
                   "no_cutout"}, "error": 9.5, "confidence": "secondary", "sources": ["p"]}],
}


def test_the_suite_tables_and_figures_come_from_the_finished_runs(tmp_path):
    params = _suite("quick_ablation")
    results = tmp_path / "results"
    _write_metrics(results, Run("digits", 20, "fixmatch_cta", 1), 7.0, 0.9)
    errors = {0.5: 12.0, 0.7: 9.0, 0.8: 8.0, 0.9: 7.5}  # 0.99 did not finish
    for run in ablation_runs(params):
        value = dict(run.variant).get("method.threshold")
        if value in errors:
            _write_metrics(results, run, errors[value], value)
        elif value is None:
            _write_metrics(results, run, 10.0 if "no_cutout" in run.key else 11.0, 0.8)
    points = suite_points(params, "threshold", results)
    assert [(p.settings["method.threshold"], p.error, p.folds) for p in points] == [
        (0.95, 7.0, (1, 1)), (0.5, 12.0, (1, 1)), (0.7, 9.0, (1, 1)), (0.8, 8.0, (1, 1)), (0.9, 7.5, (1, 1)),
        (0.99, None, (0, 1))]
    written = write_suite_ablations(params, results, parse_published(PUBLISHED), tmp_path / "ablation")
    assert [path.name for path in written] == ["threshold.png", "strong_branch.png"]
    table = (tmp_path / "ablation/ablation.md").read_text()
    assert "| threshold=0.99 | not run yet |" in table
    assert "| strong_branch=no_cutout | 10.00 (1/1), mask 0.80; published 9.50 [p] |" in table
    assert "| protocol | 7.00 (1/1), mask 0.90 |" in table
    assert Image.open(written[0]).size == (960, 360)  # error and mask rate


def test_a_suite_without_ablations_says_so(tmp_path):
    write_suite_ablations(_suite("quick"), tmp_path / "results", parse_published(PUBLISHED), tmp_path / "ablation")
    assert "sweeps no ablation axis" in (tmp_path / "ablation/ablation.md").read_text()
    assert not list((tmp_path / "ablation").glob("*.png"))


def _point(error, protocol=False, **settings):
    return AblationPoint("c-m", settings, error, changes={} if protocol else dict(settings),
                         label="protocol" if protocol else ", ".join(f"{k}={v}" for k, v in settings.items()))


@pytest.mark.parametrize("points, size", [
    ([_point(7.0, True, threshold=0.95), _point(9.0, threshold=0.5), _point(8.0, threshold=0.8)], (480, 360)),
    ([_point(7.0, True, T=1.0, tau=0.95, soft=False)] +  # lines against T, one per threshold; protocol dashed
     [_point(8.0 + t, T=t, tau=tau, soft=True) for t in (0.5, 1.0) for tau in (0.0, 0.95)], (480, 360)),
    ([_point(7.0, True, branch="full")] + [_point(9.0 + i, branch=f"b{i}") for i in range(5)], (720, 360)),
])
def test_one_plotting_function_draws_lines_for_numeric_params_and_bars_otherwise(tmp_path, points, size):
    plot_ablation(points, tmp_path / "figure.png", "axis")
    assert Image.open(tmp_path / "figure.png").size == size


def test_nothing_finished_is_an_error_naming_the_axis(tmp_path):
    with pytest.raises(ValueError, match="threshold: no finished run or experiment to plot"):
        plot_ablation([_point(None, threshold=0.5)], tmp_path / "x.png", "threshold")


def test_the_quick_ablation_suite_is_checked_by_the_supervised_ratio_alone(tmp_path):
    """No baseline is measured for its one fold (check.reference: none): its cells are unchecked, and
    FixMatch must still reach a third of the supervised error."""
    write_params(tmp_path / "params.yaml", ["suite=quick_ablation"], REPO / "conf")
    _write_metrics(tmp_path / "results", Run("digits", 20, "supervised", 1), 31.0, 0.0)
    _write_metrics(tmp_path / "results", Run("digits", 20, "fixmatch_cta", 1), 8.8, 0.9)
    done = subprocess.run([sys.executable, "pipeline/check.py", "--strict", "--params", tmp_path / "params.yaml",
                           "--results", tmp_path / "results", "--out", tmp_path / "check.txt",
                           "--metrics", tmp_path / "check.json"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("1 pass, 0 fail, 0 incomplete, 2 unchecked "
                           "(no reference: digits_20-supervised, digits_20-fixmatch_cta)\n")
