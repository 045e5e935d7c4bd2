"""Per-step curves: kept in the training state, mirrored to dvclive.

The curves live in the checkpoint, and the dvclive folder is rewritten from
them whenever a run starts or resumes, so a resumed run's curves hold exactly
the points of an uninterrupted one (no duplicated or lost steps). Under DDP
only rank 0 writes the dvclive folder; the other ranks keep the history only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dvclive import Live


class Curves:
    """Named scalar series logged at training steps."""

    def __init__(self, live_dir: str | Path | None, history: list[tuple[int, dict[str, float]]] | None = None):
        """``live_dir=None`` keeps the history without writing dvclive files."""
        self.live = None
        if live_dir is not None:
            shutil.rmtree(live_dir, ignore_errors=True)
            self.live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        self.history: list[tuple[int, dict[str, float]]] = []
        for step, values in history or []:
            self.log(step, values)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.history.append((step, dict(values)))
        if self.live is None:
            return
        self.live.step = step
        for name, value in values.items():
            self.live.log_metric(name, value)

    def series(self, name: str) -> list[float]:
        return [values[name] for _, values in self.history if name in values]

    def close(self) -> None:
        if self.live is None:
            return
        self.live.make_summary()
        self.live.end()
