import copy
import subprocess
import sys

import pytest
import yaml

from fixmatch_bench.tools.compose import write_params
from fixmatch_bench.core.errors import ParamsError
from fixmatch_bench.core.params import load_params, parse_run, validate_params
from fixmatch_bench.core.runs import Run, expected_runs, run_table
from fixmatch_bench.methods.registry import check_methods, run_method
from conftest import REPO


def test_committed_params_are_the_composed_quick_suite(tmp_path):
    """params.yaml is generated from conf/; it must not drift from it (regenerate with `make params`)."""
    write_params(tmp_path / "params.yaml", [], REPO / "conf")
    assert (tmp_path / "params.yaml").read_text() == (REPO / "params.yaml").read_text()  # byte for byte, as DVC writes it


def test_paper_suite_composes_and_validates(tmp_path):
    write_params(tmp_path / "params.yaml", ["suite=paper"], REPO / "conf")
    params = validate_params(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    assert params.suite_name == "paper" and params.train.steps == 2**20
    assert len(expected_runs(params)) == (10 * 3 + 1) * 5  # + distribution alignment on CIFAR-100@400
    assert expected_runs(params)[-1].key == "cifar100_400-fixmatch_cta_da-5"


def test_expected_runs_of_the_quick_suite(params):
    keys = [run.key for run in expected_runs(validate_params(params))]
    assert keys == [f"digits_20-{method}-{fold}" for method in ["supervised", *params["ssl_methods"]]
                    for fold in params["folds"]]


def _with(params: dict, key: str, value) -> dict:
    changed = copy.deepcopy(params)
    node = changed
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})  # a dataset fact (conf/datasets) overridden in params
    node[last] = value
    return changed


