"""Write params.yaml from the Hydra configuration in conf/, exactly as `dvc exp run` does.

Usage: ``python -m fixmatch_bench.compose params.yaml [override ...]`` (e.g. ``suite=paper``).
A value the pipeline would refuse stops the composition with one line naming it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dvc.utils.hydra import compose_and_dump
from omegaconf.errors import OmegaConfBaseException


def compose(output: str | Path, overrides: list[str], config_dir: str | Path = "conf") -> None:
    compose_and_dump(str(output), str(Path(config_dir).resolve()), None, "config", "", overrides)


if __name__ == "__main__":
    try:
        compose(sys.argv[1], sys.argv[2:])
    except OmegaConfBaseException as error:  # a ParamsError raised by the runs resolver, or a bad override
        while error.__cause__ is not None or error.__context__ is not None:
            error = error.__cause__ or error.__context__
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
