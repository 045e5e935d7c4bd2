"""Reading and validating `params.yaml`: the typed params every stage starts from.

The ``fixmatch_runs`` resolver validates the configuration whenever conf/ is
composed (``dvc exp run -S``, ``make params``), and every stage script calls
:func:`load_params` first: a bad value stops with one line naming the key, the
value and what is allowed, before any work starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .datasets import with_facts
from .errors import ParamsError, choice, fail, params_error
from .runs import Run, parse_cell, parse_value, run_table
from .schema import Params, Scalar

# What an ablation variant may change: what a run computes. The suite's structure
# (cells, folds, ...) and how runs are executed or checked are not ablated. ``method.<key>``
# is the run's own method block (``method.threshold``: methods.<the run's method>.threshold).
VARIANT_BLOCKS = ("method", "train", "augment", "speed", "datasets")
WORD = re.compile(r"^[A-Za-z0-9_.]+$")  # a string value in a run key
AXIS = re.compile(r"^[A-Za-z0-9_]+$")  # an axis name, also its figure's file name


def with_variant(params: Params, variant: Mapping[str, Scalar] | tuple[tuple[str, Scalar], ...],
                 where: str = "variant", method: str | None = None) -> Params:
    """``params`` with an ablation variant's values in place, validated like params.yaml.

    Each key is a dotted path to a value of :data:`VARIANT_BLOCKS` (``method.threshold``, ``train.lr``,
    ``datasets.cifar10.weight_decay``), ``method`` being ``methods.<method>``; an error names ``where``
    and the key. The method block's values are checked by its class
    (:func:`fixmatch_bench.methods.registry.run_method`).
    """
    data = params.model_dump()
    for dotted, value in dict(variant).items():
        node, parts = data, str(dotted).split(".")
        path = ["methods", method or "", *parts[1:-1]] if parts[0] == "method" else parts[:-1]
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if (parts[0] not in VARIANT_BLOCKS or not isinstance(node, dict) or parts[-1] not in node
                or isinstance(node[parts[-1]], (dict, list))):
            fail(f"{where}: {dotted}", value, f"not a params value an ablation can change (one of "
                                              f"{', '.join(VARIANT_BLOCKS)}, e.g. method.threshold, train.lr)")
        if isinstance(value, str) and (not WORD.match(value) or parse_value(value) != value):
            fail(f"{where}: {dotted}", value, "a string variant value must be a word (letters, digits, _ and .)")
        node[parts[-1]] = value
    data.update(ablations={}, runs=None)
    try:
        return validate_params(data)
    except ParamsError as error:
        prefix = "invalid params: "
        raise ParamsError(f"{prefix}{where}: {str(error).removeprefix(prefix)}") from None


def validate_params(params: Mapping[str, Any] | Params) -> Params:
    """The typed params; raise :class:`ParamsError` (one line) on the first bad key or value."""
    if isinstance(params, Params):
        return params
    try:
        typed = Params.model_validate(with_facts(params))
    except ValidationError as error:
        raise params_error(error) from None
    train = typed.train
    if train.checkpoint_every % train.log_every:
        fail("train.checkpoint_every", train.checkpoint_every, f"must be a multiple of train.log_every = {train.log_every}")
    if train.nesterov and train.momentum == 0:
        fail("train.nesterov", True, "Nesterov momentum needs train.momentum > 0")
    if (train.lr_schedule == "linear") != (train.lr_end is not None):
        fail("train.lr_end", train.lr_end, f"a number with lr_schedule: linear, null with {train.lr_schedule}")
    if train.optimizer == "adam" and typed.speed.optimizer_impl != "foreach":
        fail("speed.optimizer_impl", typed.speed.optimizer_impl,
              "selects SGD's implementation; train.optimizer = adam has one implementation: use foreach")
    if typed.speed.compile_augment and typed.augment.impl != "batched":
        fail("speed.compile_augment", True, "needs augment.impl = batched (the reference ops are per-image PIL)")
    for dataset in typed.data:
        choice(dataset, "data", sorted(typed.datasets))
    if len(set(typed.folds)) != len(typed.folds):
        fail("folds", typed.folds, "a non-empty list of distinct positive integers (split seeds)")
    for cell in typed.cells:
        dataset, _ = parse_cell(cell, typed.datasets)
        choice(dataset, f"cells: dataset of {cell} (must be listed in data)", typed.data)
    choice(typed.baseline, "baseline", sorted(typed.methods))
    if len(set(typed.ssl_methods)) != len(typed.ssl_methods) or typed.baseline in typed.ssl_methods:
        fail("ssl_methods", typed.ssl_methods, f"a list of distinct methods other than the baseline ({typed.baseline})")
    for method in typed.ssl_methods:
        choice(method, "ssl_methods", sorted(typed.methods))
    if not typed.ssl_methods and typed.check.max_ratio_to_supervised is not None:
        fail("ssl_methods", [], "must not be empty while check.max_ratio_to_supervised compares the semi-supervised "
                                 "methods with the baseline; set it to null to train the baselines alone")
    if not typed.ssl_methods and typed.ablations:
        fail("ssl_methods", [], "must not be empty: ablations are swept on the semi-supervised methods")
    for method, cells in typed.cell_methods.items():
        choice(method, "cell_methods", sorted(set(typed.methods) - {typed.baseline, *typed.ssl_methods}))
        for cell in cells:
            choice(cell, f"cell_methods.{method}", typed.cells)
    for axis, variants in typed.ablations.items():
        if not AXIS.match(axis):
            fail("ablations", axis, "an axis name is a word (letters, digits, _)")
        for index, variant in enumerate(variants):
            for method in typed.ssl_methods:
                with_variant(typed, variant, where=f"ablations.{axis}[{index}]", method=method)
    return typed


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the params file, including its table of runs."""
    with open(path) as handle:
        params = validate_params(yaml.safe_load(handle))
    if params.runs != run_table(params):
        fail("runs", "...", "does not match cells, baseline, ssl_methods, cell_methods and folds; params.yaml is generated "
                             "from conf/: edit conf/ and run `make params`, or use `dvc exp run -S key=value`")
    return params


def parse_run(key: str, params: Params) -> Run:
    """The run named ``key``, ``<cell>-<method>-<fold>`` (``digits_20-fixmatch_ra-1``) with an ablation's
    ``+<params key>=<value>`` changes after it, if any: any cell of the dataset table, any method of
    ``methods``, any fold, any valid changes, whether or not the suite lists it."""
    base, *changes = str(key).split("+")
    parts = base.split("-")
    if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
        fail("run", key, "expected <cell>-<method>-<fold>[+<key>=<value>...], e.g. digits_20-fixmatch_ra-1")
    dataset, labels = parse_cell(parts[0], params.datasets, key="run")
    choice(parts[1], f"run {key}: method", sorted(params.methods))
    variant = []
    for change in changes:
        name, equals, text = change.partition("=")
        if not equals:
            fail("run", key, f"an ablation change is <params key>=<value>, got {change!r}")
        variant.append((name, parse_value(text)))
    run = Run(dataset, labels, parts[1], int(parts[2]), tuple(variant))
    run_params(params, run)
    return run


def run_params(params: Params, run: Run) -> Params:
    """The params a run trains with: the suite's, with the run's ablation variant in place."""
    return with_variant(params, run.variant, where=f"run {run.key}", method=run.method) if run.variant else params
