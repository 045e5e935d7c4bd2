"""A miniature paper suite (CIFAR-10/100, SVHN, STL-10) through the real DVC pipeline.

The raw files are the native-format miniatures of :mod:`paper_miniatures`,
served over loopback HTTP and reached through ``sources.mirror``; everything
that differs from the paper suite (dataset sizes, a tiny network, a few steps,
the miniatures' md5s) lives in ``conf/suite/mini_paper.yaml``, written here and
made the default suite of a copy of ``conf/``. The real configuration is not edited.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import dvc, repo_on_suite
from miniature_datasets import STL10_COUNTS
from miniature_server import FileServer, closed_port_url
from paper_miniatures import STL10_TRAIN, SVHN_TRAIN_CLASS_COUNTS, stl10_large_folds, write_paper_miniatures

DATASETS = ("cifar10", "cifar100", "svhn", "stl10")
# The miniatures' sizes (train, test), see miniature_datasets and paper_miniatures.
SIZES = {"cifar10": (60, 20), "cifar100": (200, 100), "svhn": (sum(SVHN_TRAIN_CLASS_COUNTS), 20),
         "stl10": (STL10_TRAIN, 10)}
CELLS = ("cifar10_20", "cifar100_100", "svhn_20", "stl10_1000")
TINY_NETWORK = {"filters": 8, "scales": 2, "repeat": 1}
TRAIN = {"steps": 4, "batch": 4, "uratio": 1, "ema": 0.9, "eval_every": 2, "median_of_last": 2, "eval_batch": 256,
         "log_every": 2, "checkpoint_every": 4, "device": "cpu"}


def suite_file(mirror: str | None) -> str:
    """``conf/suite/mini_paper.yaml``: the paper suite's datasets at miniature sizes."""
    suite = {
        "suite_name": "mini_paper",
        "folds": [1],
        "data": list(DATASETS),
        "cells": list(CELLS),
        "ssl_methods": ["fixmatch_ra"],
        "cell_methods": {},
        "train": TRAIN,
        "sources": {"mirror": mirror, "retries": 1, "timeout_s": 10, "backoff_s": 0.01},
        "datasets": {name: {"train_size": train, "test_size": test, "network": TINY_NETWORK,
                            **({"unlabeled_size": STL10_COUNTS["unlabeled"]} if name == "stl10" else {})}
                     for name, (train, test) in SIZES.items()},
    }
    return "# @package _global_\n" + yaml.safe_dump(suite, sort_keys=False)


def catalog(files: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    """conf/sources/<dataset>.yaml of the miniatures (replacing the real URLs and checksums)."""
    return {f"conf/sources/{name}.yaml": yaml.safe_dump({"files": entries}) for name, entries in files.items()}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[FileServer, dict[str, list[dict[str, str]]]]]:
    """The loopback HTTP server over the paper miniatures, and their ``files`` lists."""
    directory = tmp_path_factory.mktemp("served")
    files = write_paper_miniatures(directory)
    with FileServer(directory) as server:
        yield server, files


@pytest.fixture(scope="module")
def paper_repo(tmp_path_factory, served) -> Path:
    """A repo copy on the mini paper suite, after ``dvc repro aggregate``."""
    server, files = served
    repo = repo_on_suite(tmp_path_factory.mktemp("paper"), "mini_paper", suite_file(server.url), catalog(files))
    dvc(repo, "repro", "aggregate")
    return repo


def test_every_raw_file_came_from_the_mirror_server(paper_repo, served):
    server, files = served
    fetched = {request.name for request in server.requests if request.status == 200}
    assert fetched == {entry["name"] for entries in files.values() for entry in entries}
    for dataset, entries in files.items():
        for entry in entries:
            assert hashlib.md5((paper_repo / "data/raw" / dataset / entry["name"]).read_bytes()).hexdigest() == entry["md5"]


def test_reports_list_all_four_datasets(paper_repo):
    for name in ("results.md", "results.csv", "results.tex", "cost.md", "cost.csv", "summary.json",
                 "error_curves.png", "error_vs_labels.png", "training_signals.png"):
        assert (paper_repo / "reports" / name).stat().st_size > 0
    summary = json.loads((paper_repo / "reports/summary.json").read_text())
    runs = {f"{cell}-{method}" for cell in CELLS for method in ("supervised", "fixmatch_ra")}
    assert set(summary) - {"folds_missing", "mask_rate"} == runs
    assert summary["folds_missing"] == dict.fromkeys(runs, 0)
    table = (paper_repo / "reports/results.csv").read_text()
    for dataset in DATASETS:
        assert dataset in table


