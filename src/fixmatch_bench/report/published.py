"""The paper's published numbers (``reports/published.yaml``), validated on load.

Every number carries a confidence (``verified`` / ``secondary`` / ``unconfirmed``,
defined in the file's header and in docs/protocol.md §11) and the letters of the
public sources it comes from, so a table can show how far each comparison can be
trusted.
Cells the paper reports but nobody could retrieve are kept as ``not_retrieved``
rather than given a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIDENCES = ("verified", "secondary", "unconfirmed")
_RESULT_FIELDS = {"dataset", "labels", "method", "mean", "std", "confidence", "sources", "note"}
_REQUIRED_RESULT_FIELDS = _RESULT_FIELDS - {"note"}
_NOT_RETRIEVED_FIELDS = {"method", "cells", "note"}
_ABLATION_FIELDS = {"dataset", "labels", "method", "settings", "error", "confidence", "sources", "note"}


class PublishedError(ValueError):
    """``published.yaml`` does not follow the schema; the message names entry and field."""


def cell_id(dataset: str, labels: int) -> str:
    """File-name form of a cell: ``cifar10_40``."""
    return f"{dataset}_{labels}"


@dataclass(frozen=True)
class DisplayNames:
    """Paper spelling of dataset and method ids; unknown ids are shown as they are."""

    datasets: Mapping[str, str]
    methods: Mapping[str, str]

    def dataset(self, dataset: str) -> str:
        return self.datasets.get(dataset, dataset)

    def method(self, method: str) -> str:
        return self.methods.get(method, method)

    def cell(self, dataset: str, labels: int) -> str:
        """Table form of a cell: ``CIFAR-10@40``."""
        return f"{self.dataset(dataset)}@{labels}"


@dataclass(frozen=True)
class PublishedResult:
    """One published error rate (%): mean ± std over the paper's folds."""

    dataset: str
    labels: int
    method: str
    mean: float
    std: float | None
    confidence: str
    sources: tuple[str, ...]
    note: str | None = None

    @property
    def cell(self) -> str:
        return cell_id(self.dataset, self.labels)


@dataclass(frozen=True)
class PublishedAblation:
    """One published ablation result: a run with ``settings`` changed from the protocol (empty: the
    ablations' own baseline run); ``result.mean`` is its error (%), with no std."""

    settings: Mapping[str, Any]
    result: PublishedResult

    @property
    def series(self) -> str:
        """``cifar10_250-fixmatch_cta``: the cell × method it belongs to."""
        return f"{self.result.cell}-{self.result.method}"

    @property
    def error(self) -> float:
        return self.result.mean


@dataclass(frozen=True)
class Published:
    """All published results, looked up by (cell, method)."""

    sources: Mapping[str, str]
    names: DisplayNames
    results: tuple[PublishedResult, ...]
    not_retrieved: Mapping[tuple[str, str], str]
    ablations: tuple[PublishedAblation, ...] = ()

    def get(self, cell: str, method: str) -> PublishedResult | None:
        """The published result for ``cell`` (``cifar10_40``) and ``method``, if any."""
        for result in self.results:
            if result.cell == cell and result.method == method:
                return result
        return None

    def for_cell(self, cell: str) -> list[PublishedResult]:
        """Every published result of ``cell``, in file order."""
        return [result for result in self.results if result.cell == cell]

    def is_not_retrieved(self, cell: str, method: str) -> bool:
        """True when the paper has this number but it could not be retrieved."""
        return (cell, method) in self.not_retrieved


