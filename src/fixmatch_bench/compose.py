"""Write params.yaml from the Hydra configuration in conf/, exactly as `dvc exp run` does.

Usage: ``python -m fixmatch_bench.compose params.yaml [override ...]`` (e.g. ``suite=paper``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dvc.utils.hydra import compose_and_dump


def compose(output: str | Path, overrides: list[str], config_dir: str | Path = "conf") -> None:
    compose_and_dump(str(output), str(Path(config_dir).resolve()), None, "config", "", overrides)


if __name__ == "__main__":
    compose(sys.argv[1], sys.argv[2:])
