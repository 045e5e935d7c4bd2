"""Reading and validating `params.yaml`, and expanding it into runs.

The ``fixmatch_runs`` resolver validates the configuration whenever conf/ is
composed (``dvc exp run -S``, ``make params``), and every stage script calls
:func:`load_params` first: a bad value stops with one line naming the key, the
value and what is allowed, before any work starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from .datasets import with_facts
from .schema import DatasetFacts, Params, RunTable, Scalar

CELL_PATTERN = re.compile(r"^(?P<dataset>[a-z0-9]+)_(?P<labels>\d+)$")
# What an ablation variant may change: what a run computes. The suite's structure
# (cells, folds, ...) and how runs are executed or checked are not ablated.
VARIANT_BLOCKS = ("threshold", "train", "augment", "speed", "datasets", "methods")
WORD = re.compile(r"^[A-Za-z0-9_.]+$")  # a string value in a run key
AXIS = re.compile(r"^[A-Za-z0-9_]+$")  # an axis name, also its figure's file name


class ParamsError(ValueError):
    """A parameter value that is not allowed; the message names key and value."""


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
        ablation variant its changes after it (``digits_20-fixmatch_cta-1+threshold=0.8``)."""
        return f"{self.name}-{self.fold}" + "".join(f"+{key}={format_value(value)}" for key, value in self.variant)


def _fail(key: str, value: Any, allowed: str) -> NoReturn:
    raise ParamsError(f"invalid params: {key} = {value!r} ({allowed})")


def _choice(value: Any, key: str, allowed: list[str]) -> None:
    if value not in allowed:
        _fail(key, value, f"allowed: {', '.join(map(str, allowed))}")


def _dotted(location: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".")


def _field_at(location: tuple) -> tuple[type[BaseModel] | None, Any]:
    """(the model holding the last key, the annotation of the value) at a validation error's location."""
    model, annotation = None, Params
    for part in location:
        kinds, _ = _parts(annotation)
        block = next((kind for kind in kinds if isinstance(kind, type) and issubclass(kind, BaseModel)), None)
        container = next((kind for kind in kinds if get_origin(kind) in (dict, list)), None)
        if block is not None:
            model, field = block, block.model_fields.get(str(part))
            if field is None:
                return model, None
            annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        elif container is not None:
            annotation = get_args(container)[-1]  # the value type of dict[str, X] or list[X]
    return model, annotation


def _parts(annotation: Any) -> tuple[list, list]:
    """The types (classes, Literal[...], dict[...], list[...]) and the constraints (``Ge(0)``, ...) in an
    annotation, through Annotated, Optional and Field metadata."""
    kinds, constraints, stack = [], [], [annotation]
    while stack:
        item = stack.pop()
        origin = get_origin(item)
        if origin is Annotated:
            stack.extend(get_args(item))
        elif origin is Union or isinstance(item, UnionType):
            stack.extend(arg for arg in get_args(item) if arg is not type(None))
        elif isinstance(item, FieldInfo):
            stack.extend(item.metadata)
        elif isinstance(item, type) or origin is not None:
            kinds.append(item)
        elif item is not None:
            constraints.append(item)
    return kinds, constraints


def _range(annotation: Any) -> str | None:
    """``an integer in [1, inf)`` / ``a number in [0.0, 1.0]`` for a constrained number, else None."""
    kinds, constraints = _parts(annotation)
    kind = int if int in kinds else float if float in kinds else None
    if kind is None:
        return None
    bound = {name: getattr(c, name) for c in constraints for name in ("ge", "gt", "le", "lt") if hasattr(c, name)}
    low, high = bound.get("ge", bound.get("gt")), bound.get("le", bound.get("lt"))
    low_text = "-inf" if low is None else repr(kind(low))
    high_text = "inf" if high is None else repr(kind(high))
    return (f"{'an integer' if kind is int else 'a number'} in {'(' if 'gt' in bound or low is None else '['}"
            f"{low_text}, {high_text}{')' if 'lt' in bound or high is None else ']'}")


def _explain(error: dict) -> str:
    """What is allowed, in the words of the one-line error, for one pydantic error."""
    model, annotation = _field_at(error["loc"])
    kind = error["type"]
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return f"not a known key; allowed: {', '.join(model.model_fields) if model else '?'}"
    if kind == "bool_type":
        return "allowed: true, false"
    if kind in ("too_short", "string_too_short"):  # every length constraint of the schema is min_length=1
        return "must not be empty"
    literals = [get_args(item) for item in _parts(annotation)[0] if get_origin(item) is Literal]
    if literals:
        return "allowed: " + ", ".join(map(str, literals[0]))
    numbers = _range(annotation)
    if kind == "finite_number":
        return "must be a finite number" + (numbers.removeprefix("a number") if numbers else "")
    if numbers is not None:
        return f"must be {numbers}"
    message = error["msg"]
    return message[0].lower() + message[1:]


