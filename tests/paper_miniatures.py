"""Miniature raw files for a paper-suite run: the four paper datasets, sized for the paper's code paths.

On top of :mod:`miniature_datasets` (same native formats, same pixel rule):

- SVHN's train labels are unbalanced (:data:`SVHN_TRAIN_CLASS_COUNTS`), so a
  class-distribution-matched split is distinguishable from a balanced one;
- STL-10 has :data:`STL10_TRAIN` train images and ``fold_indices.txt`` lines of
  1000 indices (:func:`stl10_large_folds`), so the 1000-label cell takes the
  predefined-fold path as in the paper; its 6 extra unlabeled images stay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from miniature_datasets import (
    STL10_FOLDS,
    SVHN_COUNTS,
    UNREACHABLE_BASE,
    _fix_mat_header,
    md5_of,
    pixel_value,
    stl10_label,
    stl10_members,
    svhn_mat,
    write_miniature,
    write_tar_gz,
)

# Prepared class c (0..9) -> number of SVHN train images: 2 : 1 : 1/2 proportions.
SVHN_TRAIN_CLASS_COUNTS = (20, 20, 10, 10, 10, 10, 5, 5, 5, 5)
STL10_TRAIN = 1010


def svhn_train_labels() -> np.ndarray:
    """Prepared SVHN train labels (0..9) in class order: ``SVHN_TRAIN_CLASS_COUNTS[c]`` images of class c."""
    return np.repeat(np.arange(10), SVHN_TRAIN_CLASS_COUNTS)


def write_svhn_unbalanced(directory: Path) -> list[str]:
    """``train_32x32.mat`` (unbalanced) and ``test_32x32.mat`` (the standard miniature)."""
    directory.mkdir(parents=True, exist_ok=True)
    labels = svhn_train_labels()
    train = svhn_mat(len(labels), "train")
    train["y"] = (labels + 1).astype(np.uint8).reshape(-1, 1)  # native labels 1..10 are prepared class + 1
    files = {"train_32x32.mat": train, "test_32x32.mat": svhn_mat(SVHN_COUNTS["test"], "test")}
    for name, variables in files.items():
        scipy.io.savemat(directory / name, variables, format="5")
        _fix_mat_header(directory / name)
    return list(files)


def stl10_large_folds() -> np.ndarray:
    """Fold f: every train index i with ``i % 101 != f`` (1000 of 1010, as many as a real fold), in descending order."""
    index = np.arange(STL10_TRAIN)
    return np.stack([index[index % 101 != fold][::-1] for fold in range(STL10_FOLDS)])


def _stl10_train_bytes(count: int, chunk: int = 101) -> bytes:
    """``train_X.bin`` for ``count`` images (column-major 3x96x96 planes), built in chunks to bound memory."""
    parts = []
    for first in range(0, count, chunk):
        n, channel, col, row = np.indices((min(chunk, count - first), 3, 96, 96))
        parts.append(pixel_value(n + first, row, col, channel, "train").tobytes())
    return b"".join(parts)


def write_stl10_large(directory: Path) -> list[str]:
    """``stl10_binary.tar.gz`` with STL10_TRAIN train images and 1000-index folds."""
    directory.mkdir(parents=True, exist_ok=True)
    members = stl10_members()
    members["train_X.bin"] = _stl10_train_bytes(STL10_TRAIN)
    members["train_y.bin"] = bytes(stl10_label(i) for i in range(STL10_TRAIN))
    members["fold_indices.txt"] = "".join(" ".join(map(str, fold)) + " \n" for fold in stl10_large_folds()).encode()
    write_tar_gz(directory / "stl10_binary.tar.gz", "stl10_binary", members)
    return ["stl10_binary.tar.gz"]


def write_paper_miniatures(directory: Path) -> dict[str, list[dict[str, str]]]:
    """Write the raw files of cifar10, cifar100, svhn and stl10 into ``directory``.

    Returns each dataset's ``files`` list for ``sources.datasets`` (name, a
    never-resolving canonical URL, md5), for use with ``directory`` served as a mirror.
    """
    files = {}
    for dataset in ("cifar10", "cifar100"):
        files[dataset] = write_miniature(dataset, directory)["datasets"][dataset]["files"]
    for dataset, writer in (("svhn", write_svhn_unbalanced), ("stl10", write_stl10_large)):
        files[dataset] = [{"name": name, "url": UNREACHABLE_BASE + name, "md5": md5_of(directory / name)}
                          for name in writer(directory)]
    return files
