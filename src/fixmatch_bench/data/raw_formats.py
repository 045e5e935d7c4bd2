"""Parsers of the datasets' native distribution formats into prepared arrays.

Each reader checks everything it reads (archive integrity, array shapes and
dtypes, label ranges, fold indices) and raises :class:`RawFormatError` naming
the file and the problem, so a caller can validate fully before writing any
output. Images come out as uint8 [N, H, W, C] in the record order of the
official ``scripts/create_datasets.py`` of google-research/fixmatch (the order
its ``create_split.py`` draws the labeled folds from):

- CIFAR-10: ``data_batch_1`` .. ``data_batch_5`` in order, then ``test_batch``.
  The official script reads the matlab tarball; this reads the python tarball
  (torchvision's), whose layout the CIFAR page states is identical: the same
  five train batches of 10,000 and the same test batch.
- CIFAR-100: ``train`` / ``test`` with the 100 fine labels.
- SVHN: ``X`` [32, 32, 3, N] transposed to [N, 32, 32, 3]; labels ``y`` in
  1..10 minus 1, exactly as the official code, so digit "0" (label 10) is class
  9 and digit d in 1..9 is class d - 1 (torchvision instead maps 10 -> 0).
  ``svhn`` here is the official "svhn_noextra" (train only), which the paper
  uses; the opt-in ``svhn_extra`` (the official "svhn") appends ``extra``
  after ``train``.
- STL-10: column-major 3x96x96 images, transposed with axes [0, 3, 2, 1];
  labels 1..10 minus 1; the 100,000 unlabeled images as ``unlabeled_images``;
  ``fold_indices.txt`` (one line of 0-based train indices per fold) as
  ``fold_indices``.

The number of classes is read from each archive's own label-name list (SVHN
has none; its format defines labels 1..10).
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.io

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR_SHAPE = (3, 32, 32)
SVHN_FILES = {split: f"{split}_32x32.mat" for split in ("train", "test", "extra")}
SVHN_NUM_CLASSES = 10
STL10_ARCHIVE = "stl10_binary.tar.gz"
STL10_FOLDER = "stl10_binary"
STL10_SHAPE = (3, 96, 96)
STL10_CHUNK_IMAGES = 2048


class RawFormatError(ValueError):
    """A raw dataset file is missing, corrupt, truncated or not in the expected format."""


@dataclass(frozen=True)
class RawDataset:
    """Parsed arrays ready for :func:`fixmatch_bench.data.prepared.save_prepared`."""

    num_classes: int
    arrays: dict[str, np.ndarray]


# The function this numpy version rebuilds pickled arrays with; pickles name it
# numpy.core.multiarray._reconstruct (numpy < 2, as in CIFAR) or numpy._core...
_RECONSTRUCT = np.empty(0).__reduce__()[0]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, never arbitrary objects."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return _RECONSTRUCT
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR pickles only hold numpy arrays and lists")


def _load_pickle(data: bytes, where: str) -> dict[str, Any]:
    """A CIFAR pickle (python 2, bytes keys) as a dict with str keys."""
    try:
        loaded = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can fail in many ways; all mean the same here
        raise RawFormatError(f"{where}: not a valid CIFAR pickle ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, dict):
        raise RawFormatError(f"{where}: expected a pickled dict, got {type(loaded).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in loaded.items()}


def _read_tar(archive: Path, readers: Mapping[str, Callable[[IO[bytes], int, str], Any]]) -> dict[str, Any]:
    """Stream through a tar archive once, passing each wanted member to its reader.

    ``readers`` maps member paths (as in the archive, without a leading ``./``)
    to ``reader(file, size, where)``. Streaming reads a .tar.gz in one pass,
    whatever the member order; every wanted member must be present.
    """
    if not archive.is_file():
        raise RawFormatError(f"{archive} does not exist; run the download stage first")
    results: dict[str, Any] = {}
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name not in readers or not member.isfile():
                    continue
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file member always has a file object
                results[name] = readers[name](handle, member.size, f"{archive}:{name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise RawFormatError(f"{archive}: corrupt or truncated archive ({type(error).__name__}: {error})") from None
    missing = sorted(set(readers) - set(results))
    if missing:
        raise RawFormatError(f"{archive}: archive lacks {missing}")
    return results


def _read_exact(handle: IO[bytes], size: int, where: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise RawFormatError(f"{where}: truncated, read {len(data)} of {size} bytes")
    return data


def _labels(values: Any, count: int, low: int, num_classes: int, where: str) -> np.ndarray:
    """Integer labels in ``low .. low + num_classes - 1`` shifted to start at 0."""
    labels = np.asarray(values)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (count,):
        raise RawFormatError(f"{where}: expected {count} labels, got shape {labels.shape}")
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0)):
        raise RawFormatError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if count and (labels.min() < low or labels.max() >= low + num_classes):
        raise RawFormatError(
            f"{where}: labels must lie in {low}..{low + num_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    return labels - low


def _cifar_batch(batch: Mapping[str, Any], label_key: str, num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    for key in ("data", label_key):
        if key not in batch:
            raise RawFormatError(f"{where}: pickle lacks key {key!r}; keys: {sorted(batch)}")
    data = batch["data"]
    pixels = int(np.prod(CIFAR_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        got = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', None)}"
        raise RawFormatError(f"{where}: 'data' must be a uint8 array [N, {pixels}], got {got}")
    labels = _labels(batch[label_key], data.shape[0], 0, num_classes, where)
    images = np.ascontiguousarray(data.reshape((-1, *CIFAR_SHAPE)).transpose(0, 2, 3, 1))
    return images, labels


def _class_names(names: Any, where: str) -> int:
    if not isinstance(names, list) or not names:
        raise RawFormatError(f"{where}: expected a non-empty list of class names, got {names!r:.80}")
    return len(names)


def _read_cifar(archive: Path, folder: str, meta: str, names_key: str, train: tuple[str, ...], test: str, label_key: str) -> RawDataset:
    members = [meta, *train, test]
    raw = _read_tar(Path(archive), {f"{folder}/{m}": _read_exact for m in members})
    pickles = {m: _load_pickle(raw[f"{folder}/{m}"], f"{archive}:{folder}/{m}") for m in members}
    meta_where = f"{archive}:{folder}/{meta}"
    if names_key not in pickles[meta]:
        raise RawFormatError(f"{meta_where}: pickle lacks key {names_key!r}; keys: {sorted(pickles[meta])}")
    num_classes = _class_names(pickles[meta][names_key], meta_where)
    parts = [_cifar_batch(pickles[m], label_key, num_classes, f"{archive}:{folder}/{m}") for m in train]
    test_images, test_labels = _cifar_batch(pickles[test], label_key, num_classes, f"{archive}:{folder}/{test}")
    arrays = {
        "train_images": np.concatenate([images for images, _ in parts]),
        "train_labels": np.concatenate([labels for _, labels in parts]),
        "test_images": test_images,
        "test_labels": test_labels,
    }
    return RawDataset(num_classes=num_classes, arrays=arrays)


def read_cifar10(archive: str | Path) -> RawDataset:
    """CIFAR-10 from ``cifar-10-python.tar.gz``: train = data_batch_1..5 in order."""
    return _read_cifar(Path(archive), CIFAR10_FOLDER, "batches.meta", "label_names", CIFAR10_TRAIN_BATCHES, "test_batch", "labels")


def read_cifar100(archive: str | Path) -> RawDataset:
    """CIFAR-100 from ``cifar-100-python.tar.gz`` with the 100 fine labels."""
    return _read_cifar(Path(archive), CIFAR100_FOLDER, "meta", "fine_label_names", ("train",), "test", "fine_labels")


def _load_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` [32, 32, 3, N] uint8 and ``y`` from one SVHN .mat file, validated."""
    if not path.is_file():
        raise RawFormatError(f"{path} does not exist; run the download stage first")
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as error:  # scipy raises many types for corrupt .mat files
        raise RawFormatError(f"{path}: not a readable MATLAB v5 file ({type(error).__name__}: {error})") from None
    for key in ("X", "y"):
        if key not in mat:
            raise RawFormatError(f"{path}: lacks variable {key!r}")
    images = mat["X"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != 3:
        raise RawFormatError(f"{path}: 'X' must be uint8 [H, W, 3, N], got {images.dtype} {images.shape}")
    return images, mat["y"]


def read_svhn(train: str | Path, test: str | Path, extra: str | Path | None = None) -> RawDataset:
    """SVHN from the ``*_32x32.mat`` files; ``extra`` (optional) is appended to train."""
    train_x, train_y = _load_svhn(Path(train))
    test_x, test_y = _load_svhn(Path(test))
    shape = train_x.shape[:3]
    if test_x.shape[:3] != shape:
        raise RawFormatError(f"{test}: images are {test_x.shape[:3]}, but {train} has {shape}")
    labels = [_labels(train_y, train_x.shape[3], 1, SVHN_NUM_CLASSES, f"{train}: 'y'")]
    test_labels = _labels(test_y, test_x.shape[3], 1, SVHN_NUM_CLASSES, f"{test}: 'y'")
    test_images = np.ascontiguousarray(np.moveaxis(test_x, 3, 0))
    del test_x
    extra_x = None
    if extra is not None:
        extra_x, extra_y = _load_svhn(Path(extra))
        if extra_x.shape[:3] != shape:
            raise RawFormatError(f"{extra}: images are {extra_x.shape[:3]}, but {train} has {shape}")
        labels.append(_labels(extra_y, extra_x.shape[3], 1, SVHN_NUM_CLASSES, f"{extra}: 'y'"))
    count = train_x.shape[3] + (0 if extra_x is None else extra_x.shape[3])
    train_images = np.empty((count, *shape), dtype=np.uint8)
    train_images[: train_x.shape[3]] = np.moveaxis(train_x, 3, 0)
    if extra_x is not None:
        train_images[train_x.shape[3]:] = np.moveaxis(extra_x, 3, 0)
    arrays = {
        "train_images": train_images,
        "train_labels": np.concatenate(labels),
        "test_images": test_images,
        "test_labels": test_labels,
    }
    return RawDataset(num_classes=SVHN_NUM_CLASSES, arrays=arrays)


def _read_stl10_images(handle: IO[bytes], size: int, where: str) -> np.ndarray:
    """Column-major 3x96x96 images as [N, 96, 96, 3], read in chunks (unlabeled_X is 2.7 GB)."""
    image_bytes = int(np.prod(STL10_SHAPE))
    if size % image_bytes:
        raise RawFormatError(f"{where}: size {size} is not a multiple of {image_bytes} bytes (one {STL10_SHAPE} image)")
    count = size // image_bytes
    channels, width, height = STL10_SHAPE
    images = np.empty((count, height, width, channels), dtype=np.uint8)
    for start in range(0, count, STL10_CHUNK_IMAGES):
        stop = min(start + STL10_CHUNK_IMAGES, count)
        chunk = np.frombuffer(_read_exact(handle, (stop - start) * image_bytes, where), dtype=np.uint8)
        images[start:stop] = chunk.reshape((-1, *STL10_SHAPE)).transpose(0, 3, 2, 1)
    return images


def _read_stl10_labels(handle: IO[bytes], size: int, where: str) -> np.ndarray:
    return np.frombuffer(_read_exact(handle, size, where), dtype=np.uint8)


def _read_text(handle: IO[bytes], size: int, where: str) -> str:
    try:
        return _read_exact(handle, size, where).decode("ascii")
    except UnicodeDecodeError as error:
        raise RawFormatError(f"{where}: not an ASCII text file ({error})") from None


def _fold_indices(text: str, num_train: int, where: str) -> np.ndarray:
    """``fold_indices.txt``: one line of space-separated 0-based train indices per fold."""
    try:
        folds = [[int(token) for token in line.split()] for line in text.splitlines() if line.strip()]
    except ValueError as error:
        raise RawFormatError(f"{where}: fold indices must be integers ({error})") from None
    if not folds or len({len(fold) for fold in folds}) != 1:
        raise RawFormatError(f"{where}: expected folds of equal length, got lengths {[len(fold) for fold in folds]}")
    indices = np.asarray(folds, dtype=np.int64)
    if indices.min() < 0 or indices.max() >= num_train:
        raise RawFormatError(f"{where}: fold indices must lie in 0..{num_train - 1}, found {indices.min()}..{indices.max()}")
    return indices


def read_stl10(archive: str | Path) -> RawDataset:
    """STL-10 from ``stl10_binary.tar.gz``, in one streaming pass over the archive."""
    archive = Path(archive)
    member = {name: f"{STL10_FOLDER}/{name}" for name in (
        "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin", "fold_indices.txt", "class_names.txt"
    )}
    readers: dict[str, Callable[[IO[bytes], int, str], Any]] = {}
    for name, path in member.items():
        readers[path] = _read_stl10_images if name.endswith("_X.bin") else _read_stl10_labels if name.endswith("_y.bin") else _read_text
    raw = _read_tar(archive, readers)
    where = {name: f"{archive}:{path}" for name, path in member.items()}
    num_classes = _class_names([line for line in raw[member["class_names.txt"]].splitlines() if line.strip()], where["class_names.txt"])
    train_images, test_images = raw[member["train_X.bin"]], raw[member["test_X.bin"]]
    arrays = {
        "train_images": train_images,
        "train_labels": _labels(raw[member["train_y.bin"]], len(train_images), 1, num_classes, where["train_y.bin"]),
        "test_images": test_images,
        "test_labels": _labels(raw[member["test_y.bin"]], len(test_images), 1, num_classes, where["test_y.bin"]),
        "unlabeled_images": raw[member["unlabeled_X.bin"]],
        "fold_indices": _fold_indices(raw[member["fold_indices.txt"]], len(train_images), where["fold_indices.txt"]),
    }
    return RawDataset(num_classes=num_classes, arrays=arrays)


READERS: dict[str, Callable[[Path], RawDataset]] = {
    "cifar10": lambda raw: read_cifar10(raw / CIFAR10_ARCHIVE),
    "cifar100": lambda raw: read_cifar100(raw / CIFAR100_ARCHIVE),
    "svhn": lambda raw: read_svhn(raw / SVHN_FILES["train"], raw / SVHN_FILES["test"]),
    "svhn_extra": lambda raw: read_svhn(raw / SVHN_FILES["train"], raw / SVHN_FILES["test"], raw / SVHN_FILES["extra"]),
    "stl10": lambda raw: read_stl10(raw / STL10_ARCHIVE),
}


def read_raw(dataset: str, raw_dir: str | Path) -> RawDataset:
    """Parse and validate ``dataset`` from the files the download stage put in ``raw_dir``."""
    if dataset not in READERS:
        raise RawFormatError(f"unknown dataset {dataset!r}; known: {sorted(READERS)}")
    return READERS[dataset](Path(raw_dir))
