"""What every pipeline stage script shares: expected errors become one clear line."""

from __future__ import annotations

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
