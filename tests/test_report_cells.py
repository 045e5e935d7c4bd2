import json
import math

import pytest

from fixmatch_bench.core.runs import Run
from fixmatch_bench.report.cells import (
    ResultsError,
    aggregate_cells,
    collect_runs,
    cost_by_cell,
    cost_totals,
    load_run,
    run_dir_name,
    summary,
)



def write_metrics(results, run, error, device="cpu", wall_time_s=100.0, steps=1024, **extra):
    folder = results / run_dir_name(run)
    folder.mkdir(parents=True)
    metrics = {
        "run": f"{run.dataset}_{run.labels}-{run.method}", "dataset": run.dataset, "labels": run.labels,
        "method": run.method, "fold": run.fold, "error": error, "error_last": 99.0, "error_best": 0.5,
        "median_of_last": 20, "evaluations": 50, "steps": steps, "wall_time_s": wall_time_s,
        "steps_per_s": steps / wall_time_s, "device": device, "split_sha256": "0" * 64, "dataset_sha256": "1" * 64,
    }
    metrics.update(extra)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_run_dir_name_matches_the_contract():
    assert run_dir_name(Run("digits", 20, "fixmatch_ra", 1)) == "digits_20-fixmatch_ra-1"


def test_cells_carry_sample_std_missing_folds_and_completeness(tmp_path):
    ra = [Run("digits", 20, "fixmatch_ra", fold) for fold in (1, 2, 3)]
    sup = [Run("digits", 20, "supervised", fold) for fold in (1, 2, 3)]
    for run, error in zip(ra, (1.0, 2.0, 3.0), strict=True):
        write_metrics(tmp_path, run, error, mask_rate=0.9, pseudo_label_accuracy=0.8)
    write_metrics(tmp_path, sup[0], 2.0)
    write_metrics(tmp_path, sup[2], 4.0)
    cells = aggregate_cells(collect_runs(ra + sup, tmp_path))
    first, second = cells
    assert first.key == "digits_20-fixmatch_ra"
    assert (first.mean, first.std) == (2.0, 1.0)  # sample std of 1, 2, 3 is 1 (population: 0.816)
    assert first.complete and first.missing_folds == () and first.folds_done == 3
    assert (first.mask_rate, first.median_of_last) == (0.9, (20,))
    assert first.pseudo_label_accuracy == pytest.approx(0.8)
    assert second.fold_errors == {1: 2.0, 3: 4.0}
    assert second.mean == 3.0 and math.isclose(second.std, math.sqrt(2))
    assert not second.complete and second.missing_folds == (2,)
    assert second.mask_rate is None


def test_one_fold_has_no_std_and_no_fold_has_no_mean(tmp_path):
    runs = [Run("svhn", 40, "fixmatch_ra", 1), Run("svhn", 40, "fixmatch_ra", 2), Run("svhn", 250, "fixmatch_ra", 1)]
    write_metrics(tmp_path, runs[0], 5.0)
    one, none = aggregate_cells(collect_runs(runs, tmp_path))
    assert (one.mean, one.std, one.folds_done, one.missing_folds) == (5.0, None, 1, (2,))
    assert (none.mean, none.std, none.folds_done, none.complete) == (None, None, 0, False)


def test_a_folder_without_metrics_is_missing(tmp_path):
    run = Run("digits", 20, "fixmatch_ra", 1)
    (tmp_path / run_dir_name(run)).mkdir()
    assert load_run(run, tmp_path) is None


def test_metrics_of_another_run_are_rejected(tmp_path):
    run = Run("digits", 20, "fixmatch_ra", 1)
    write_metrics(tmp_path, run, 3.0, fold=2)
    with pytest.raises(ResultsError, match=r"field 'fold' = 2 does not match the run folder \(1\)"):
        load_run(run, tmp_path)


def test_broken_metrics_name_the_file_and_field(tmp_path):
    run = Run("digits", 20, "fixmatch_ra", 1)
    write_metrics(tmp_path, run, "3.0")
    with pytest.raises(ResultsError, match=r"metrics.json: field 'error' = '3.0' is invalid; expected float"):
        load_run(run, tmp_path)
    (tmp_path / run_dir_name(run) / "metrics.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_run(run, tmp_path)


def test_repeated_fold_is_an_error(tmp_path):
    runs = [Run("digits", 20, "fixmatch_ra", 1)] * 2
    with pytest.raises(ValueError, match="repeats a fold"):
        aggregate_cells(collect_runs(runs, tmp_path))


def test_cost_counts_gpu_hours_for_gpu_runs_only(tmp_path):
    runs = [Run("cifar10", 40, "fixmatch_ra", fold) for fold in (1, 2, 3)] + [Run("digits", 20, "supervised", 1)]
    write_metrics(tmp_path, runs[0], 10.0, device="NVIDIA H100 80GB HBM3", wall_time_s=7200.0, steps=2048)
    write_metrics(tmp_path, runs[1], 11.0, device="NVIDIA H100 80GB HBM3", wall_time_s=3600.0, steps=2048)
    write_metrics(tmp_path, runs[3], 30.0, device="cpu", wall_time_s=900.0, steps=512)
    collected = collect_runs(runs, tmp_path)
    assert collected[0][1].gpu_hours == 2.0 and collected[3][1].gpu_hours == 0.0
    per_cell = cost_by_cell(collected)
    assert list(per_cell) == ["cifar10_40-fixmatch_ra", "digits_20-supervised"]
    cifar = per_cell["cifar10_40-fixmatch_ra"]
    assert (cifar.runs_done, cifar.runs_expected, cifar.steps, cifar.wall_time_s, cifar.gpu_hours) == (2, 3, 4096, 10800.0, 3.0)
    total = cost_totals(collected)
    assert (total.runs_done, total.runs_expected, total.steps, total.wall_time_s, total.gpu_hours) == (3, 4, 4608, 11700.0, 3.0)


def test_summary_shape(tmp_path):
    runs = [Run("digits", 20, "fixmatch_ra", fold) for fold in (1, 2)] + [Run("digits", 20, "supervised", 1),
                                                                         Run("digits", 40, "supervised", 1)]
    write_metrics(tmp_path, runs[0], 2.0, mask_rate=0.9)
    write_metrics(tmp_path, runs[1], 3.0, mask_rate=0.8)
    write_metrics(tmp_path, runs[2], 20.0)
    assert summary(aggregate_cells(collect_runs(runs, tmp_path))) == {
        "digits_20-fixmatch_ra": 2.5,
        "digits_20-supervised": 20.0,
        "folds_missing": {"digits_20-fixmatch_ra": 0, "digits_20-supervised": 0, "digits_40-supervised": 1},
        "mask_rate": {"digits_20-fixmatch_ra": 0.85},
    }
