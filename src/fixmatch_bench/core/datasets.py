"""The dataset table: ``conf/datasets/<name>.yaml``, one file per dataset.

A row holds what no experiment changes (sizes, classes, image shape, the weak and
strong views' settings, the network), so each dataset's stages depend on its file
rather than on params, and ``dvc exp show`` lists only what experiments sweep. Params
hold the per-dataset hyper-parameters (``datasets.<name>.weight_decay``) and may
override any fact (the throughput benchmark's smaller networks): :func:`with_facts`
merges the two, params winning. Every stage runs in the repository's root, where
the table is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

TABLE = Path("conf/datasets")


def dataset_table(directory: Path = TABLE) -> dict[str, dict[str, Any]]:
    """``{name: facts}`` from ``<directory>/<name>.yaml``."""
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(Path(directory).glob("*.yaml"))}


def _merged(facts: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(facts)
    for key, value in overrides.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, Mapping) and isinstance(
            merged.get(key), Mapping) else value
    return merged


def with_facts(params: Mapping[str, Any], directory: Path = TABLE) -> dict[str, Any]:
    """``params`` with each dataset's row of the table under its ``datasets.<name>`` entry."""
    table, datasets = dataset_table(directory), params.get("datasets") or {}
    if not isinstance(datasets, Mapping):
        return dict(params)  # validation names the bad block
    merged = {name: _merged(table.get(name, {}), datasets.get(name) or {}) for name in {**table, **datasets}}
    return {**params, "datasets": merged}
