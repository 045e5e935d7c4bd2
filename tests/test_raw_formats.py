"""Parser tests on miniature datasets written in each dataset's exact native format."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from miniature_datasets import (
    CIFAR10_BATCH,
    STL10_COUNTS,
    cifar10_members,
    cifar100_members,
    cifar_rows,
    expected_images,
    python2_pickle,
    stl10_bytes,
    stl10_fold_indices,
    stl10_members,
    svhn_mat,
    write_miniature,
    write_tar_gz,
)

from fixmatch_bench.data.raw_formats import (
    RawFormatError,
    read_cifar10,
    read_cifar100,
    read_raw,
    read_stl10,
    read_svhn,
)


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("miniatures")
    for dataset in ("cifar10", "cifar100", "svhn_extra", "stl10"):
        write_miniature(dataset, root / dataset)
    return root


# --- shapes, order, labels, pixel layout -------------------------------------


def test_cifar10(miniatures):
    raw = read_raw("cifar10", miniatures / "cifar10")
    assert raw.num_classes == 10
    assert set(raw.arrays) == {"train_images", "train_labels", "test_images", "test_labels"}
    train, test = raw.arrays["train_images"], raw.arrays["test_images"]
    assert train.shape == (5 * CIFAR10_BATCH, 32, 32, 3) and train.dtype == np.uint8
    assert test.shape == (20, 32, 32, 3) and test.dtype == np.uint8
    # data_batch_1..5 in order: image n of the train set is image n % 12 of batch n // 12 + 1
    np.testing.assert_array_equal(train, expected_images(60, 32, "train"))
    np.testing.assert_array_equal(test, expected_images(20, 32, "test"))
    np.testing.assert_array_equal(raw.arrays["train_labels"], np.arange(60) % 10)
    assert raw.arrays["train_labels"].dtype == np.int64


def test_cifar_pixel_layout_by_hand():
    """A CIFAR row holds 3 planes of 32x32 in row-major order: R(0,0) R(0,1) .. R(31,31) G(0,0) .."""
    row = cifar_rows(1, "train")[0]
    # pixel_value = 17 n + 3 row + 5 col + 101 channel: byte 1 is (row 0, col 1, red), byte 32 is
    # (row 1, col 0, red), byte 1024 is (row 0, col 0, green).
    assert (row[1], row[32], row[1024]) == (5, 3, 101)
    images = expected_images(1, 32, "train")
    assert (images[0, 0, 1, 0], images[0, 1, 0, 0], images[0, 0, 0, 1]) == (5, 3, 101)


def test_cifar100_fine_labels(miniatures):
    raw = read_cifar100(miniatures / "cifar100" / "cifar-100-python.tar.gz")
    assert raw.num_classes == 100
    assert raw.arrays["train_images"].shape == (200, 32, 32, 3)
    np.testing.assert_array_equal(raw.arrays["train_images"], expected_images(200, 32, "train"))
    np.testing.assert_array_equal(raw.arrays["train_labels"], np.arange(200) % 100)  # fine, not coarse (% 20)
    np.testing.assert_array_equal(raw.arrays["test_labels"], np.arange(100) % 100)


def test_svhn_labels_follow_the_official_minus_one(miniatures):
    raw = read_raw("svhn", miniatures / "svhn_extra")
    assert raw.num_classes == 10
    assert raw.arrays["train_images"].shape == (60, 32, 32, 3)
    native = scipy.io.loadmat(miniatures / "svhn_extra" / "train_32x32.mat")["y"][:, 0]
    labels = raw.arrays["train_labels"]
    # native 10 is digit "0": the official code maps it to class 9; digit 1 (native 1) is class 0
    assert (native[9], labels[9]) == (10, 9)
    assert (native[0], labels[0]) == (1, 0)
    np.testing.assert_array_equal(labels, native.astype(np.int64) - 1)
    np.testing.assert_array_equal(raw.arrays["train_images"], expected_images(60, 32, "train"))
    np.testing.assert_array_equal(raw.arrays["test_images"], expected_images(20, 32, "test"))


def test_svhn_pixel_layout_by_hand():
    """MATLAB's X(row, col, channel, n) becomes images[n, row, col, channel]."""
    x = svhn_mat(2, "train")["X"]
    assert (x[1, 0, 0, 0], x[0, 1, 0, 0], x[0, 0, 1, 0], x[0, 0, 0, 1]) == (3, 5, 101, 17)
    images = expected_images(2, 32, "train")
    assert (images[0, 1, 0, 0], images[0, 0, 1, 0], images[0, 0, 0, 1], images[1, 0, 0, 0]) == (3, 5, 101, 17)


def test_svhn_extra_is_appended_after_train(miniatures):
    raw = read_raw("svhn_extra", miniatures / "svhn_extra")
    assert raw.arrays["train_images"].shape == (70, 32, 32, 3)
    np.testing.assert_array_equal(raw.arrays["train_images"][:60], expected_images(60, 32, "train"))
    np.testing.assert_array_equal(raw.arrays["train_images"][60:], expected_images(10, 32, "extra"))
    np.testing.assert_array_equal(raw.arrays["train_labels"], np.r_[np.arange(60) % 10, np.arange(10) % 10])


