"""The quick suite's data: scikit-learn's bundled 8x8 handwritten digits.

1,797 real images ship inside the scikit-learn package, so the quick suite
runs offline. Pixel values 0..16 are scaled to 0..255 and the images are
upscaled (bilinear) to the size in the dataset table, so that the weak and
strong augmentations have room to act. A fixed, seeded test split is held out.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TEST_SPLIT_SEED = 0


def digits_arrays(image_size: int, test_size: int) -> dict[str, np.ndarray]:
    """Train/test arrays (uint8 NHWC, 1 channel) in the prepared format."""
    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([
        np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
        for image in pixels
    ])[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.RandomState(TEST_SPLIT_SEED).permutation(len(labels))
    test, train = np.sort(order[:test_size]), np.sort(order[test_size:])
    return {
        "train_images": images[train],
        "train_labels": labels[train],
        "test_images": images[test],
        "test_labels": labels[test],
    }