def params_error(error: ValidationError, within: tuple[str, ...] = ()) -> ParamsError:
    """The one-line error for the first problem of a validation of params (of the block at ``within``)."""
    errors = [{**e, "loc": (*within, *e["loc"])} for e in error.errors()]
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a misspelled key, not its absence
    value = None if first["type"] == "missing" else first["input"]
    return ParamsError(f"invalid params: {_dotted(first['loc'])} = {value!r} ({_explain(first)})")


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


def with_variant(params: Params, variant: Mapping[str, Scalar] | tuple[tuple[str, Scalar], ...],
                 where: str = "variant") -> Params:
    """``params`` with an ablation variant's values in place, validated like params.yaml.

    Each key is a dotted path to a value of :data:`VARIANT_BLOCKS` (``threshold``, ``train.lr``,
    ``datasets.cifar10.weight_decay``); an error names ``where`` and the key.
    """
    data = params.model_dump()
    for dotted, value in dict(variant).items():
        node, parts = data, str(dotted).split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if (parts[0] not in VARIANT_BLOCKS or not isinstance(node, dict) or parts[-1] not in node
                or isinstance(node[parts[-1]], (dict, list))):
            _fail(f"{where}: {dotted}", value, f"not a params value an ablation can change (one of "
                                              f"{', '.join(VARIANT_BLOCKS)}, e.g. threshold, train.lr)")
        if isinstance(value, str) and (not WORD.match(value) or parse_value(value) != value):
            _fail(f"{where}: {dotted}", value, "a string variant value must be a word (letters, digits, _ and .)")
        node[parts[-1]] = value
    data.update(ablations={}, runs=None)
    try:
        return validate_params(data)
    except ParamsError as error:
        prefix = "invalid params: "
        raise ParamsError(f"{prefix}{where}: {str(error).removeprefix(prefix)}") from None


def parse_cell(cell: str, datasets: Mapping[str, DatasetFacts], key: str = "cells") -> tuple[str, int]:
    """Split ``cifar10_40`` into (``cifar10``, 40), checking it against the dataset table."""
    match = CELL_PATTERN.match(str(cell))
    if not match:
        _fail(key, cell, "expected <dataset>_<labels>, e.g. cifar10_40")
    dataset, labels = match["dataset"], int(match["labels"])
    _choice(dataset, f"{key}: dataset of {cell}", sorted(datasets))
    facts = datasets[dataset]
    if not facts.num_classes <= labels <= facts.train_size:
        _fail(key, cell, f"{dataset} label count must be between {facts.num_classes} "
                         f"(one per class) and {facts.train_size} (the training set)")
    return dataset, labels


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
        _fail("train.checkpoint_every", train.checkpoint_every, f"must be a multiple of train.log_every = {train.log_every}")
    if train.nesterov and train.momentum == 0:
        _fail("train.nesterov", True, "Nesterov momentum needs train.momentum > 0")
    if (train.lr_schedule == "linear") != (train.lr_end is not None):
        _fail("train.lr_end", train.lr_end, f"a number with lr_schedule: linear, null with {train.lr_schedule}")
    sharpening = train.sharpen_temperature != 1.0 or train.soft_pseudo_labels
    if sharpening and typed.da_cells:
        _fail("train.sharpen_temperature" if train.sharpen_temperature != 1.0 else "train.soft_pseudo_labels",
              train.sharpen_temperature if train.sharpen_temperature != 1.0 else True,
              f"the sharpening ablations are not defined with distribution alignment (da_cells = {typed.da_cells})")
    if train.optimizer == "adam" and typed.speed.optimizer_impl != "foreach":
        _fail("speed.optimizer_impl", typed.speed.optimizer_impl,
              "selects SGD's implementation; train.optimizer = adam has one implementation: use foreach")
    if train.pseudo_labels_from == "ema" and typed.speed.compile == "step":
        _fail("train.pseudo_labels_from", "ema", "not supported with speed.compile = step (use model or none)")
    if typed.speed.compile_augment and typed.augment.impl != "batched":
        _fail("speed.compile_augment", True, "needs augment.impl = batched (the reference ops are per-image PIL)")
    for dataset in typed.data:
        _choice(dataset, "data", sorted(typed.datasets))
    if len(set(typed.folds)) != len(typed.folds):
        _fail("folds", typed.folds, "a non-empty list of distinct positive integers (split seeds)")
    for cell in typed.cells:
        dataset, _ = parse_cell(cell, typed.datasets)
        _choice(dataset, f"cells: dataset of {cell} (must be listed in data)", typed.data)
    if len(set(typed.ssl_methods)) != len(typed.ssl_methods):
        _fail("ssl_methods", typed.ssl_methods, "a list of distinct semi-supervised methods")
    for method in typed.ssl_methods:
        _choice(method, "ssl_methods", sorted(name for name, spec in typed.methods.items() if spec.unlabeled))
    if not typed.ssl_methods and typed.check.max_ratio_to_supervised is not None:
        _fail("ssl_methods", [], "must not be empty while check.max_ratio_to_supervised compares the semi-supervised "
                                 "methods with supervised-only; set it to null to train supervised baselines alone")
    if not typed.ssl_methods and typed.ablations:
        _fail("ssl_methods", [], "must not be empty: ablations are swept on the semi-supervised methods")
    for method in [*typed.ssl_methods, *(["fixmatch_cta_da"] if typed.da_cells else [])]:
        check_unlabeled_loss(typed, method)
    for cell in typed.da_cells:
        _choice(cell, "da_cells", typed.cells)
    for axis, variants in typed.ablations.items():
        if not AXIS.match(axis):
            _fail("ablations", axis, "an axis name is a word (letters, digits, _)")
        for index, variant in enumerate(variants):
            with_variant(typed, variant, where=f"ablations.{axis}[{index}]")
    return typed


