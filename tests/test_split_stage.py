"""The prepare and split stage scripts on the STL-10 miniature with 1000-index predefined folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import run_table

from conftest import REPO
from miniature_datasets import STL10_COUNTS, expected_images
from paper_miniatures import STL10_TRAIN, stl10_large_folds, write_stl10_large
from fixmatch_bench.data.prepared import load_prepared
from fixmatch_bench.train.run_data import load_run_data


def stage(script: str, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, f"pipeline/{script}", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def write_stl10_params(path: Path, train_size: int) -> Path:
    """The committed params with STL-10 as the only dataset, at ``train_size`` train images."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["stl10"].update(train_size=train_size, unlabeled_size=STL10_COUNTS["unlabeled"])
    params.update(data=["stl10"], cells=["stl10_1000", "stl10_20"])
    params["runs"] = run_table(validate_params(params))
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stl10(tmp_path_factory) -> Path:
    """A working directory with params.yaml and ``prepared/stl10``, made by the real prepare stage."""
    root = tmp_path_factory.mktemp("stl10")
    write_stl10_large(root / "raw")
    params = write_stl10_params(root / "params.yaml", STL10_TRAIN)
    stage("prepare.py", "--dataset", "stl10", "--params", params, "--catalog", REPO / "conf/sources", "--raw", root / "raw",
          "--out", root / "prepared/stl10")
    return root


def split(root: Path, cell: str, fold: int, out: Path, params: Path | None = None,
          check: bool = True) -> subprocess.CompletedProcess:
    """The split stage script on ``root``'s prepared data (and params unless ``params`` is given)."""
    return stage("split.py", "--cell", cell, "--fold", fold, "--prepared", root / "prepared",
                 "--params", params or root / "params.yaml", "--out", out, check=check)


def test_1000_labels_take_the_predefined_fold_line_counting_from_0(stl10, tmp_path):
    for fold in (1, 2):
        split(stl10, "stl10_1000", fold, tmp_path / f"{fold}.json")
        drawn = json.loads((tmp_path / f"{fold}.json").read_text())
        # Line f of the miniature fold_indices.txt holds every train index i with i % 101 != f, in descending order.
        assert drawn["indices"] == [i for i in range(STL10_TRAIN) if i % 101 != fold]
        assert drawn["indices"] == sorted(stl10_large_folds()[fold].tolist())
        assert drawn["source"] == f"predefined fold {fold} (0-indexed line of fold_indices.txt)"
        assert drawn["labels"] == 1000 and sum(drawn["class_histogram"]) == 1000


def test_other_label_counts_use_the_algorithm_with_a_uniform_distribution(stl10, tmp_path):
    split(stl10, "stl10_20", 1, tmp_path / "20.json")
    drawn = json.loads((tmp_path / "20.json").read_text())
    assert drawn["source"] == "official class-distribution-matching algorithm"
    assert drawn["class_histogram"] == [2] * 10


@pytest.mark.parametrize("cell", ["stl10_1000", "stl10_20"])
def test_two_stage_runs_write_identical_split_files(stl10, tmp_path, cell):
    split(stl10, cell, 3, tmp_path / "first.json")
    split(stl10, cell, 3, tmp_path / "second.json")
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()


def test_labeled_images_are_in_the_unlabeled_set_which_ends_with_the_extra_unlabeled_images(stl10, tmp_path):
    split(stl10, "stl10_1000", 1, tmp_path / "split.json")
    data = load_run_data(stl10 / "prepared/stl10", tmp_path / "split.json", torch.device("cpu"))
    indices = json.loads((tmp_path / "split.json").read_text())["indices"]
    unlabeled = STL10_COUNTS["unlabeled"]
    assert data.unlabeled_images.shape == (STL10_TRAIN + unlabeled, 3, 96, 96)
    assert torch.equal(data.labeled_images, data.unlabeled_images[indices])
    assert torch.equal(data.labeled_targets, data.unlabeled_targets[indices])
    assert data.unlabeled_targets[STL10_TRAIN:].tolist() == [-1] * unlabeled
    extra = torch.from_numpy(expected_images(unlabeled, 96, "unlabeled")).permute(0, 3, 1, 2)
    assert torch.equal(data.unlabeled_images[STL10_TRAIN:], extra)
    prepared = load_prepared(stl10 / "prepared/stl10")
    assert np.array_equal(prepared.train_labels[indices], data.labeled_targets.numpy())


def test_a_train_size_that_does_not_match_the_prepared_data_is_one_line_without_traceback(stl10, tmp_path):
    params = write_stl10_params(tmp_path / "params.yaml", 5000)
    failed = split(stl10, "stl10_1000", 1, tmp_path / "split.json", params=params, check=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip() == ("error: prepared stl10 has 1010 training and 6 extra unlabeled images, but "
                                     "datasets.stl10 has train_size 5000 and unlabeled_size 6")
    assert not (tmp_path / "split.json").exists()