@pytest.mark.parametrize("key, value, message", [
    ("threshold", 1.5, "invalid params: threshold = 1.5 (must be a number in [0.0, 1.0])"),
    ("threshold", "high", "invalid params: threshold = 'high' (must be a number in [0.0, 1.0])"),
    ("train.steps", -5, "invalid params: train.steps = -5 (must be an integer in [1, inf))"),
    ("train.lr", 0, "invalid params: train.lr = 0 (must be a number in (0.0, inf))"),
    ("train.ema", 1.2, "invalid params: train.ema = 1.2 (must be a number in [0.0, 1.0])"),
    ("train.device", "tpu", "invalid params: train.device = 'tpu' (allowed: auto, cpu, cuda)"),
    ("augment.impl", "dali", "invalid params: augment.impl = 'dali' (allowed: batched, reference)"),
    ("train.checkpoint_every", 100, "invalid params: train.checkpoint_every = 100 (must be a multiple of train.log_every = 32)"),
    ("data", ["imagenet"], "invalid params: data = 'imagenet' (allowed: cifar10, cifar100, digits, stl10, svhn, svhn_extra)"),
    ("cells", ["mnist_20"], "invalid params: cells: dataset of mnist_20 = 'mnist' (allowed: cifar10, cifar100, digits, stl10, svhn, svhn_extra)"),
    ("cells", ["digits_5000"], "invalid params: cells = 'digits_5000' (digits label count must be between 10 (one per class) and 1297 (the training set))"),
    ("cells", ["digits_5"], "invalid params: cells = 'digits_5' (digits label count must be between 10 (one per class) and 1297 (the training set))"),
    ("cells", ["digits-20"], "invalid params: cells = 'digits-20' (expected <dataset>_<labels>, e.g. cifar10_40)"),
    ("cells", ["cifar10_40"], "invalid params: cells: dataset of cifar10_40 (must be listed in data) = 'cifar10' (allowed: digits)"),
    ("ssl_methods", ["mixmatch"], "invalid params: ssl_methods = 'mixmatch' (allowed: fixmatch_cta, fixmatch_cta_da, fixmatch_ra, supervised)"),
    ("ssl_methods", ["supervised"], "invalid params: ssl_methods = ['supervised'] (a list of distinct methods other than the baseline (supervised))"),
    ("cell_methods", {"fixmatch_cta_da": ["digits_40"]}, "invalid params: cell_methods.fixmatch_cta_da = 'digits_40' (allowed: digits_20)"),
    ("folds", [0], "invalid params: folds[0] = 0 (must be an integer in [1, inf))"),
    ("folds", [], "invalid params: folds = [] (must not be empty)"),
    ("treshold", 0.9, "invalid params: treshold = 0.9 (not a known key; allowed: suite_name, threshold, max_run_hours, "
                      "train, augment, speed, checkpoints, launcher, check, sources, datasets, methods, data, folds, cells, baseline, "
                      "ssl_methods, cell_methods, ablations, runs)"),
    ("train.stesp", 1024, "invalid params: train.stesp = 1024 (not a known key; allowed: steps, batch, uratio, "
                          "lr, momentum, nesterov, ema, eval_every, median_of_last, eval_batch, "
                          "log_every, checkpoint_every, seed, device, lr_schedule, lr_end, "
                          "optimizer, adam_beta1, adam_beta2)"),
    ("train.steps", 1024.0, "invalid params: train.steps = 1024.0 (must be an integer in [1, inf))"),
    ("train.nesterov", "yes", "invalid params: train.nesterov = 'yes' (allowed: true, false)"),
    ("datasets.digits.network.padding", "same", "invalid params: datasets.digits.network.padding = 'same' "
                                                "(allowed: tf, symmetric)"),
    ("checkpoints.keep_finished", 1, "invalid params: checkpoints.keep_finished = 1 (allowed: true, false)"),
    ("folds", [1, 1], "invalid params: folds = [1, 1] (a non-empty list of distinct positive integers (split seeds))"),
    ("methods.fixmatch_ra.strong", "autoaugment", "invalid params: methods.fixmatch_ra.strong = 'autoaugment' (allowed: randaugment, ctaugment)"),
    ("methods.fixmatch_ra.threshold", 1.5, "invalid params: methods.fixmatch_ra.threshold = 1.5 (must be a number in [0.0, 1.0])"),
    ("train.lr", float("inf"), "invalid params: train.lr = inf (must be a finite number in (0.0, inf))"),
    ("methods.fixmatch_ra.unlabeled_weight", float("inf"), "invalid params: methods.fixmatch_ra.unlabeled_weight = inf (must be a finite number in [0.0, inf))"),
    ("threshold", float("nan"), "invalid params: threshold = nan (must be a finite number in [0.0, 1.0])"),
    ("datasets.digits.weight_decay", float("-inf"), "invalid params: datasets.digits.weight_decay = -inf (must be a finite number in [0.0, inf))"),
    ("ablations", {"lr": [{"train.lr": float("inf")}]}, "invalid params: ablations.lr[0]: train.lr = inf (must be a finite number in (0.0, inf))"),
    # the suite's methods are checked in the order of their names: fixmatch_cta is the first that trains on unlabeled data
    ("train.uratio", 0, "invalid params: train.uratio = 0 (must be > 0 for fixmatch_cta, which trains on unlabeled data; "
                        "methods.fixmatch_cta.allow_no_unlabeled_loss: true allows 0 (an ablation))"),
    ("methods.fixmatch_ra.unlabeled_weight", 0.0, "invalid params: methods.fixmatch_ra.unlabeled_weight = 0.0 (must be > 0 "
                                                  "for fixmatch_ra, which trains on unlabeled data; "
                                                  "methods.fixmatch_ra.allow_no_unlabeled_loss: true allows 0 (an ablation))"),
    ("ssl_methods", [], "invalid params: ssl_methods = [] (must not be empty while check.max_ratio_to_supervised compares the "
                        "semi-supervised methods with the baseline; set it to null to train the baselines alone)"),
])
def test_each_bad_value_is_rejected_with_its_message(params, key, value, message):
    with pytest.raises(ParamsError) as error:
        check_methods(validate_params(_with(params, key, value)))  # the structure, then the methods' blocks
    assert str(error.value) == message


