"""Atomic checkpoints of the whole training state, where they live, and the resume decision.

Checkpoints are resume state, not results: they live outside the workspace and
DVC's outputs (:func:`checkpoint_root`), one folder per run and fingerprint
(:func:`run_checkpoint_dir`), so DVC's run-cache stays on for the training
stages and a run interrupted under ``dvc exp run --temp/--queue`` (which work in
a temporary copy of the repository) resumes when it is run again.
A checkpoint is written to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the previous one, so a crash at any moment leaves
either the old or the new checkpoint, never a torn one. It carries the
fingerprint of everything that defines the run (params, split, data), checked
again on load.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "state.pt"
CHECKPOINTS_ENV = "FIXMATCH_CHECKPOINTS"


def checkpoint_root(configured: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """``checkpoints.dir`` if set, else ``$FIXMATCH_CHECKPOINTS``, else ``$XDG_CACHE_HOME/fixmatch-bench/checkpoints``."""
    if configured:
        return Path(configured).expanduser()
    if environ.get(CHECKPOINTS_ENV):
        return Path(environ[CHECKPOINTS_ENV]).expanduser()
    cache = environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(cache) / "fixmatch-bench" / "checkpoints"


def run_checkpoint_dir(root: str | Path, run_key: str, fingerprint: dict) -> Path:
    """``<root>/<run key>-<16 hex digits of the fingerprint's sha256>``."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"{run_key}-{digest}"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_atomically(path: str | Path, obj: Any) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync'ed, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return path


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` as ``<directory>/state.pt``."""
    return save_atomically(Path(directory) / CHECKPOINT_NAME, state)


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(saved) | set(current))
    lines = []
    for key in keys:
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            lines += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            lines.append(f"{prefix}{key}: checkpoint has {old!r}, this run has {new!r}")
    return lines


class RunLock:
    """An exclusive lock on a run's checkpoint folder, held while one process trains it.

    A second trainer of the same run and settings (a stage started again while an
    orphaned trainer still runs) is refused instead of writing the same files. The
    kernel releases the lock when the holder exits, however it exits.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "unknown"
            self._handle.close()
            raise CheckpointError(f"{directory} is in use by another trainer of this run (pid {holder}); "
                                  "wait for it to finish or stop it, then run again") from None
        self._handle.truncate(0)
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def release(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def load_for_resume(directory: str | Path, fingerprint: dict) -> dict | None:
    """The state to resume from, or None to start from scratch.

    A finished run's state is returned as well: the run then writes its outputs
    again without training (its stage was interrupted after the last step). A
    state whose fingerprint differs (a folder copied by hand) is refused.
    """
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved_fingerprint = state["fingerprint"]
    except Exception as error:  # any unreadable file is refused the same way
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}); "
                              f"delete {directory} to start this run over") from error
    differences = _differences(saved_fingerprint, fingerprint)
    if differences:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with other settings, refusing to mix them: "
            + "; ".join(differences) + f". Delete {directory} to start over")
    return state