def test_every_runs_lock_entry_records_the_hashes_of_its_split_and_prepared_data(paper_repo):
    lock = yaml.safe_load((paper_repo / "dvc.lock").read_text())["stages"]
    for cell in CELLS:
        dataset = cell.rsplit("_", 1)[0]
        split_path = paper_repo / f"data/splits/{cell}-1.json"
        info = json.loads((paper_repo / f"data/prepared/{dataset}/info.json").read_text())
        assert json.loads(split_path.read_text())["dataset_sha256"] == info["sha256"]
        for stage in (f"train@{cell}-supervised-1", f"train@{cell}-fixmatch_ra-1"):
            deps = {dep["path"]: dep for dep in lock[stage]["deps"]}
            assert deps[f"data/splits/{cell}-1.json"]["md5"] == hashlib.md5(split_path.read_bytes()).hexdigest()
            assert deps[f"data/prepared/{dataset}"]["md5"].endswith(".dir")
            metrics = json.loads((paper_repo / f"results/{stage.split('@')[1]}/metrics.json").read_text())
            assert metrics["steps"] == TRAIN["steps"] and 0 <= metrics["error"] <= 100


def test_labeled_indices_lie_in_the_unlabeled_set(paper_repo):
    for cell in CELLS:
        dataset, labels = cell.rsplit("_", 1)
        split = json.loads((paper_repo / f"data/splits/{cell}-1.json").read_text())
        indices = split["indices"]
        # The unlabeled set is the whole train set (then STL-10's extra images): labeled ⊂ train ⊂ unlabeled.
        assert len(indices) == len(set(indices)) == int(labels)
        assert indices == sorted(indices) and 0 <= indices[0] and indices[-1] < SIZES[dataset][0]
        train_labels = np.load(paper_repo / f"data/prepared/{dataset}/train_labels.npy")
        num_classes = json.loads((paper_repo / f"data/prepared/{dataset}/info.json").read_text())["num_classes"]
        assert split["class_histogram"] == np.bincount(train_labels[indices], minlength=num_classes).tolist()


def test_balanced_datasets_get_equal_classes_and_svhn_a_class_distribution_matched_split(paper_repo):
    histogram = {cell: json.loads((paper_repo / f"data/splits/{cell}-1.json").read_text())["class_histogram"]
                 for cell in CELLS}
    assert histogram["cifar10_20"] == [2] * 10
    assert histogram["cifar100_100"] == [1] * 100
    # SVHN train holds 20, 20, 10, 10, 10, 10, 5, 5, 5, 5 images per class: 20 labels keep those proportions.
    assert histogram["svhn_20"] == [4, 4, 2, 2, 2, 2, 1, 1, 1, 1]


def test_stl10_at_1000_labels_is_the_predefined_fold_of_the_prepared_data(paper_repo):
    split = json.loads((paper_repo / "data/splits/stl10_1000-1.json").read_text())
    assert "predefined fold 1" in split["source"]
    assert split["indices"] == sorted(stl10_large_folds()[1].tolist())
    assert split["indices"] == [i for i in range(STL10_TRAIN) if i % 101 != 1]
    assert np.load(paper_repo / "data/prepared/stl10/unlabeled_images.npy").shape == (6, 96, 96, 3)


def test_a_second_repro_is_up_to_date(paper_repo):
    assert "Data and pipelines are up to date." in dvc(paper_repo, "repro", "aggregate").stdout


def test_unreachable_source_without_mirror_is_one_line_naming_the_url_and_the_mirror_setting(tmp_path, served):
    _, files = served
    url = closed_port_url() + files["cifar10"][0]["name"]
    unreachable = {**files, "cifar10": [{**files["cifar10"][0], "url": url}]}
    repo = repo_on_suite(tmp_path, "mini_paper", suite_file(None), catalog(unreachable))
    failed = dvc(repo, "repro", "download@cifar10", check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("download cifar10: error:")]
    assert len(lines) == 1
    assert f"could not reach {url}" in lines[0]
    assert "the FIXMATCH_MIRROR environment variable, `dvc exp run -S sources.mirror=...`" in lines[0]
    assert not (repo / "data/raw/cifar10/cifar-10-python.tar.gz").exists()


def test_a_download_interrupted_in_one_repro_resumes_in_the_next(tmp_path, served):
    """DVC deletes a stage's outputs before running it; the partial file lives beside them and survives."""
    server, files = served
    name, md5 = files["cifar10"][0]["name"], files["cifar10"][0]["md5"]
    repo = repo_on_suite(tmp_path, "mini_paper", suite_file(server.url).replace("retries: 1", "retries: 0"),
                         catalog(files))
    server.faults.drop_after[name] = 1000
    start = len(server.requests)
    assert dvc(repo, "repro", "download@cifar10", check=False).returncode != 0
    assert (repo / "data/raw/.partial/cifar10" / f"{name}.part").stat().st_size == 1000
    dvc(repo, "repro", "download@cifar10")
    assert [(r.range, r.status) for r in server.requests[start:] if r.name == name] == [(None, 200), ("bytes=1000-", 206)]
    assert hashlib.md5((repo / "data/raw/cifar10" / name).read_bytes()).hexdigest() == md5
    assert not (repo / "data/raw/.partial/cifar10").exists()
