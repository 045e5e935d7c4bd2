"""Progress output that fits where it goes: a live bar on a terminal, sparse lines in a log.

On a terminal (the stream is a TTY) this is a tqdm bar. Anywhere else (CI logs,
``dvc queue logs``, batch jobs) a carriage-return bar would write a line per
update, so :class:`LogProgress` prints one line when the work has advanced by
``every_percent`` of its total or ``every_s`` seconds have passed, and one at the
end: ``digits_20-fixmatch_ra-1: 512/1024 step (50%), 9.1 step/s, ETA 0:00:56, error=5.20``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

EVERY_PERCENT = 10.0
EVERY_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _amount(value: float, unit: str, binary: bool) -> str:
    """``1536`` -> ``1536 step``, or with binary prefixes ``1.5 KiB``."""
    if not binary:
        return f"{value:.0f} {unit}"
    prefix = ""
    for prefix in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or prefix == "Ti":
            break
        value /= 1024
    return f"{value:.1f} {prefix}{unit}" if prefix else f"{value:.0f} {unit}"


class LogProgress:
    """The tqdm methods the project uses (``update``, ``set_postfix``, ``close``, context manager), as log lines."""

    def __init__(self, total: int | None, initial: int = 0, desc: str = "", unit: str = "it",
                 unit_scale: bool = False, stream: TextIO | None = None,
                 every_percent: float = EVERY_PERCENT, every_s: float = EVERY_S,
                 clock: Any = time.monotonic) -> None:
        self.total, self.n, self.desc, self.unit, self.unit_scale = total, initial, desc, unit, unit_scale
        self.stream = stream if stream is not None else sys.stderr
        self.every_percent, self.every_s, self.clock = every_percent, every_s, clock
        self.postfix: dict[str, Any] = {}
        self._start_n, self._start_t = initial, clock()
        self._last_n, self._last_t = initial, self._start_t
        self._closed = False

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix.update(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        due_by_amount = self.total and (self.n - self._last_n) * 100.0 / self.total >= self.every_percent
        if due_by_amount or now - self._last_t >= self.every_s:
            self._emit(now)

    def line(self, now: float) -> str:
        elapsed = now - self._start_t
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: "
        if self.total:
            amount = (f"{_amount(self.n, self.unit, True)} of {_amount(self.total, self.unit, True)}"
                      if self.unit_scale else f"{self.n}/{self.total} {self.unit}")
            text += f"{amount} ({100.0 * self.n / self.total:.0f}%)"
        else:
            text += _amount(self.n, self.unit, self.unit_scale)
        text += f", {_amount(rate, self.unit, self.unit_scale)}/s" if self.unit_scale else f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        return text + "".join(f", {key}={value}" for key, value in self.postfix.items())

    def _emit(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self._last_n, self._last_t = self.n, now

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last_n:
                self._emit(self.clock())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0, unit_scale: bool = False,
             disable: bool = False, stream: TextIO | None = None) -> tqdm | LogProgress:
    """A tqdm bar when ``stream`` (standard error by default) is a terminal, else a :class:`LogProgress`."""
    stream = stream if stream is not None else sys.stderr
    if disable or stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                    unit_divisor=1024, disable=disable, file=stream, dynamic_ncols=True, mininterval=0.5)
    return LogProgress(total, initial, desc, unit, unit_scale, stream)