def test_stl10(miniatures):
    raw = read_raw("stl10", miniatures / "stl10")
    assert raw.num_classes == 10
    arrays = raw.arrays
    assert arrays["train_images"].shape == (20, 96, 96, 3) and arrays["train_images"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["train_images"], expected_images(20, 96, "train"))
    np.testing.assert_array_equal(arrays["test_images"], expected_images(10, 96, "test"))
    np.testing.assert_array_equal(arrays["unlabeled_images"], expected_images(6, 96, "unlabeled"))
    # native labels 1..10 become 0..9
    np.testing.assert_array_equal(arrays["train_labels"], np.arange(20) % 10)
    assert arrays["fold_indices"].dtype == np.int64 and arrays["fold_indices"].shape == (10, 5)
    np.testing.assert_array_equal(arrays["fold_indices"], stl10_fold_indices())
    np.testing.assert_array_equal(arrays["fold_indices"][1], [3, 7, 11, 15, 19])


def test_stl10_pixel_layout_by_hand():
    """Each STL-10 channel plane is column-major: byte 1 is (row 1, col 0), byte 96 is (row 0, col 1)."""
    native = np.frombuffer(stl10_bytes(1, "unlabeled"), dtype=np.uint8)
    assert (native[0], native[1], native[96], native[96 * 96]) == (32, 35, 37, 133)
    images = expected_images(1, 96, "unlabeled")
    assert (images[0, 0, 0, 0], images[0, 1, 0, 0], images[0, 0, 1, 0], images[0, 0, 0, 1]) == (32, 35, 37, 133)


# --- corrupt and truncated inputs ---------------------------------------------


def _cifar10_archive(path: Path, **replace: bytes | None) -> Path:
    members = cifar10_members()
    for name, data in replace.items():
        if data is None:
            del members[name]
        else:
            members[name] = data
    write_tar_gz(path, "cifar-10-batches-py", members)
    return path


def _cifar10_batch(**fields) -> bytes:
    batch = {b"batch_label": b"training batch 3 of 5", b"labels": [0] * 12, b"data": cifar_rows(12, "train"), b"filenames": [b"x"] * 12}
    batch.update({key.encode(): value for key, value in fields.items()})
    return python2_pickle(batch)


def test_truncated_archive(miniatures, tmp_path):
    data = (miniatures / "cifar10" / "cifar-10-python.tar.gz").read_bytes()
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(RawFormatError, match=rf"^{archive}: corrupt or truncated archive \("):
        read_cifar10(archive)


def test_not_an_archive(tmp_path):
    archive = tmp_path / "stl10_binary.tar.gz"
    archive.write_bytes(b"<html>404 page from a captive portal</html>")
    with pytest.raises(RawFormatError, match=rf"^{archive}: corrupt or truncated archive"):
        read_stl10(archive)


def test_missing_file(tmp_path):
    with pytest.raises(RawFormatError, match=rf"^{tmp_path / 'cifar-10-python.tar.gz'} does not exist; run the download stage first"):
        read_raw("cifar10", tmp_path)
    with pytest.raises(RawFormatError, match="unknown dataset 'mnist'; known: \\['cifar10', 'cifar100', 'stl10', 'svhn', 'svhn_extra'\\]"):
        read_raw("mnist", tmp_path)


def test_missing_member(tmp_path):
    archive = _cifar10_archive(tmp_path / "c.tar.gz", test_batch=None)
    with pytest.raises(RawFormatError, match=r"c.tar.gz: archive lacks \['cifar-10-batches-py/test_batch'\]"):
        read_cifar10(archive)


def test_bad_pickle_names_the_member(tmp_path):
    archive = _cifar10_archive(tmp_path / "c.tar.gz", data_batch_3=b"\x80\x02}q\x00(U\x04data")
    with pytest.raises(RawFormatError, match=r"c.tar.gz:cifar-10-batches-py/data_batch_3: not a valid CIFAR pickle \("):
        read_cifar10(archive)


def test_pickle_with_code_is_refused(tmp_path):
    archive = _cifar10_archive(tmp_path / "c.tar.gz", data_batch_2=python2_pickle({b"data": print}))
    message = "data_batch_2: not a valid CIFAR pickle (UnpicklingError: refusing to load __builtin__.print: CIFAR pickles only hold"
    with pytest.raises(RawFormatError, match=re.escape(message)):
        read_cifar10(archive)


def test_wrong_image_size(tmp_path):
    archive = _cifar10_archive(tmp_path / "c.tar.gz", data_batch_1=_cifar10_batch(data=np.zeros((12, 3000), np.uint8)))
    with pytest.raises(RawFormatError, match=r"data_batch_1: 'data' must be a uint8 array \[N, 3072\], got ndarray uint8 \(12, 3000\)"):
        read_cifar10(archive)


