"""Labeled splits, exactly as the official ``scripts/create_split.py`` draws them.

Per-class index lists in dataset order; for seed > 0, ``np.random.seed(seed)``
then ``np.random.shuffle`` of each class list in class order (the legacy
``RandomState`` stream, stable across NumPy versions); then a greedy selection
that always takes the next image of the class furthest below the training
set's class distribution. Balanced data gets exactly size / C per class; SVHN
gets a class-distribution-matched, unbalanced split. The labeled set is stored
sorted, as the official code writes it in dataset order. For STL-10 @1000 the
predefined fold ``seed`` (0-indexed line of ``fold_indices.txt``) replaces it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .prepared import PreparedDataset

PREDEFINED_FOLD_SIZE = 1000  # STL-10's fold_indices.txt lines hold 1000 indices each


def class_matched_split(labels: np.ndarray, size: int, seed: int, num_classes: int,
                        uniform_distribution: bool = False) -> np.ndarray:
    """Indices of ``size`` labeled images chosen by the official greedy rule (sorted)."""
    labels = np.asarray(labels)
    class_ids = [np.flatnonzero(labels == c) for c in range(num_classes)]
    stats = np.array([len(ids) for ids in class_ids], np.float64)
    if stats.min() == 0:
        missing = [c for c in range(num_classes) if not len(class_ids[c])]
        raise ValueError(f"classes {missing} have no training images; cannot draw a split")
    stats = np.ones_like(stats) if uniform_distribution else stats / stats.max()
    if seed:
        np.random.seed(seed)
        for ids in class_ids:
            np.random.shuffle(ids)
    npos = np.zeros(num_classes, np.int64)
    chosen = []
    for _ in range(size):
        c = int(np.argmax(stats - npos / max(npos.max(), 1)))
        if npos[c] >= len(class_ids[c]):
            raise ValueError(f"a split of {size} labels needs more than the {len(class_ids[c])} images of class {c}")
        chosen.append(class_ids[c][npos[c]])
        npos[c] += 1
    return np.sort(np.array(chosen, np.int64))


def make_split(dataset: PreparedDataset, size: int, seed: int) -> dict:
    """The labeled split of ``dataset`` for one fold, with what traces it to its data."""
    labels = np.asarray(dataset.train_labels)
    if dataset.fold_indices is not None and size == PREDEFINED_FOLD_SIZE:
        indices = np.sort(np.asarray(dataset.fold_indices[seed], np.int64))
        source = f"predefined fold {seed} (0-indexed line of fold_indices.txt)"
    else:
        # The official code forces a uniform distribution for STL-10, the one dataset with predefined folds.
        indices = class_matched_split(labels, size, seed, dataset.num_classes,
                                      uniform_distribution=dataset.fold_indices is not None)
        source = "official class-distribution-matching algorithm"
    histogram = np.bincount(labels[indices], minlength=dataset.num_classes)
    return {
        "dataset": dataset.name,
        "dataset_sha256": dataset.sha256,
        "labels": int(size),
        "seed": int(seed),
        "source": source,
        "class_histogram": histogram.tolist(),
        "indices": indices.tolist(),
    }


def write_split(split: dict, path: str | Path) -> None:
    """Write a split file atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        json.dump(split, handle)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_split(path: str | Path, dataset: PreparedDataset) -> dict:
    """Read a split and check it was drawn from this exact dataset."""
    split = json.loads(Path(path).read_text())
    if split["dataset_sha256"] != dataset.sha256:
        raise ValueError(f"split {path} was drawn from a different version of {dataset.name} "
                         f"(sha256 {split['dataset_sha256'][:12]}, prepared data has {dataset.sha256[:12]}); "
                         "re-run the split stage")
    return split
