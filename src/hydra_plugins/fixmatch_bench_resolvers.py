"""Hydra loads every module of the ``hydra_plugins`` namespace when it starts, also inside
``dvc exp run``: this one registers the resolvers that conf/config.yaml uses.

``${fixmatch_runs:${cells},${ssl_methods},${da_cells},${folds},${datasets}}`` expands the
suite's lists into the table of runs that dvc.yaml iterates over
(:func:`fixmatch_bench.core.config.run_table`); a bad cell or fold fails the composition,
before DVC touches any output.
"""

from omegaconf import OmegaConf

from fixmatch_bench.core.config import run_table


def _fixmatch_runs(cells, ssl_methods, da_cells, folds, datasets):
    as_lists = OmegaConf.to_container(OmegaConf.create({
        "cells": cells, "ssl_methods": ssl_methods, "da_cells": da_cells, "folds": folds, "datasets": datasets}))
    return OmegaConf.create(run_table(as_lists))  # a container: OmegaConf.resolve cannot store a plain dict


OmegaConf.register_new_resolver("fixmatch_runs", _fixmatch_runs, replace=True)
