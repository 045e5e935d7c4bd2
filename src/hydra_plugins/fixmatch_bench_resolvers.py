"""Hydra loads every module of the ``hydra_plugins`` namespace when it starts, also inside
``dvc exp run``: this one registers the resolver that conf/config.yaml uses.

``runs: ${fixmatch_runs:}`` validates the composed configuration (every key the pipeline
reads, with one line naming a bad one) and expands the suite's cells, methods and folds
into the table of runs that dvc.yaml iterates over
(:func:`fixmatch_bench.core.config.run_table`). So `dvc exp run -S threshold=1.5` fails
while params.yaml is composed, before DVC touches any stage or output.
"""

from omegaconf import OmegaConf

from fixmatch_bench.core.config import run_table, validate_params


def _fixmatch_runs(*, _root_):
    params = OmegaConf.to_container(_root_, resolve=False)
    params.pop("runs")  # the node being resolved; nothing else in conf/ interpolates
    return OmegaConf.create(run_table(validate_params(params)))  # a container: OmegaConf.resolve cannot store a plain dict


OmegaConf.register_new_resolver("fixmatch_runs", _fixmatch_runs, replace=True)
