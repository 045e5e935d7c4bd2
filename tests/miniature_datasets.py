"""Miniature copies of the raw datasets, in each dataset's exact native format.

Same file names, archive folders, member names, pickle keys, .mat variable
names and binary layouts as the real downloads, only with a few images:

- CIFAR-10: ``cifar-10-python.tar.gz`` / ``cifar-10-batches-py/`` with
  ``data_batch_1..5``, ``test_batch``, ``batches.meta``, ``readme.html``;
  python-2 style protocol-2 pickles (every string a python 2 ``str``, so keys
  load as bytes; arrays rebuilt by ``numpy.core.multiarray._reconstruct``),
  12 images per batch, labels i % 10.
- CIFAR-100: ``cifar-100-python.tar.gz`` / ``cifar-100-python/`` with
  ``train``, ``test``, ``meta``; 200 train (2 per fine class), 100 test.
- SVHN: ``{train,test,extra}_32x32.mat`` (MATLAB v5, ``X`` uint8
  [32, 32, 3, N], ``y`` uint8 [N, 1] in 1..10); 60 / 20 / 10 images.
- STL-10: ``stl10_binary.tar.gz`` / ``stl10_binary/`` with column-major 3x96x96
  ``*_X.bin``, ``*_y.bin`` in 1..10, ``class_names.txt`` and ``fold_indices.txt``
  (10 folds of 5 indices); 20 train, 10 test, 6 unlabeled images.

Every pixel is :func:`pixel_value` of its (image, row, column, channel), written
into the native layout from the format's own definition, so tests can check
where each byte lands. The files are byte-for-byte reproducible (fixed mtimes
and .mat header), so their md5s are stable.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import yaml

DATASETS = ("cifar10", "cifar100", "svhn", "svhn_extra", "stl10")
SPLIT_SALT = {"train": 0, "test": 128, "extra": 64, "unlabeled": 32}
CIFAR10_BATCH = 12
CIFAR10_TEST = 20
CIFAR100_TRAIN, CIFAR100_TEST = 200, 100
SVHN_COUNTS = {"train": 60, "test": 20, "extra": 10}
STL10_COUNTS = {"train": 20, "test": 10, "unlabeled": 6}
STL10_FOLDS, STL10_FOLD_SIZE = 10, 5
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
UNREACHABLE_BASE = "https://example.invalid/"  # RFC 2606: never resolves


def pixel_value(image: Any, row: Any, col: Any, channel: Any, split: str) -> np.ndarray:
    """The miniature pixel at (image, row, col, channel) of ``split``, as uint8.

    Distinct coefficients make any swap of rows, columns or channels visible.
    """
    value = np.asarray(image) * 17 + np.asarray(row) * 3 + np.asarray(col) * 5 + np.asarray(channel) * 101 + SPLIT_SALT[split]
    return (value % 256).astype(np.uint8)


def expected_images(count: int, side: int, split: str) -> np.ndarray:
    """What a reader must return for ``count`` miniature images: uint8 [N, side, side, 3]."""
    n, row, col, channel = np.indices((count, side, side, 3))
    return pixel_value(n, row, col, channel, split)


def svhn_label(index: int) -> int:
    """Native SVHN label (1..10, 10 = digit 0) of miniature image ``index``."""
    return index % 10 + 1


def stl10_label(index: int) -> int:
    """Native STL-10 label (1..10) of miniature image ``index``."""
    return index % 10 + 1


def stl10_fold_indices() -> np.ndarray:
    """The miniature ``fold_indices.txt`` as an int64 [10, 5] array (0-based train indices)."""
    return (np.arange(STL10_FOLDS)[:, None] * 3 + np.arange(STL10_FOLD_SIZE)[None, :] * 4) % STL10_COUNTS["train"]


class _Python2Pickler(pickle._Pickler):
    """Writes bytes and str with python 2's ``str`` opcodes, as cPickle wrote the real CIFAR files.

    (Python 2 had no separate bytes type: keys, names, the array buffer and the
    dtype's byte-order character were all byte strings.)
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_python2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_python2_str
    dispatch[str] = _save_python2_str


def python2_pickle(obj: Any) -> bytes:
    """``obj`` pickled like a python 2 / numpy 1 cPickle protocol-2 dump."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")


def cifar_rows(count: int, split: str, first: int = 0) -> np.ndarray:
    """CIFAR ``data`` rows [N, 3072]: channel planes of 32x32, each row-major."""
    n, channel, row, col = np.indices((count, 3, 32, 32))
    return pixel_value(n + first, row, col, channel, split).reshape(count, 3072)


def stl10_bytes(count: int, split: str) -> bytes:
    """STL-10 ``*_X.bin``: per image, 3 channel planes of 96x96, each column-major."""
    n, channel, col, row = np.indices((count, 3, 96, 96))
    return pixel_value(n, row, col, channel, split).tobytes()


def write_tar_gz(path: Path, folder: str, members: dict[str, bytes]) -> None:
    """A reproducible .tar.gz with ``folder/`` and its members, like the real archives."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.GNU_FORMAT) as tar:
            directory = tarfile.TarInfo(folder)
            directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, 1_230_000_000
            tar.addfile(directory)
            for name, data in members.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_230_000_000
                tar.addfile(info, io.BytesIO(data))


def cifar10_members() -> dict[str, bytes]:
    """The members of ``cifar-10-batches-py/`` (name -> bytes)."""
    members = {"batches.meta": python2_pickle({
        b"num_cases_per_batch": CIFAR10_BATCH,
        b"label_names": [name.encode() for name in CIFAR10_CLASSES],
        b"num_vis": 3072,
    })}
    for batch in range(1, 6):
        first = (batch - 1) * CIFAR10_BATCH
        members[f"data_batch_{batch}"] = python2_pickle({
            b"batch_label": f"training batch {batch} of 5".encode(),
            b"labels": [(first + i) % 10 for i in range(CIFAR10_BATCH)],
            b"data": cifar_rows(CIFAR10_BATCH, "train", first),
            b"filenames": [f"image_{first + i}.png".encode() for i in range(CIFAR10_BATCH)],
        })
    members["test_batch"] = python2_pickle({
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [i % 10 for i in range(CIFAR10_TEST)],
        b"data": cifar_rows(CIFAR10_TEST, "test"),
        b"filenames": [f"test_{i}.png".encode() for i in range(CIFAR10_TEST)],
    })
    members["readme.html"] = b"<meta HTTP-EQUIV=\"REFRESH\" content=\"0; url=http://www.cs.toronto.edu/~kriz/cifar.html\">\n"
    return members


def _cifar100_batch(count: int, split: str) -> bytes:
    return python2_pickle({
        b"filenames": [f"{split}_{i}.png".encode() for i in range(count)],
        b"batch_label": f"{split}ing batch 1 of 1".encode(),
        b"fine_labels": [i % 100 for i in range(count)],
        b"coarse_labels": [i % 20 for i in range(count)],
        b"data": cifar_rows(count, split),
    })


def cifar100_members() -> dict[str, bytes]:
    """The members of ``cifar-100-python/`` (name -> bytes)."""
    return {
        "meta": python2_pickle({
            b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
        }),
        "train": _cifar100_batch(CIFAR100_TRAIN, "train"),
        "test": _cifar100_batch(CIFAR100_TEST, "test"),
    }


def svhn_mat(count: int, split: str) -> dict[str, np.ndarray]:
    """SVHN .mat variables: ``X`` [32, 32, 3, N] (MATLAB's X(row, col, channel, n)), ``y`` [N, 1]."""
    row, col, channel, n = np.indices((32, 32, 3, count))
    labels = np.array([[svhn_label(i)] for i in range(count)], dtype=np.uint8).reshape(count, 1)
    return {"X": pixel_value(n, row, col, channel, split), "y": labels}


def _fix_mat_header(path: Path) -> None:
    """Replace the creation time in a v5 .mat's 116-byte text header, for reproducible bytes."""
    data = bytearray(path.read_bytes())
    data[:116] = b"MATLAB 5.0 MAT-file Platform: posix, Created on: Thu Jan  1 00:00:00 1970".ljust(116)
    path.write_bytes(bytes(data))


def _write_svhn(directory: Path, splits: tuple[str, ...]) -> list[str]:
    names = []
    for split in splits:
        name = f"{split}_32x32.mat"
        scipy.io.savemat(directory / name, svhn_mat(SVHN_COUNTS[split], split), format="5")
        _fix_mat_header(directory / name)
        names.append(name)
    return names


def stl10_members() -> dict[str, bytes]:
    """The members of ``stl10_binary/`` (name -> bytes)."""
    folds = "".join(" ".join(str(i) for i in fold) + " \n" for fold in stl10_fold_indices())
    return {
        "class_names.txt": "".join(f"{name}\n" for name in STL10_CLASSES).encode(),
        "fold_indices.txt": folds.encode(),
        "test_X.bin": stl10_bytes(STL10_COUNTS["test"], "test"),
        "test_y.bin": bytes(stl10_label(i) for i in range(STL10_COUNTS["test"])),
        "train_X.bin": stl10_bytes(STL10_COUNTS["train"], "train"),
        "train_y.bin": bytes(stl10_label(i) for i in range(STL10_COUNTS["train"])),
        "unlabeled_X.bin": stl10_bytes(STL10_COUNTS["unlabeled"], "unlabeled"),
    }


def _write_archive(directory: Path, name: str, folder: str, members: dict[str, bytes]) -> list[str]:
    write_tar_gz(directory / name, folder, members)
    return [name]


def md5_of(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_miniature(dataset: str, directory: str | Path, *, base_url: str | None = None) -> dict[str, Any]:
    """Write ``dataset``'s miniature raw files into ``directory``; return a ``sources`` block.

    Without ``base_url`` the block uses ``directory`` as a local mirror (its URLs
    never resolve); with it, URLs are ``<base_url><file name>`` and no mirror is
    set. Retries are quick (``backoff_s`` 0.01) so fault tests stay fast.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers = {
        "cifar10": lambda: _write_archive(directory, "cifar-10-python.tar.gz", "cifar-10-batches-py", cifar10_members()),
        "cifar100": lambda: _write_archive(directory, "cifar-100-python.tar.gz", "cifar-100-python", cifar100_members()),
        "svhn": lambda: _write_svhn(directory, ("train", "test")),
        "svhn_extra": lambda: _write_svhn(directory, ("train", "test", "extra")),
        "stl10": lambda: _write_archive(directory, "stl10_binary.tar.gz", "stl10_binary", stl10_members()),
    }
    if dataset not in writers:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(writers)}")
    names = writers[dataset]()
    prefix = base_url if base_url is not None else UNREACHABLE_BASE
    files = [{"name": name, "url": prefix + name, "md5": md5_of(directory / name)} for name in names]
    return {
        "mirror": None if base_url is not None else str(directory),
        "retries": 3,
        "timeout_s": 10,
        "backoff_s": 0.01,
        "datasets": {dataset: {"files": files}},
    }


def write_params(path: str | Path, sources: dict[str, Any]) -> Path:
    """Write a params file holding just ``sources:`` and, beside it, the catalog conf/sources/<dataset>.yaml
    of ``sources["datasets"]``; return the params file's path."""
    path = Path(path)
    block = {key: value for key, value in sources.items() if key != "datasets"}
    path.write_text(yaml.safe_dump({"sources": block}, sort_keys=False))
    catalog = path.parent / "conf" / "sources"
    catalog.mkdir(parents=True, exist_ok=True)
    for dataset, entry in sources.get("datasets", {}).items():
        (catalog / f"{dataset}.yaml").write_text(yaml.safe_dump(entry, sort_keys=False))
    return path