def test_label_out_of_range(tmp_path):
    archive = _cifar10_archive(tmp_path / "c.tar.gz", test_batch=_cifar10_batch(labels=[10] + [0] * 11))
    with pytest.raises(RawFormatError, match=r"cifar-10-batches-py/test_batch: labels must lie in 0..9, found 0..10"):
        read_cifar10(archive)


def test_label_count_mismatch(tmp_path):
    archive = _cifar10_archive(tmp_path / "c.tar.gz", data_batch_5=_cifar10_batch(labels=[0] * 11))
    with pytest.raises(RawFormatError, match=r"data_batch_5: expected 12 labels, got shape \(11,\)"):
        read_cifar10(archive)


def test_cifar100_missing_fine_labels(tmp_path):
    members = cifar100_members()
    members["test"] = python2_pickle({b"data": cifar_rows(4, "test"), b"coarse_labels": [0] * 4})
    write_tar_gz(tmp_path / "c100.tar.gz", "cifar-100-python", members)
    with pytest.raises(RawFormatError, match=r"cifar-100-python/test: pickle lacks key 'fine_labels'; keys: \['coarse_labels', 'data'\]"):
        read_cifar100(tmp_path / "c100.tar.gz")


def _svhn_files(tmp_path: Path, train: dict | None = None) -> tuple[Path, Path]:
    train_path, test_path = tmp_path / "train_32x32.mat", tmp_path / "test_32x32.mat"
    scipy.io.savemat(train_path, train or svhn_mat(12, "train"))
    scipy.io.savemat(test_path, svhn_mat(4, "test"))
    return train_path, test_path


def test_svhn_label_zero_is_out_of_range(tmp_path):
    variables = svhn_mat(12, "train")
    variables["y"][3, 0] = 0
    train, test = _svhn_files(tmp_path, variables)
    with pytest.raises(RawFormatError, match=rf"{train}: 'y': labels must lie in 1..10, found 0..10"):
        read_svhn(train, test)


def test_svhn_wrong_layout(tmp_path):
    variables = svhn_mat(12, "train")
    variables["X"] = np.ascontiguousarray(np.moveaxis(variables["X"], 3, 0))  # [N, 32, 32, 3]: not the native layout
    train, test = _svhn_files(tmp_path, variables)
    with pytest.raises(RawFormatError, match=r"'X' must be uint8 \[H, W, 3, N\], got uint8 \(12, 32, 32, 3\)"):
        read_svhn(train, test)


def test_svhn_truncated_mat(tmp_path):
    train, test = _svhn_files(tmp_path)
    train.write_bytes(train.read_bytes()[:5000])
    with pytest.raises(RawFormatError, match=rf"^{train}: not a readable MATLAB v5 file \("):
        read_svhn(train, test)


def _stl10_archive(path: Path, **replace: bytes) -> Path:
    write_tar_gz(path, "stl10_binary", {**stl10_members(), **replace})
    return path


def test_stl10_image_file_of_the_wrong_size(tmp_path):
    archive = _stl10_archive(tmp_path / "s.tar.gz", **{"train_X.bin": stl10_bytes(2, "train")[:-1]})
    with pytest.raises(RawFormatError, match=r"stl10_binary/train_X.bin: size 55295 is not a multiple of 27648 bytes"):
        read_stl10(archive)


def test_stl10_label_out_of_range(tmp_path):
    archive = _stl10_archive(tmp_path / "s.tar.gz", **{"test_y.bin": bytes([11] + [1] * (STL10_COUNTS["test"] - 1))})
    with pytest.raises(RawFormatError, match=r"stl10_binary/test_y.bin: labels must lie in 1..10, found 1..11"):
        read_stl10(archive)


def test_stl10_fold_index_out_of_range(tmp_path):
    archive = _stl10_archive(tmp_path / "s.tar.gz", **{"fold_indices.txt": b"0 1 2 3 4\n5 6 7 8 20\n"})
    with pytest.raises(RawFormatError, match=r"stl10_binary/fold_indices.txt: fold indices must lie in 0..19, found 0..20"):
        read_stl10(archive)


def test_stl10_ragged_folds(tmp_path):
    archive = _stl10_archive(tmp_path / "s.tar.gz", **{"fold_indices.txt": b"0 1 2\n3 4\n"})
    with pytest.raises(RawFormatError, match=r"fold_indices.txt: expected folds of equal length, got lengths \[3, 2\]"):
        read_stl10(archive)


def test_stl10_truncated_gzip_stream(miniatures, tmp_path):
    data = (miniatures / "stl10" / "stl10_binary.tar.gz").read_bytes()
    archive = tmp_path / "stl10_binary.tar.gz"
    archive.write_bytes(data[:-40])
    with pytest.raises(RawFormatError, match=rf"^{archive}: corrupt or truncated archive"):
        read_stl10(archive)
    assert gzip.decompress(data)  # the untruncated miniature is a valid gzip stream
