"""What every pipeline stage script shares: expected errors become one clear line, and a
long stage ends with the `dvc repro` that started it."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

from .config import ParamsError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ParamsError, FileNotFoundError, ValueError)


def run_stage(main: Callable[[], int | None], expected: tuple[type[BaseException], ...] = ()) -> None:
    """Run a stage's ``main``; an expected error prints ``error: <message>`` and exits 2, without a traceback."""
    try:
        code = main()
    except EXPECTED_ERRORS + expected as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def end_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have Linux send ``signum`` to this process when its parent (``dvc repro``) exits.

    DVC does not pass a SIGTERM on to the stage it runs: without this, a stopped
    ``dvc repro`` leaves its trainer running, and the next one would start a second
    trainer of the same run. The trainer checkpoints on SIGTERM. Elsewhere than on
    Linux this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signum), 0, 0, 0)
    if os.getppid() == 1:  # the parent exited before the request was made
        os.kill(os.getpid(), signum)