def _fail(where: str, field: str, value: Any, allowed: str) -> None:
    raise PublishedError(f"{where}: field {field!r} = {value!r} is invalid; expected {allowed}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_result(index: int, entry: Any, sources: Mapping[str, str], section: str = "results") -> PublishedResult:
    where = f"{section}[{index}]"
    if not isinstance(entry, dict):
        _fail(where, "(entry)", entry, "a mapping")
    where = f"{section}[{index}] ({entry.get('dataset')}@{entry.get('labels')} {entry.get('method')})"
    unknown = set(entry) - _RESULT_FIELDS
    if unknown:
        _fail(where, sorted(unknown)[0], entry[sorted(unknown)[0]], f"only the fields {sorted(_RESULT_FIELDS)}")
    for field in sorted(_REQUIRED_RESULT_FIELDS - set(entry)):
        _fail(where, field, None, "a value (the field is required)")
    for field in ("dataset", "method"):
        if not isinstance(entry[field], str) or not entry[field]:
            _fail(where, field, entry[field], "a non-empty string")
    labels = entry["labels"]
    if not isinstance(labels, int) or isinstance(labels, bool) or labels < 1:
        _fail(where, "labels", labels, "a positive integer")
    mean = entry["mean"]
    if not _is_number(mean) or not 0 <= mean <= 100:
        _fail(where, "mean", mean, "an error rate in % between 0 and 100")
    std = entry["std"]
    if std is not None and (not _is_number(std) or std < 0):
        _fail(where, "std", std, "null or a non-negative number")
    if entry["confidence"] not in CONFIDENCES:
        _fail(where, "confidence", entry["confidence"], f"one of {', '.join(CONFIDENCES)}")
    letters = entry["sources"]
    if not isinstance(letters, list) or any(letter not in sources for letter in letters):
        _fail(where, "sources", letters, f"a list of keys of `sources` ({', '.join(sources)})")
    note = entry.get("note")
    if note is not None and (not isinstance(note, str) or not note):
        _fail(where, "note", note, "a non-empty string")
    if not letters and note is None:
        _fail(where, "sources", letters, "at least one source, or a note saying why there is none")
    return PublishedResult(entry["dataset"], labels, entry["method"], float(mean),
                           None if std is None else float(std), entry["confidence"], tuple(letters), note)


def _parse_ablation(index: int, entry: Any, sources: Mapping[str, str]) -> PublishedAblation:
    where = f"ablations[{index}]"
    if not isinstance(entry, dict) or set(entry) - _ABLATION_FIELDS or not _ABLATION_FIELDS - {"note"} <= set(entry):
        _fail(where, "(entry)", entry, f"a mapping with the fields {sorted(_ABLATION_FIELDS)} (note optional)")
    result = _parse_result(index, {"mean": entry["error"], "std": None,
                                   **{k: v for k, v in entry.items() if k not in ("settings", "error")}}, sources, "ablations")
    settings = entry["settings"]
    if not isinstance(settings, dict) or not all(isinstance(key, str) for key in settings):
        _fail(where, "settings", settings, "a mapping of params keys (threshold, augment.strong_branch) to values")
    return PublishedAblation(settings, result)


def _parse_not_retrieved(entries: Any) -> dict[tuple[str, str], str]:
    if not isinstance(entries, list):
        _fail("not_retrieved", "(section)", entries, "a list")
    cells: dict[tuple[str, str], str] = {}
    for index, entry in enumerate(entries):
        where = f"not_retrieved[{index}]"
        if not isinstance(entry, dict) or set(entry) != _NOT_RETRIEVED_FIELDS:
            _fail(where, "(entry)", entry, f"a mapping with exactly the fields {sorted(_NOT_RETRIEVED_FIELDS)}")
        if not isinstance(entry["method"], str) or not isinstance(entry["note"], str):
            _fail(where, "method/note", (entry["method"], entry["note"]), "strings")
        if not isinstance(entry["cells"], list) or not entry["cells"]:
            _fail(where, "cells", entry["cells"], "a non-empty list of cells like cifar10_40")
        for cell in entry["cells"]:
            dataset, _, labels = str(cell).rpartition("_")
            if not dataset or not labels.isdigit():
                _fail(where, "cells", cell, "cells written <dataset>_<labels>, like cifar10_40")
            cells[(cell, entry["method"])] = entry["note"]
    return cells


def _parse_mapping(data: dict, key: str) -> dict[str, str]:
    value = data.get(key)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        _fail(key, "(section)", value, "a mapping of strings to strings")
    return value


def parse_published(data: Any) -> Published:
    """Validate the parsed YAML document and build :class:`Published`."""
    if not isinstance(data, dict):
        _fail("published.yaml", "(document)", type(data).__name__, "a mapping")
    sources = _parse_mapping(data, "sources")
    names = data.get("names")
    if not isinstance(names, dict):
        _fail("names", "(section)", names, "a mapping with `datasets` and `methods`")
    display = DisplayNames(_parse_mapping(names, "datasets"), _parse_mapping(names, "methods"))
    entries = data.get("results")
    if not isinstance(entries, list) or not entries:
        _fail("results", "(section)", entries, "a non-empty list")
    results = tuple(_parse_result(index, entry, sources) for index, entry in enumerate(entries))
    seen: dict[tuple[str, str], int] = {}
    for index, result in enumerate(results):
        key = (result.cell, result.method)
        if key in seen:
            _fail(f"results[{index}]", "dataset/labels/method", key,
                  f"a cell and method not already given by results[{seen[key]}]")
        seen[key] = index
    not_retrieved = _parse_not_retrieved(data.get("not_retrieved", []))
    for key in not_retrieved:
        if key in seen:
            _fail("not_retrieved", "cells", key, f"cells without a value (results[{seen[key]}] gives one)")
    ablations = data.get("ablations", [])
    if not isinstance(ablations, list):
        _fail("ablations", "(section)", ablations, "a list")
    return Published(sources, display, results, not_retrieved,
                     tuple(_parse_ablation(index, entry, sources) for index, entry in enumerate(ablations)))


def load_published(path: str | Path) -> Published:
    """Read and validate ``published.yaml``; raises :class:`PublishedError` naming the bad entry."""
    with open(path, encoding="utf-8") as handle:
        return parse_published(yaml.safe_load(handle))
