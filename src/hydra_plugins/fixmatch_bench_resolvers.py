"""Hydra loads every module of the ``hydra_plugins`` namespace when it starts, also inside
``dvc exp run``: this one registers the resolver that conf/config.yaml uses, and a config
source that answers for a suite conf/suite/ lacks.

``runs: ${fixmatch_runs:}`` validates the composed configuration (every key the pipeline
reads) and expands the suite's cells, methods and folds into the table of runs that
dvc.yaml iterates over (:func:`fixmatch_bench.core.runs.run_table`). A bad value
(`dvc exp run -S threshold=1.5`, `make params`) stops the composition with one line,
``error: invalid params: <key> = <value> (<allowed>)``, and exit status 2, before DVC
writes params.yaml, queues an experiment or touches any stage or output. The resolver
prints that line and exits itself, as argparse does for a bad argument: raised, the error
would reach DVC's command line as an "unexpected error" with DVC's support footer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from fixmatch_bench.core.errors import ParamsError
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import run_table
from fixmatch_bench.methods.registry import check_methods

UNKNOWN_SUITE = "unknown_suite"  # the key the stand-in of an unknown suite composes


def refuse(error: ParamsError) -> NoReturn:
    """Print the one line of a refused composition and exit 2."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _fixmatch_runs(*, _root_):
    params = OmegaConf.to_container(_root_, resolve=False)
    params.pop("runs")  # the node being resolved, then the others (the methods' ${threshold})
    params = OmegaConf.to_container(OmegaConf.create(params), resolve=True)
    try:
        unknown = params.get(UNKNOWN_SUITE)
        if unknown is not None:
            raise ParamsError(f"invalid params: suite = {unknown['name']!r} (allowed: {', '.join(unknown['allowed'])})")
        typed = validate_params(params)
        check_methods(typed)
        table = run_table(typed)
    except ParamsError as error:
        refuse(error)
    return OmegaConf.create(table)  # a container: OmegaConf.resolve cannot store a plain dict


OmegaConf.register_new_resolver("fixmatch_runs", _fixmatch_runs, replace=True)


class UnknownSuiteSource(ConfigSource):
    """After conf/ in the search path: ``suite/<name>`` for a name conf/suite/ lacks is a stand-in that
    names it and the suites there, which the runs resolver refuses in one line (Hydra's own error for a
    missing config spans a dozen lines)."""

    @staticmethod
    def scheme() -> str:
        return "fixmatch-unknown-suite"

    def _suites(self) -> list[str]:
        return sorted(path.stem for path in (Path(self.path) / "suite").glob("*.yaml"))

    def load_config(self, config_path: str) -> ConfigResult:
        stand_in = {UNKNOWN_SUITE: {"name": config_path.removeprefix("suite/"), "allowed": self._suites()}}
        return ConfigResult(provider=self.provider, path=f"{self.scheme()}://{self.path}",
                            config=OmegaConf.create(stand_in), header={"package": "_global_"})

    def available(self) -> bool:
        return (Path(self.path) / "suite").is_dir()

    def is_group(self, config_path: str) -> bool:
        return False

    def is_config(self, config_path: str) -> bool:
        group, _, name = config_path.partition("/")
        return group == "suite" and bool(name) and "/" not in name and self.available()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        return []


class UnknownSuiteSearchPath(SearchPathPlugin):
    """Appends :class:`UnknownSuiteSource` for the primary config folder (conf/)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for element in list(search_path.get_path()):
            folder = (element.path or "").removeprefix("file://")
            if element.provider == "main" and "://" not in folder:  # a folder, not a package
                search_path.append("fixmatch-bench", f"{UnknownSuiteSource.scheme()}://{folder}")
