"""Per-step training curves: kept in the training state, written as DVC plots files.

One TSV per series (``<dir>/eval/error.tsv`` with columns ``step`` and ``error``,
dvclive's layout), declared as plots in dvc.yaml. The files are rewritten from the
history whenever a run starts or resumes, so a resumed run's curves hold exactly
the rows of an uninterrupted one (no duplicated or lost steps), and they carry no
timestamps, so the same run always writes the same bytes. Under DDP only rank 0
writes them; the other ranks keep the history only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core.stage import writing


class Curves:
    """Named scalar series logged at training steps."""

    def __init__(self, directory: str | Path | None, history: list[tuple[int, dict[str, float]]] | None = None):
        """``directory=None`` keeps the history without writing files."""
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.history: list[tuple[int, dict[str, float]]] = []
        for step, values in history or []:
            self.log(step, values)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.history.append((step, dict(values)))
        if self.directory is None:
            return
        for name, value in values.items():
            path = self.directory / f"{name}.tsv"
            header = not path.exists()
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as handle:
                    if header:
                        handle.write(f"step\t{name.rsplit('/', 1)[-1]}\n")
                    handle.write(f"{step}\t{value!r}\n")

    def series(self, name: str) -> list[float]:
        return [values[name] for _, values in self.history if name in values]
