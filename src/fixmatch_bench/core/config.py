"""Reading and validating `params.yaml`, and expanding it into runs.

The ``fixmatch_runs`` resolver validates the configuration whenever conf/ is
composed (``dvc exp run -S``, ``make params``), and every stage script calls
:func:`load_params` first: a bad value stops with one line naming the key, the
value and what is allowed, before any work starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .speed_options import COMPILE, COMPILE_MODES, FLAGS, OPTIMIZER_IMPLS, SpeedOptions

STRONG_AUGMENTATIONS = ("none", "randaugment", "ctaugment")
AUGMENT_IMPLS = ("batched", "reference")
DEVICES = ("auto", "cpu", "cuda")
CELL_PATTERN = re.compile(r"^(?P<dataset>[a-z0-9]+)_(?P<labels>\d+)$")


class ParamsError(ValueError):
    """A parameter value that is not allowed; the message names key and value."""


@dataclass(frozen=True)
class Run:
    """One training: a method on a dataset@labels cell and one fold."""

    dataset: str
    labels: int
    method: str
    fold: int

    @property
    def cell(self) -> str:
        return f"{self.dataset}_{self.labels}"

    @property
    def name(self) -> str:
        """The run without its fold, as listed in params (``digits_20-fixmatch_ra``)."""
        return f"{self.cell}-{self.method}"

    @property
    def key(self) -> str:
        """Stage key (``train@<key>``) and results folder name (``digits_20-fixmatch_ra-1``)."""
        return f"{self.name}-{self.fold}"


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ParamsError(f"invalid params: {key} = {value!r} ({allowed})")


def _number(params: dict, key: str, low: float, high: float | None = None, *, integer: bool = False,
            low_inclusive: bool = True) -> None:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            _fail(key, None, "missing")
        node = node[part]
    kind = int if integer else (int, float)
    ok = isinstance(node, kind) and not isinstance(node, bool)
    if ok:
        ok = node >= low if low_inclusive else node > low
        ok = ok and (high is None or node <= high)
    if not ok:
        bounds = f"{'[' if low_inclusive else '('}{low}, {'inf)' if high is None else f'{high}]'}"
        _fail(key, node, f"must be {'an integer' if integer else 'a number'} in {bounds}")


def _choice(value: Any, key: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        _fail(key, value, f"allowed: {', '.join(map(str, allowed))}")


def _validate_speed(params: dict) -> None:
    speed = params.get("speed")
    if not isinstance(speed, dict):
        _fail("speed", speed, "a mapping of speed options")
    for key in sorted(set(speed) - set(SpeedOptions.__dataclass_fields__)):
        _fail(f"speed.{key}", speed[key], f"not a speed option; allowed: {', '.join(SpeedOptions.__dataclass_fields__)}")
    for key in FLAGS:
        if not isinstance(speed.get(key), bool):
            _fail(f"speed.{key}", speed.get(key), "allowed: true, false")
    _choice(speed.get("compile"), "speed.compile", COMPILE)
    _choice(speed.get("compile_mode"), "speed.compile_mode", COMPILE_MODES)
    _choice(speed.get("optimizer_impl"), "speed.optimizer_impl", OPTIMIZER_IMPLS)
    if speed["compile_augment"] and params["augment"]["impl"] != "batched":
        _fail("speed.compile_augment", True, "needs augment.impl = batched (the reference ops are per-image PIL)")


def _validate_checkpoints(params: dict) -> None:
    block = params.get("checkpoints")
    if not isinstance(block, dict) or set(block) != {"dir", "keep_finished"}:
        _fail("checkpoints", block, "a mapping with dir (null or a path) and keep_finished (true, false)")
    if block["dir"] is not None and not (isinstance(block["dir"], str) and block["dir"]):
        _fail("checkpoints.dir", block["dir"], "null (the default location) or a directory path")
    if not isinstance(block["keep_finished"], bool):
        _fail("checkpoints.keep_finished", block["keep_finished"], "allowed: true, false")


def parse_cell(cell: str, datasets: dict[str, Any], key: str = "cells") -> tuple[str, int]:
    """Split ``cifar10_40`` into (``cifar10``, 40), checking it against the dataset table."""
    match = CELL_PATTERN.match(str(cell))
    if not match:
        _fail(key, cell, "expected <dataset>_<labels>, e.g. cifar10_40")
    dataset, labels = match["dataset"], int(match["labels"])
    _choice(dataset, f"{key}: dataset of {cell}", sorted(datasets))
    facts = datasets[dataset]
    if not facts["num_classes"] <= labels <= facts["train_size"]:
        _fail(key, cell, f"{dataset} label count must be between {facts['num_classes']} "
                         f"(one per class) and {facts['train_size']} (the training set)")
    return dataset, labels


def validate_params(params: dict) -> None:
    """Check every key the pipeline reads; raise :class:`ParamsError` on the first bad one."""
    _number(params, "threshold", 0.0, 1.0)
    for key in ("steps", "batch", "eval_every", "median_of_last", "eval_batch", "log_every", "checkpoint_every"):
        _number(params, f"train.{key}", 1, integer=True)
    _number(params, "train.uratio", 0, integer=True)
    _number(params, "train.seed", 0, integer=True)
    _number(params, "train.unlabeled_weight", 0.0)
    _number(params, "train.lr", 0.0, low_inclusive=False)
    _number(params, "train.momentum", 0.0, 1.0)
    _number(params, "train.ema", 0.0, 1.0)
    train = params["train"]
    if train["checkpoint_every"] % train["log_every"]:
        _fail("train.checkpoint_every", train["checkpoint_every"],
              f"must be a multiple of train.log_every = {train['log_every']}")
    _choice(train.get("device"), "train.device", DEVICES)
    _choice(params.get("augment", {}).get("impl"), "augment.impl", AUGMENT_IMPLS)
    _validate_speed(params)

    datasets = params.get("datasets") or {}
    for name, facts in datasets.items():
        for key in ("num_classes", "image_size", "channels", "translate", "ra_cutout", "cta_cutout",
                    "train_size", "test_size"):
            _number(params, f"datasets.{name}.{key}", 0, integer=True)
        _number(params, f"datasets.{name}.weight_decay", 0.0)
        _number(params, f"datasets.{name}.ra_translate_scale", 0.0, 1.0, low_inclusive=False)
    methods = params.get("methods") or {}
    for name, method in methods.items():
        _choice(method.get("strong"), f"methods.{name}.strong", STRONG_AUGMENTATIONS)

    data = params.get("data")
    if not isinstance(data, list) or not data:
        _fail("data", data, "a non-empty list of datasets")
    for dataset in data:
        _choice(dataset, "data", sorted(datasets))
    folds = params.get("folds")
    if not isinstance(folds, list) or not folds or len(set(folds)) != len(folds):
        _fail("folds", folds, "a non-empty list of distinct positive integers (split seeds)")
    for fold in folds:
        if not isinstance(fold, int) or isinstance(fold, bool) or fold < 1:
            _fail("folds", fold, "split seeds are integers >= 1 (seed 0 means unshuffled)")
    cells = params.get("cells")
    if not isinstance(cells, list) or not cells:
        _fail("cells", cells, "a non-empty list of <dataset>_<labels>")
    for cell in cells:
        dataset, _ = parse_cell(cell, datasets)
        _choice(dataset, f"cells: dataset of {cell} (must be listed in data)", data)
    ssl_methods = params.get("ssl_methods")
    if not isinstance(ssl_methods, list) or len(set(ssl_methods)) != len(ssl_methods):
        _fail("ssl_methods", ssl_methods, "a list of distinct semi-supervised methods")
    allowed = sorted(name for name, spec in methods.items() if spec.get("unlabeled"))
    for method in ssl_methods:
        _choice(method, "ssl_methods", allowed)
    da_cells = params.get("da_cells")
    if not isinstance(da_cells, list):
        _fail("da_cells", da_cells, "a list of cells (possibly empty)")
    for cell in da_cells:
        _choice(cell, "da_cells", cells)
    _validate_checkpoints(params)


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read and validate the params file, including its table of runs."""
    with open(path) as handle:
        params = yaml.safe_load(handle)
    validate_params(params)
    if params.get("runs") != run_table(params):
        _fail("runs", "...", "does not match cells, ssl_methods, da_cells and folds; params.yaml is generated "
                             "from conf/: edit conf/ and run `make params`, or use `dvc exp run -S key=value`")
    return params


