"""Compose the parameters from the Hydra configuration in conf/, as `dvc exp run` does.

Usage: ``python -m fixmatch_bench.tools.compose params.yaml [override ...]`` (e.g. ``suite=paper``)
writes params.yaml (what `make params` runs). A value the pipeline would refuse, or an unknown
suite, stops the composition with one line naming it and exit status 2 (the runs resolver,
src/hydra_plugins/fixmatch_bench_resolvers.py, as under `dvc exp run`), and writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra_plugins.fixmatch_bench_resolvers  # noqa: F401 (registers ${fixmatch_runs:}, as Hydra's plugin scan does)
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


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
    except (HydraException, OmegaConfBaseException) as error:  # an override Hydra cannot apply (an unknown key)
        print("error: " + " ".join(line for line in str(error).splitlines() if line[:1].strip()), file=sys.stderr)
        sys.exit(2)
