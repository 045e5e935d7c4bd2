"""A run's images and labels, moved onto its training device once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.prepared import load_prepared
from ..data.splits import read_split


@dataclass
class RunData:
    """A run's images (uint8 NCHW) and labels on the training device."""

    labeled_images: torch.Tensor
    labeled_targets: torch.Tensor
    unlabeled_images: torch.Tensor
    unlabeled_targets: torch.Tensor  # -1 where unknown (STL-10's unlabeled images)
    test_images: torch.Tensor
    test_targets: torch.Tensor
    class_distribution: torch.Tensor  # labeled-class distribution (p_data of distribution alignment)
    dataset_sha256: str
    split_sha256: str


def _nchw(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A memory-mapped NHWC array as an NCHW tensor on ``device`` (one read, one copy)."""
    return torch.from_numpy(np.array(array)).permute(0, 3, 1, 2).contiguous().to(device)


def load_run_data(data_dir: Path, split_path: Path, device: torch.device) -> RunData:
    """Move the prepared dataset, checked against its recorded hashes, and the run's labeled split onto ``device``."""
    dataset = load_prepared(data_dir, verify=True)
    split = read_split(split_path, dataset)
    indices = np.asarray(split["indices"], np.int64)
    train_images = _nchw(dataset.train_images, device)
    train_targets = torch.from_numpy(np.array(dataset.train_labels)).to(device)
    unlabeled_images, unlabeled_targets = train_images, train_targets
    if dataset.unlabeled_images is not None:  # the unlabeled set is train + extra unlabeled images
        extra = _nchw(dataset.unlabeled_images, device)
        unlabeled_images = torch.cat([train_images, extra])
        unlabeled_targets = torch.cat([train_targets, torch.full((len(extra),), -1, device=device)])
    histogram = torch.tensor(split["class_histogram"], dtype=torch.float64)
    index = torch.from_numpy(indices).to(device)
    return RunData(
        labeled_images=train_images[index],
        labeled_targets=train_targets[index],
        unlabeled_images=unlabeled_images,
        unlabeled_targets=unlabeled_targets,
        test_images=_nchw(dataset.test_images, device),
        test_targets=torch.from_numpy(np.array(dataset.test_labels)).to(device),
        class_distribution=(histogram / histogram.sum()).float().to(device),
        dataset_sha256=dataset.sha256,
        split_sha256=hashlib.sha256(Path(split_path).read_bytes()).hexdigest(),
    )
