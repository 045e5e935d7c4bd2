"""The prepare stage script (pipeline/prepare.py) run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from miniature_datasets import (
    expected_images,
    md5_of,
    stl10_fold_indices,
    write_miniature,
    write_params,
)
from miniature_server import http_server  # noqa: F401  (fixture)

from fixmatch_bench.data.download import MIRROR_ENV
from fixmatch_bench.data.prepared import load_prepared

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != MIRROR_ENV}
    return subprocess.run(
        [sys.executable, str(REPO / "pipeline" / script), *map(str, args)], capture_output=True, text=True, env=environ, timeout=120
    )


def _prepare(dataset: str, params: Path, raw: Path, out: Path) -> subprocess.CompletedProcess:
    return _run("prepare.py", "--dataset", dataset, "--params", params, "--raw", raw, "--out", out)


EXPECTED = {
    "cifar10": (10, 60, 20, 32),
    "cifar100": (100, 200, 100, 32),
    "svhn": (10, 60, 20, 32),
    "svhn_extra": (10, 70, 20, 32),
    "stl10": (10, 20, 10, 96),
}


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_prepare_stage_writes_a_loadable_prepared_dataset(dataset, tmp_path):
    sources = write_miniature(dataset, tmp_path / "raw")
    params = write_params(tmp_path / "params.yaml", sources)
    result = _prepare(dataset, params, tmp_path / "raw", tmp_path / "prepared" / dataset)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'prepared' / dataset}: {dataset}, ")
    prepared = load_prepared(tmp_path / "prepared" / dataset)
    num_classes, train, test, side = EXPECTED[dataset]
    assert (prepared.name, prepared.num_classes) == (dataset, num_classes)
    assert prepared.train_images.shape == (train, side, side, 3)
    assert prepared.test_labels.shape == (test,) and prepared.test_labels.dtype == np.int64
    own_train = 60 if dataset == "svhn_extra" else train  # svhn_extra: train, then extra
    np.testing.assert_array_equal(prepared.train_images[:own_train], expected_images(own_train, side, "train"))
    np.testing.assert_array_equal(prepared.test_images, expected_images(test, side, "test"))
    assert prepared.train_labels.min() == 0 and prepared.train_labels.max() == num_classes - 1
    if dataset == "stl10":
        np.testing.assert_array_equal(prepared.unlabeled_images, expected_images(6, 96, "unlabeled"))
        np.testing.assert_array_equal(prepared.fold_indices, stl10_fold_indices())
    else:
        assert prepared.unlabeled_images is None and prepared.fold_indices is None
    assert result.stdout.rstrip().endswith(f"sha256 {prepared.sha256}")


def test_truncated_archive_with_a_wrong_configured_checksum_fails_prepare_cleanly(http_server, tmp_path):  # noqa: F811
    """The checksum is configured for the truncated file, so download accepts it; prepare must catch it."""
    sources = write_miniature("cifar10", http_server.directory, base_url=http_server.url)
    archive = http_server.directory / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:3000])
    sources["datasets"]["cifar10"]["files"][0]["md5"] = md5_of(archive)
    params = write_params(tmp_path / "params.yaml", sources)

    downloaded = _run("download.py", "--dataset", "cifar10", "--params", params, "--out", tmp_path / "raw")
    assert downloaded.returncode == 0, downloaded.stderr

    result = _prepare("cifar10", params, tmp_path / "raw", tmp_path / "prepared" / "cifar10")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    downloaded_archive = tmp_path / "raw" / "cifar-10-python.tar.gz"
    assert result.stderr.startswith(f"prepare cifar10: error: {downloaded_archive}: corrupt or truncated archive (")
    assert not (tmp_path / "prepared").exists()


def test_prepare_stage_without_downloaded_files(tmp_path):
    params = write_params(tmp_path / "params.yaml", write_miniature("svhn", tmp_path / "mirror"))
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train_32x32.mat").write_bytes(b"")
    result = _prepare("svhn", params, tmp_path / "raw", tmp_path / "prepared")
    assert result.returncode == 1
    assert result.stderr == f"prepare svhn: error: {tmp_path / 'raw'} lacks ['test_32x32.mat']; run the download stage for svhn first\n"
    assert not (tmp_path / "prepared").exists()


def test_prepare_stage_with_an_unconfigured_dataset(tmp_path):
    params = write_params(tmp_path / "params.yaml", write_miniature("svhn", tmp_path / "mirror"))
    result = _prepare("stl10", params, tmp_path / "mirror", tmp_path / "prepared")
    assert result.returncode == 1
    catalog = tmp_path / "conf" / "sources"
    assert result.stderr == f"prepare stl10: error: dataset 'stl10' has no {catalog}/stl10.yaml; configured: ['svhn']\n"
