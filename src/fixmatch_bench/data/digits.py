"""The quick suite's data: scikit-learn's bundled 8x8 handwritten digits.

The 1,797 real images ship inside scikit-learn as ``digits.csv.gz`` (64 pixel
values 0..16 and the label per row), so the quick suite runs offline. Pixels are
scaled to 0..255 and the images upscaled (bilinear) to the size in the dataset
table, so that the weak and strong augmentations have room to act. A fixed,
seeded test split is held out; the rest is the training (and unlabeled) set.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

RAW_FILE = "digits.csv.gz"
TEST_SPLIT_SEED = 0
NUM_CLASSES = 10


def digits_arrays(raw_dir: str | Path, image_size: int, test_size: int) -> dict[str, np.ndarray]:
    """Train/test arrays (uint8 NHWC, 1 channel) in the prepared format."""
    path = Path(raw_dir) / RAW_FILE
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65 or table[:, :64].max() > 16 or not 0 <= table[:, 64].min() <= table[:, 64].max() < NUM_CLASSES:
        raise ValueError(f"{path}: expected rows of 64 pixel values 0..16 and a label 0..9, got shape {table.shape}")
    pixels = np.rint(table[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([
        np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR)) for image in pixels
    ])[..., None]
    labels = table[:, 64]
    order = np.random.RandomState(TEST_SPLIT_SEED).permutation(len(labels))
    test, train = np.sort(order[:test_size]), np.sort(order[test_size:])
    return {
        "train_images": images[train],
        "train_labels": labels[train],
        "test_images": images[test],
        "test_labels": labels[test],
    }
