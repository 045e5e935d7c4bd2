"""What every pipeline stage script shares: expected errors become one clear line, and a
long stage ends with the `dvc repro` that started it."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import ParamsError

# Set by the cluster's final job (fixmatch_bench.tools.cluster): its `dvc repro` restores the runs that
# finished in their own jobs from DVC's run-cache, and a training stage that would have to train
# fails instead of training on that job's node.
NO_TRAIN_ENV = "FIXMATCH_NO_TRAIN"


class TrainingNotAllowed(RuntimeError):
    """A run was not restored from DVC's run-cache where training is switched off."""


def refuse_training_if_switched_off(run_key: str) -> None:
    if os.environ.get(NO_TRAIN_ENV):
        raise TrainingNotAllowed(f"{run_key} is missing: it did not finish in its cluster job, and {NO_TRAIN_ENV} "
                                 "is set here (this job restores runs, it does not train them); see its job log, "
                                 "then `python -m fixmatch_bench.tools.cluster submit` trains what is missing")


class UnwritableLocation(RuntimeError):
    """A folder a stage must write to cannot be created or written; the message says which and what to do."""


class WriteFailed(RuntimeError):
    """A file could not be written for lack of space or permission; the message names its folder, the free
    space there and the size needed."""


# Why a write fails that the user can fix: no space, a quota, a file-size limit, no permission, read-only.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS})


def _size(count: int) -> str:
    """``512 B``, ``146.1 KiB``, ``3.2 GiB``."""
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def free_space(folder: Path) -> int:
    """Bytes free to this user on the filesystem of ``folder`` (or of its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


@contextmanager
def writing(path: Path, needed: int | None = None) -> Iterator[None]:
    """Turn an OSError of a write to ``path`` that the user can fix (:data:`DISK_ERRNOS`) into one
    :class:`WriteFailed` line: the folder, its free space, and ``needed`` bytes where known."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        folder = Path(path).parent
        size = "" if needed is None else f", {_size(needed)} needed"
        reason = (error.strerror or str(error)).lower()
        raise WriteFailed(f"cannot write {Path(path).name} in {folder}: {reason} "
                          f"({_size(free_space(folder))} free there{size})") from None


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ParamsError, UnwritableLocation, TrainingNotAllowed, WriteFailed,
                                                    FileNotFoundError, ValueError)


def run_stage(main: Callable[[], int | None], expected: tuple[type[BaseException], ...] = ()) -> None:
    """Run a stage's ``main``; an expected error prints ``error: <message>`` and exits 2, without a traceback."""
    try:
        code = main()
    except EXPECTED_ERRORS + expected as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def require_writable(directory: Path, what: str, hint: str = "") -> Path:
    """Create ``directory`` if needed and write a file in it, so that a stage finds out before its work
    (hours of training), not when it saves the result; raise :class:`UnwritableLocation` otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UnwritableLocation(f"{what} {directory} is not writable ({error.strerror or error}){hint}") from None
    return directory


SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a live process from /proc/<pid>/stat; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    state, parent, start = fields[0], int(fields[1]), fields[19]
    return None if state in ("Z", "X") else (state, parent, start)


def _launcher() -> int:
    """The nearest ancestor that is not a shell: DVC runs a stage as ``$SHELL -c <cmd>``, and dash stays the parent."""
    pid = os.getppid()
    while pid > 1 and Path(f"/proc/{pid}/comm").read_text().strip() in SHELLS:
        stat = _stat(pid)
        pid = stat[1] if stat else 1
    return pid


def end_with_dvc(signum: int = signal.SIGTERM, poll_s: float = 0.5) -> None:
    """Send ``signum`` to this process once the ``dvc`` process that runs this stage is gone.

    DVC does not pass a SIGTERM on to the stage it runs: without this, a stopped ``dvc repro``
    leaves its trainer running, and the next one would start a second trainer of the same run.
    The trainer checkpoints on SIGTERM. A watcher thread polls DVC's process (identified by its
    start time, so a reused PID does not count), because PR_SET_PDEATHSIG would only see the
    shell in between. Outside DVC (no ``DVC_STAGE`` in the environment: a run started by hand,
    ``nohup``, a batch job) and elsewhere than on Linux this does nothing.
    """
    if "DVC_STAGE" not in os.environ or not sys.platform.startswith("linux"):
        return
    launcher = _launcher()
    started = _stat(launcher) if launcher > 1 else None  # already orphaned: stop now

    def watch() -> None:
        while started is not None and (now := _stat(launcher)) is not None and now[2] == started[2]:
            time.sleep(poll_s)
        os.kill(os.getpid(), signum)

    threading.Thread(target=watch, name="end-with-dvc", daemon=True).start()
