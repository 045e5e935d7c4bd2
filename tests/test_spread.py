import json
import math
import statistics

import pytest
import yaml

from conftest import REPO, digits_workspace
from fixmatch_bench.core.errors import ParamsError
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import Run, run_table
from fixmatch_bench.tools.spread import (SpreadPlan, Variation, _task_key, apply_overrides, cell_statistics, load_plan,
                                   measure)


def records(cell, table, names):
    """``table[fold][variation]`` errors as spread records."""
    return [{"variation": name, "cell": cell, "fold": fold, "error": error}
            for fold, row in table.items() for name, error in zip(names, row)]


def test_tolerance_is_factor_times_the_pooled_spread_of_the_mean():
    # fold 1 moves between 3 and 9 (bimodal), folds 2 and 3 by 0.4
    table = {1: [3.0, 9.0, 3.0], 2: [6.0, 6.4, 6.2], 3: [16.0, 15.6, 15.8]}
    stats = cell_statistics(records("digits_20-fixmatch_ra", table, ["a", "b", "c"]), factor=3.0, floor=1.0)
    cell = stats["digits_20-fixmatch_ra"]
    squares = (4 + 16 + 4) + (0.04 + 0.04 + 0) + (0.04 + 0.04 + 0)  # around each fold's mean: 5, 6.2, 15.8
    sigma_run = math.sqrt(squares / (3 * 2))  # 3 folds x (3 variations - 1) degrees of freedom
    assert cell["sigma_run"] == pytest.approx(sigma_run, abs=1e-4)
    assert cell["sigma_mean"] == pytest.approx(sigma_run / math.sqrt(3), abs=1e-4)
    assert cell["tolerance"] == pytest.approx(3 * sigma_run / math.sqrt(3), abs=1e-4)
    assert cell["mean"] == pytest.approx((5.0 + 6.2 + 15.8) / 3, abs=1e-4)
    assert cell["variation_means"]["b"] == pytest.approx((9.0 + 6.4 + 15.6) / 3, abs=1e-4)
    assert cell["fold_std"] == pytest.approx(statistics.stdev([5.0, 6.2, 15.8]), abs=1e-4)


def test_sigma_run_pools_every_measured_fold_and_the_mean_uses_the_suites_folds():
    table = {1: [3.0, 9.0, 3.0], 2: [6.0, 6.4, 6.2], 3: [16.0, 15.6, 15.8]}
    cell = cell_statistics(records("c_1-m", table, ["a", "b", "c"]), 3.0, 1.0, suite_folds=[1, 2])["c_1-m"]
    sigma_run = math.sqrt(((4 + 16 + 4) + 0.08 + 0.08) / (3 * 2))  # all three folds
    assert cell["sigma_run"] == pytest.approx(sigma_run, abs=1e-4) and cell["sigma_run_folds"] == 3
    assert cell["sigma_mean"] == pytest.approx(sigma_run / math.sqrt(2), abs=1e-4) and cell["folds"] == 2
    assert cell["mean"] == pytest.approx((5.0 + 6.2) / 2, abs=1e-4)
    assert list(cell["errors"]) == [1, 2, 3]


def test_without_spread_the_tolerance_is_the_floor():
    one = cell_statistics(records("c_1-m", {1: [5.0], 2: [7.0]}, ["pipeline"]), factor=3.0, floor=1.0)["c_1-m"]
    assert (one["tolerance"], one["sigma_run"]) == (1.0, None)
    still = cell_statistics(records("c_1-m", {1: [5.0, 5.0], 2: [7.0, 7.1]}, ["a", "b"]), 3.0, 1.0)["c_1-m"]
    assert still["tolerance"] == 1.0  # 3 x 0.05 is below the floor


def test_a_missing_run_is_an_error():
    partial = records("c_1-m", {1: [5.0, 6.0], 2: [7.0, 7.1]}, ["a", "b"])[:-1]
    with pytest.raises(ValueError, match="cell c_1-m lacks some fold"):
        cell_statistics(partial, 3.0, 1.0)


def test_the_committed_plan_and_its_overrides_are_valid(params):
    params = validate_params(params)
    plan = load_plan(REPO / "conf/spread.yaml")
    assert plan.factor > 0 and plan.variations[0] == Variation("pipeline", None, {})
    for variation in plan.variations:
        apply_overrides(params, variation.overrides)


def test_bad_plans_and_overrides_are_refused_before_any_work(tmp_path, params):
    path = tmp_path / "spread.yaml"
    path.write_text(yaml.safe_dump({"factor": 0, "variations": {"a": {}}}))
    with pytest.raises(ParamsError, match="factor = 0"):
        load_plan(path)
    path.write_text(yaml.safe_dump({"factor": 3, "variations": {"a": {"threads": 0}}}))
    with pytest.raises(ParamsError, match="variations.a.threads = 0"):
        load_plan(path)
    path.write_text(yaml.safe_dump({"factor": 3, "variations": {"a": {}}}))
    with pytest.raises(ParamsError, match="no variation b"):
        load_plan(path, only=["b"])
    params = validate_params(params)
    with pytest.raises(ParamsError, match="speed.channel_last is not a key"):
        apply_overrides(params, {"speed.channel_last": False})
    with pytest.raises(ParamsError, match="threshold = 1.5"):
        apply_overrides(params, {"threshold": 1.5})
    assert apply_overrides(params, {"train.seed": 1}).train.seed == 1 and params.train.seed == 0


def test_an_interrupted_study_resumes_from_its_finished_runs(tmp_path):
    """Runs recorded in the partial file are not trained again; the others are, in fresh processes."""
    root, params = digits_workspace(tmp_path, {"steps": 4, "eval_every": 2, "log_every": 2, "checkpoint_every": 2})
    params.update(cells=["digits_20"], folds=[1], ssl_methods=[], check={**params["check"], "max_ratio_to_supervised": None})
    params["runs"] = run_table(validate_params(params))
    params = validate_params(params)
    plan = SpreadPlan(3.0, (Variation("pipeline"), Variation("threads_1", 1)))
    partial = tmp_path / "partial.jsonl"
    recorded = {"variation": "pipeline", "cell": "digits_20-supervised", "fold": 1, "error": 12.5,
                "threads": 2, "wall_time_s": 1.0}
    partial.write_text(json.dumps({"key": _task_key(params, Run("digits", 20, "supervised", 1), plan.variations[0]),
                                   **recorded}) + "\n")
    result = measure(params, plan, root / "prepared", partial)
    assert result[0] == recorded  # taken from the partial file, not retrained
    assert result[1]["variation"] == "threads_1" and result[1]["threads"] == 1 and 0 <= result[1]["error"] <= 100
    assert len(partial.read_text().splitlines()) == 2  # the new run was recorded too
