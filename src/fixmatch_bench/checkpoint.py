"""Atomic checkpoints of the whole training state, and the resume decision.

A checkpoint is written to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the previous one, so a crash at any moment leaves
either the old or the new checkpoint, never a torn one. It carries a
fingerprint of everything that defines the run (params, split, data); an
unfinished checkpoint whose fingerprint differs from the current run is
refused instead of being silently mixed or discarded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` as ``<directory>/state.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    temporary = directory / f".{CHECKPOINT_NAME}.tmp"
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return path


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


def load_for_resume(directory: str | Path, fingerprint: dict) -> dict | None:
    """The state to resume from, or None to start from scratch.

    No checkpoint, or a finished run's checkpoint (the stage is re-running
    because its inputs changed), starts from scratch. An unfinished checkpoint
    resumes only if its fingerprint matches; otherwise this raises.
    """
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved_fingerprint = state["fingerprint"]
        finished = bool(state["finished"])
    except Exception as error:  # any unreadable file is refused the same way
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}); "
                              f"delete {directory} to start this run over") from error
    if finished:
        return None
    differences = _differences(saved_fingerprint, fingerprint)
    if differences:
        raise CheckpointError(
            f"checkpoint {path} belongs to an unfinished run with other settings, refusing to mix them: "
            + "; ".join(differences) + f". Restore those settings to resume it, or delete {directory} to start over")
    return state
