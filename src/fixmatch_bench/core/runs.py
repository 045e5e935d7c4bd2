"""Runs: what the training stages train, named and listed from validated params.

A run is a method on a dataset@labels cell and one fold, plus an ablation variant's changes;
:func:`run_table` is the ``runs`` block of params.yaml that dvc.yaml's training stage iterates over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import choice, fail
from .schema import DatasetFacts, Params, Scalar

CELL_PATTERN = re.compile(r"^(?P<dataset>[a-z0-9]+)_(?P<labels>\d+)$")


@dataclass(frozen=True)
class Run:
    """One training: a method on a dataset@labels cell and one fold."""

    dataset: str
    labels: int
    method: str
    fold: int
    variant: tuple[tuple[str, Scalar], ...] = ()  # an ablation's changes to params, in the suite's order

    @property
    def cell(self) -> str:
        return f"{self.dataset}_{self.labels}"

    @property
    def name(self) -> str:
        """The run without its fold, as listed in params (``digits_20-fixmatch_ra``)."""
        return f"{self.cell}-{self.method}"

    @property
    def key(self) -> str:
        """Stage key (``train@<key>``) and results folder name: ``digits_20-fixmatch_ra-1``, and for an
        ablation variant its changes after it (``digits_20-fixmatch_cta-1+method.threshold=0.8``)."""
        return f"{self.name}-{self.fold}" + "".join(f"+{key}={format_value(value)}" for key, value in self.variant)


def format_value(value: Scalar) -> str:
    """A variant value as it appears in a run key (JSON, strings bare): ``0.8``, ``true``, ``adam``."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_value(text: str) -> Scalar:
    """The inverse of :func:`format_value`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (bool, int, float, type(None))) else text


def parse_cell(cell: str, datasets: Mapping[str, DatasetFacts], key: str = "cells") -> tuple[str, int]:
    """Split ``cifar10_40`` into (``cifar10``, 40), checking it against the dataset table."""
    match = CELL_PATTERN.match(str(cell))
    if not match:
        fail(key, cell, "expected <dataset>_<labels>, e.g. cifar10_40")
    dataset, labels = match["dataset"], int(match["labels"])
    choice(dataset, f"{key}: dataset of {cell}", sorted(datasets))
    facts = datasets[dataset]
    if not facts.num_classes <= labels <= facts.train_size:
        fail(key, cell, f"{dataset} label count must be between {facts.num_classes} "
                         f"(one per class) and {facts.train_size} (the training set)")
    return dataset, labels


def expected_runs(params: Params) -> list[Run]:
    """Every run the params ask for: each cell's baseline, each semi-supervised method, then the
    methods of ``cell_methods`` on their cells."""
    pairs = [(cell, method) for method in [params.baseline, *params.ssl_methods] for cell in params.cells]
    pairs += [(cell, method) for method, cells in params.cell_methods.items() for cell in cells]
    runs = []
    for cell, method in pairs:
        dataset, labels = parse_cell(cell, params.datasets)
        runs.extend(Run(dataset, labels, method, int(fold)) for fold in params.folds)
    return runs


def ablation_runs(params: Params) -> list[Run]:
    """One run per ablation variant and semi-supervised run of the suite (``ssl_methods`` on every
    cell and fold), in the order of ``ablations``; a variant listed under two axes runs once."""
    runs = [Run(run.dataset, run.labels, run.method, run.fold, tuple(variant.items()))
            for variants in params.ablations.values() for variant in variants
            for run in expected_runs(params) if run.method in params.ssl_methods]
    return list(dict.fromkeys(runs))


def all_runs(params: Params) -> list[Run]:
    """Every run the training stages train: the suite's runs, then its ablation variants."""
    return expected_runs(params) + ablation_runs(params)


def run_table(params: Params) -> dict[str, list[str]]:
    """The ``runs`` block of params.yaml that dvc.yaml's training stage iterates over:
    ``{key: [dataset, method, split]}``.

    DVC's ``foreach`` over a mapping names each stage by its key (``train@digits_20-fixmatch_ra-1``)
    and hands the stage its dataset, method and split, so that each run depends on
    ``datasets.<its dataset>`` and ``methods.<its method>`` only (a ``matrix`` over cells
    cannot name a cell's dataset). The ``fixmatch_runs`` resolver
    (src/hydra_plugins/fixmatch_bench_resolvers.py) writes it whenever conf/ is composed.
    ``params`` must have passed :func:`validate_params`.
    """
    return {run.key: [run.dataset, run.method, f"{run.cell}-{run.fold}"] for run in all_runs(params)}
