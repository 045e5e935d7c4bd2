"""Compose the parameters from the Hydra configuration in conf/, as `dvc exp run` does.

Usage: ``python -m fixmatch_bench.compose params.yaml [override ...]`` (e.g. ``suite=paper``)
writes params.yaml (what `make params` runs). A value the pipeline would refuse stops the
composition with one line naming it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra_plugins.fixmatch_bench_resolvers  # noqa: F401 (registers ${fixmatch_runs:}, as Hydra's plugin scan does)
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .core.config import ParamsError


def compose_config(overrides: list[str] = (), config_dir: str | Path = "conf") -> DictConfig:
    """conf/config.yaml with ``overrides`` applied, interpolations (the runs table) resolved."""
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base=None):
        config = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(config)
    return config


def compose_params(overrides: list[str] = (), config_dir: str | Path = "conf") -> dict:
    """The params a `params.yaml` composed with ``overrides`` holds, as plain containers."""
    return OmegaConf.to_container(compose_config(overrides, config_dir))


def write_params(output: str | Path, overrides: list[str] = (), config_dir: str | Path = "conf") -> None:
    """Write ``output`` byte for byte as `dvc exp run` writes params.yaml."""
    Path(output).write_text(OmegaConf.to_yaml(compose_config(overrides, config_dir)), encoding="utf-8")


if __name__ == "__main__":
    try:
        write_params(sys.argv[1], sys.argv[2:])
    except OmegaConfBaseException as error:  # a ParamsError raised by the runs resolver, or a bad override
        while not isinstance(error, ParamsError) and (error.__cause__ or error.__context__) is not None:
            error = error.__cause__ or error.__context__
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
