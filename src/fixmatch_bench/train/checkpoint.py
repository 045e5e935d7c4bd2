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
import io
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from ..core.stage import writing

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
    """``torch.save`` to a temporary file beside ``path``, fsync'ed, then renamed over it.

    A write that fails for lack of space or permission removes the temporary file, leaves ``path``
    as it was and raises :class:`~fixmatch_bench.core.stage.WriteFailed` (the folder, its free space,
    the size needed): serialized in memory first, the size is known before the write.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    temporary = path.with_name(f".{path.name}.tmp")
    with writing(path, needed=len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
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


def _open_locked(path: Path, operation: int) -> IO[str]:
    """``path`` opened and ``flock``'ed; opened again if its folder was removed meanwhile (by the last
    trainer of a finished run, :meth:`RunLock.finish`)."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(path, "a+")
        except FileNotFoundError:  # the folder went between mkdir and open
            continue
        fcntl.flock(handle, operation)
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


class RunLock:
    """A run's checkpoint folder, trained by one process at a time.

    Every trainer of the run holds a shared lock on ``.waiting`` from the start; the one that trains also
    holds the exclusive ``.lock``. Another trainer of the same run and settings (a parallel experiment
    that shares the run, a stage started again while an orphaned trainer still runs) waits for it, then
    resumes from its checkpoint or reuses its finished one; a finished run's folder is removed only by
    the last of them (:meth:`finish`). The kernel releases both locks when a holder exits, however it
    exits: they are never stale.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._waiting = _open_locked(self.directory / ".waiting", fcntl.LOCK_SH)
        self._lock = open(self.directory / ".lock", "a+")  # stays: no one removes the folder while we wait

    def try_acquire(self) -> bool:
        """Take the run if no other trainer holds it (then record this process as its holder)."""
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        return True

    def holder(self) -> str:
        """The process id of the trainer that holds the run, as it recorded it."""
        self._lock.seek(0)
        return self._lock.read().strip() or "unknown"

    def finish(self, remove: bool) -> None:
        """Release the run; with ``remove``, delete its folder unless another trainer of it waits."""
        fcntl.flock(self._waiting, fcntl.LOCK_UN)
        if remove:
            try:
                fcntl.flock(self._waiting, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # it takes the finished checkpoint, then removes the folder itself
            else:
                shutil.rmtree(self.directory)
        self.release()

    def release(self) -> None:
        """Release the run without removing anything (closing the files releases their locks)."""
        self._lock.close()
        self._waiting.close()


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
