"""The uniform on-disk format every dataset is prepared into.

A prepared dataset is a directory of plain ``.npy`` arrays (so loading is a
memory map, not a parse) plus ``info.json``:

- ``train_images.npy`` uint8 [N, H, W, C], ``train_labels.npy`` int64 [N]
- ``test_images.npy`` uint8 [M, H, W, C], ``test_labels.npy`` int64 [M]
- optional ``unlabeled_images.npy`` uint8 [U, H, W, C]: extra unlabeled-only
  images (STL-10's 100,000), appended to the unlabeled set after the train set
- optional ``fold_indices.npy`` int64 [F, K]: predefined labeled folds (STL-10)
- ``info.json``: name, shapes, number of classes and ``sha256``, a hash of the
  array contents that splits record so results trace back to their data, and
  ``files``: each array file's own content hash, checked when a run starts
  (:func:`load_prepared` with ``verify``), as a file changed in place with its
  modification time kept looks unchanged to DVC.

Writes go to a temporary sibling directory that is renamed into place only when
complete, so an interrupted or failed prepare never leaves a partial dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
OPTIONAL_ARRAYS = ("unlabeled_images", "fold_indices")


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset, arrays memory-mapped read-only."""

    name: str
    num_classes: int
    sha256: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    unlabeled_images: np.ndarray | None = None
    fold_indices: np.ndarray | None = None


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


class PreparedDataChanged(ValueError):
    """A prepared file's content differs from what the prepare stage recorded; the message says how to restore it."""


def _validate(arrays: dict[str, np.ndarray]) -> None:
    for name in ARRAYS:
        if name not in arrays:
            raise ValueError(f"prepared dataset is missing array {name!r}")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{split}_images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{split}_labels shape {labels.shape} does not match {images.shape[0]} images")
    unlabeled = arrays.get("unlabeled_images")
    if unlabeled is not None and (unlabeled.dtype != np.uint8 or unlabeled.shape[1:] != arrays["train_images"].shape[1:]):
        raise ValueError(f"unlabeled_images must be uint8 with the train image shape, got {unlabeled.dtype} {unlabeled.shape}")


def save_prepared(directory: str | Path, name: str, num_classes: int, arrays: dict[str, np.ndarray]) -> str:
    """Write a prepared dataset atomically; return its content hash."""
    arrays = {key: np.ascontiguousarray(value) for key, value in arrays.items() if value is not None}
    arrays["train_labels"] = arrays["train_labels"].astype(np.int64)
    arrays["test_labels"] = arrays["test_labels"].astype(np.int64)
    if "fold_indices" in arrays:
        arrays["fold_indices"] = arrays["fold_indices"].astype(np.int64)
    unknown = set(arrays) - set(ARRAYS) - set(OPTIONAL_ARRAYS)
    if unknown:
        raise ValueError(f"unknown prepared arrays: {sorted(unknown)}")
    _validate(arrays)
    sha256 = content_hash(arrays)
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is ordinary shared data
    try:
        for key, value in arrays.items():
            np.save(staging / f"{key}.npy", value)
        info = {
            "name": name,
            "num_classes": int(num_classes),
            "sha256": sha256,
            "shapes": {key: list(value.shape) for key, value in arrays.items()},
            "files": {f"{key}.npy": content_hash({key: value}) for key, value in sorted(arrays.items())},
        }
        (staging / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sha256


def _verify(directory: Path, info: dict, arrays: dict[str, np.ndarray]) -> None:
    """Raise :class:`PreparedDataChanged` naming the first array file whose content hash is not the recorded one."""
    if "files" not in info:
        raise PreparedDataChanged(f"{directory / 'info.json'} records no per-file hashes (written by an older "
                                  "version): re-run the prepare stage (`dvc repro`)")
    for key, array in arrays.items():
        name = f"{key}.npy"
        if info["files"].get(name) != content_hash({key: array}):
            raise PreparedDataChanged(f"prepared file {directory / name} does not match the hash recorded in "
                                      f"{directory / 'info.json'} (changed after the prepare stage wrote it); "
                                      f"restore it with `dvc checkout --relink {directory}`")


def load_prepared(directory: str | Path, verify: bool = False) -> PreparedDataset:
    """Open a prepared dataset; arrays are memory-mapped, not read, unless ``verify`` reads them once to
    check each file against its recorded hash (:class:`PreparedDataChanged`)."""
    directory = Path(directory)
    info_path = directory / "info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{directory} is not a prepared dataset (no info.json); run the prepare stage first")
    info = json.loads(info_path.read_text())
    arrays = {}
    for key in ARRAYS + OPTIONAL_ARRAYS:
        path = directory / f"{key}.npy"
        if path.exists():
            arrays[key] = np.load(path, mmap_mode="r")
        elif key in ARRAYS:
            raise FileNotFoundError(f"prepared dataset {directory} is missing {path.name}")
    if verify:
        _verify(directory, info, arrays)
    return PreparedDataset(name=info["name"], num_classes=info["num_classes"], sha256=info["sha256"], **arrays)