def test_no_unlabeled_loss_is_allowed_only_for_the_methods_that_declare_it_and_for_supervised_runs(params):
    no_unlabeled = _with(params, "train.uratio", 0)
    for method in params["ssl_methods"]:
        no_unlabeled["methods"][method]["allow_no_unlabeled_loss"] = True
    typed = validate_params(no_unlabeled)
    check_methods(typed)
    assert run_method(typed, parse_run("digits_20-supervised-1", typed).method).name == "supervised"
    with pytest.raises(ParamsError, match=r"^invalid params: train.uratio = 0 \(must be > 0 for fixmatch_cta_da"):
        run_method(typed, parse_run("digits_20-fixmatch_cta_da-1", typed).method)  # outside the suite, not declared


def test_the_committed_params_are_valid_and_read_as_typed_attributes(params):
    typed = validate_params(params)
    assert typed.train.lr == 0.03 and typed.datasets["digits"].network.kwargs() == {
        "filters": 16, "scales": 2, "repeat": 1, "bn_momentum": 0.01}
    assert typed.speed.channels_last and not typed.speed.tf32 and typed.methods["fixmatch_cta"].strong == "ctaugment"
    assert validate_params(typed) is typed  # already validated: returned as it is


def test_a_misspelled_key_is_named_rather_than_the_one_it_replaced(params):
    changed = copy.deepcopy(params)
    changed["treshold"] = changed.pop("threshold")
    with pytest.raises(ParamsError, match=r"^invalid params: treshold = 0.95 \(not a known key"):
        validate_params(changed)


def test_a_run_key_names_any_cell_method_and_fold_of_the_tables(params):
    params = validate_params(params)
    assert parse_run("digits_20-fixmatch_cta_da-4", params) == Run("digits", 20, "fixmatch_cta_da", 4)
    for key, message in (("digits_20-fixmatch_ra", "expected <cell>-<method>-<fold>"),
                         ("digits_20-fixmatch_xx-1", "run digits_20-fixmatch_xx-1: method = 'fixmatch_xx'"),
                         ("mnist_20-supervised-1", "run: dataset of mnist_20 = 'mnist'")):
        with pytest.raises(ParamsError, match=message):
            parse_run(key, params)


def test_the_runs_table_follows_the_suites_lists_and_a_stale_one_is_refused(params, tmp_path):
    assert params["runs"] == run_table(validate_params(params))
    assert [key for key in params["runs"] if "-supervised-" in key] == [f"digits_20-supervised-{fold}"
                                                                       for fold in params["folds"]]
    assert params["runs"]["digits_20-supervised-1"] == ["digits", "supervised", "digits_20-1"]
    assert params["runs"]["digits_20-fixmatch_cta-2"] == ["digits", "fixmatch_cta", "digits_20-2"]
    stale = copy.deepcopy(params)
    stale["folds"] = [1]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(stale))
    with pytest.raises(ParamsError, match="runs = '...' .does not match cells, baseline, ssl_methods, cell_methods and folds; "
                                          "params.yaml is generated from conf/"):
        load_params(tmp_path / "params.yaml")


def test_composing_a_bad_value_fails_with_one_line_and_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.compose", str(tmp_path / "p.yaml"), "threshold=1.5"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and not (tmp_path / "p.yaml").exists()
    assert done.stderr == "error: invalid params: threshold = 1.5 (must be a number in [0.0, 1.0])\n"


def test_an_unknown_suite_is_refused_in_one_line_listing_the_suites(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.compose", str(tmp_path / "p.yaml"), "suite=nope"],
                          cwd=REPO, capture_output=True, text=True)
    suites = ", ".join(sorted(path.stem for path in (REPO / "conf/suite").glob("*.yaml")))
    assert done.returncode == 2 and not (tmp_path / "p.yaml").exists()
    assert done.stderr == f"error: invalid params: suite = 'nope' (allowed: {suites})\n"