def expected_runs(params: dict) -> list[Run]:
    """Every run the params ask for: each cell's supervised baseline, each semi-supervised method,
    then distribution alignment on ``da_cells``."""
    pairs = [(cell, method) for method in ["supervised", *params["ssl_methods"]] for cell in params["cells"]]
    pairs += [(cell, "fixmatch_cta_da") for cell in params["da_cells"]]
    runs = []
    for cell, method in pairs:
        dataset, labels = parse_cell(cell, params["datasets"])
        runs.extend(Run(dataset, labels, method, int(fold)) for fold in params["folds"])
    return runs


def run_table(params: dict) -> dict:
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
    for run in expected_runs(params):
        group = "supervised" if run.method == "supervised" else "semi_supervised"
        table[group][run.key] = [run.dataset, run.method, f"{run.cell}-{run.fold}"]
    return table


def parse_run(key: str, params: dict) -> Run:
    """The run named ``key``, ``<cell>-<method>-<fold>`` (``digits_20-fixmatch_ra-1``): any cell of the
    dataset table, any method of ``methods``, any fold, whether or not the suite lists it."""
    parts = str(key).split("-")
    if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
        _fail("run", key, "expected <cell>-<method>-<fold>, e.g. digits_20-fixmatch_ra-1")
    dataset, labels = parse_cell(parts[0], params["datasets"], key="run")
    _choice(parts[1], f"run {key}: method", sorted(params["methods"]))
    return Run(dataset, labels, parts[1], int(parts[2]))