def check_unlabeled_loss(params: Params, method: str) -> None:
    """Refuse ``train.uratio = 0`` or ``train.unlabeled_weight = 0`` for a method that trains on unlabeled
    data (it would train supervised under its name), unless the method allows it (an ablation)."""
    spec = params.methods[method]
    if not spec.unlabeled or spec.allow_no_unlabeled_loss:
        return
    for key, value in (("uratio", params.train.uratio), ("unlabeled_weight", params.train.unlabeled_weight)):
        if value == 0:
            _fail(f"train.{key}", value, f"must be > 0 for {method}, which trains on unlabeled data; "
                                         f"methods.{method}.allow_no_unlabeled_loss: true allows 0 (an ablation)")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the params file, including its table of runs."""
    with open(path) as handle:
        params = validate_params(yaml.safe_load(handle))
    if params.runs != RunTable.model_validate(run_table(params)):
        _fail("runs", "...", "does not match cells, ssl_methods, da_cells and folds; params.yaml is generated "
                             "from conf/: edit conf/ and run `make params`, or use `dvc exp run -S key=value`")
    return params


def expected_runs(params: Params) -> list[Run]:
    """Every run the params ask for: each cell's supervised baseline, each semi-supervised method,
    then distribution alignment on ``da_cells``."""
    pairs = [(cell, method) for method in ["supervised", *params.ssl_methods] for cell in params.cells]
    pairs += [(cell, "fixmatch_cta_da") for cell in params.da_cells]
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


def run_table(params: Params) -> dict:
    """The ``runs`` block of params.yaml that dvc.yaml's training stages iterate over.

    ``{"supervised": {key: [dataset, method, split]}, "semi_supervised": {...}}``: DVC's
    ``foreach`` over a mapping names each stage by its key (``train@digits_20-fixmatch_ra-1``)
    and hands the stage its dataset, method and split, so that each run depends on
    ``datasets.<its dataset>`` and ``methods.<its method>`` only (a ``matrix`` over cells
    cannot name a cell's dataset). The ``fixmatch_runs`` resolver
    (src/hydra_plugins/fixmatch_bench_resolvers.py) writes it whenever conf/ is composed.
    ``params`` must have passed :func:`validate_params`.
    """
    table: dict[str, dict[str, list]] = {"supervised": {}, "semi_supervised": {}}
    for run in all_runs(params):
        group = "supervised" if run.method == "supervised" else "semi_supervised"
        table[group][run.key] = [run.dataset, run.method, f"{run.cell}-{run.fold}"]
    return table


def parse_run(key: str, params: Params) -> Run:
    """The run named ``key``, ``<cell>-<method>-<fold>`` (``digits_20-fixmatch_ra-1``) with an ablation's
    ``+<params key>=<value>`` changes after it, if any: any cell of the dataset table, any method of
    ``methods``, any fold, any valid changes, whether or not the suite lists it."""
    base, *changes = str(key).split("+")
    parts = base.split("-")
    if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
        _fail("run", key, "expected <cell>-<method>-<fold>[+<key>=<value>...], e.g. digits_20-fixmatch_ra-1")
    dataset, labels = parse_cell(parts[0], params.datasets, key="run")
    _choice(parts[1], f"run {key}: method", sorted(params.methods))
    variant = []
    for change in changes:
        name, equals, text = change.partition("=")
        if not equals:
            _fail("run", key, f"an ablation change is <params key>=<value>, got {change!r}")
        variant.append((name, parse_value(text)))
    run = Run(dataset, labels, parts[1], int(parts[2]), tuple(variant))
    check_unlabeled_loss(with_variant(params, run.variant, where=f"run {key}"), run.method)
    return run


def run_params(params: Params, run: Run) -> Params:
    """The params a run trains with: the suite's, with the run's ablation variant in place."""
    return with_variant(params, run.variant, where=f"run {run.key}") if run.variant else params
