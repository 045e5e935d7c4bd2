import csv
import io
from pathlib import Path

from fixmatch_bench.core.runs import Run
from fixmatch_bench.report.cells import CellResult, RunResult
from fixmatch_bench.report.published import parse_published
from fixmatch_bench.report.tables import (
    format_measured,
    format_published,
    latex_escape,
    render_cost_csv,
    render_cost_markdown,
    render_csv,
    render_latex,
    render_markdown,
)

GOLDEN = Path(__file__).parent / "golden"

PUBLISHED = parse_published({
    "sources": {"a": "source a", "e": "source e"},
    "names": {
        "datasets": {"cifar10": "CIFAR-10", "digits": "Digits"},
        "methods": {"fixmatch_ra": "FixMatch (RA)", "fixmatch_cta": "FixMatch (CTA)", "supervised": "Supervised only",
                    "remixmatch": "ReMixMatch", "pi_model": "Π-Model"},
    },
    "results": [
        {"dataset": "cifar10", "labels": 40, "method": "fixmatch_ra", "mean": 13.81, "std": 3.37,
         "confidence": "secondary", "sources": ["a"]},
        {"dataset": "cifar10", "labels": 250, "method": "fixmatch_ra", "mean": 5.07, "std": 0.65,
         "confidence": "secondary", "sources": ["a"]},
        {"dataset": "cifar10", "labels": 40, "method": "fixmatch_cta", "mean": 11.39, "std": None,
         "confidence": "secondary", "sources": ["e"]},
        {"dataset": "cifar10", "labels": 40, "method": "remixmatch", "mean": 19.10, "std": 9.64,
         "confidence": "secondary", "sources": ["e"]},
        {"dataset": "cifar10", "labels": 40, "method": "pi_model", "mean": 54.26, "std": 3.97,
         "confidence": "unconfirmed", "sources": ["e"]},
    ],
    "not_retrieved": [{"method": "pi_model", "cells": ["cifar10_250"], "note": "not retrieved"}],
})


def cell(dataset, labels, method, errors, expected=(1, 2, 3)):
    return CellResult(dataset, labels, method, errors, tuple(expected), (20,), None, None)


CELLS = [
    cell("cifar10", 40, "fixmatch_ra", {1: 12.0, 2: 14.0, 3: 16.0}),    # 14.00 ± 2.00 (3/3), Δ +0.19
    cell("cifar10", 250, "fixmatch_ra", {1: 5.5, 3: 4.5}),              # 5.00 ± 0.71 (2/3), Δ −0.07
    cell("cifar10", 40, "fixmatch_cta", {2: 10.0}),                     # 10.00 ± n/a (1/3), Δ −1.39
    cell("cifar10", 250, "fixmatch_cta", {}),                           # missing (0/3)
    cell("digits", 20, "supervised", {1: 30.0, 2: 31.0}, (1, 2)),       # 30.50 ± 0.71 (2/2)
    cell("digits", 20, "fixmatch_ra", {1: 2.0, 2: 3.0}, (1, 2)),        # 2.50 ± 0.71 (2/2)
]



COLLECTED = [
    (Run("digits", 20, "fixmatch_ra", 1), RunResult("digits", 20, "fixmatch_ra", 1, 2.0, 20, 1024, 95.0, 10.78, "cpu")),
    (Run("digits", 20, "fixmatch_ra", 2), None),
    (Run("cifar10", 40, "fixmatch_ra", 1),
     RunResult("cifar10", 40, "fixmatch_ra", 1, 12.0, 20, 1048576, 5400.0, 194.18, "NVIDIA H100 80GB HBM3")),
]


def test_markdown_matches_golden():
    assert render_markdown(CELLS, PUBLISHED) == (GOLDEN / "report_results.md").read_text(encoding="utf-8")


def test_latex_matches_golden():
    assert render_latex(CELLS, PUBLISHED) == (GOLDEN / "report_results.tex").read_text(encoding="utf-8")


def test_cost_markdown_matches_golden():
    assert render_cost_markdown(COLLECTED) == (GOLDEN / "report_cost.md").read_text(encoding="utf-8")


def test_cell_formats():
    assert format_measured(CELLS[0]) == "14.00 ± 2.00 (3/3)"
    assert format_measured(CELLS[2]) == "10.00 ± n/a (1/3)"
    assert format_measured(CELLS[3]) == "missing (0/3)"
    assert format_measured(None) == "—"
    assert format_published(PUBLISHED.get("cifar10_40", "fixmatch_cta"), False) == "11.39"
    assert format_published(PUBLISHED.get("cifar10_40", "pi_model"), False) == "54.26 ± 3.97 †"
    assert format_published(None, True) == "n/r"


def test_latex_escape():
    assert latex_escape("a_b 5% ± x & Δ") == r"a\_b 5\% $\pm$ x \& $\Delta$"


def test_csv_has_one_row_per_cell_with_every_field():
    rows = list(csv.DictReader(io.StringIO(render_csv(CELLS, PUBLISHED))))
    assert len(rows) == len(CELLS)
    first = rows[0]
    assert first["cell"] == "cifar10_40" and first["method"] == "fixmatch_ra"
    assert (first["mean"], first["std"], first["folds_done"], first["complete"]) == ("14.0000", "2.0000", "3", "True")
    assert (first["published_mean"], first["published_std"], first["diff"]) == ("13.8100", "3.3700", "0.1900")
    assert first["fold_errors"] == "1:12.0000;2:14.0000;3:16.0000"
    assert rows[1]["missing_folds"] == "2" and rows[1]["complete"] == "False"
    assert rows[2]["std"] == "" and rows[2]["published_std"] == "" and rows[2]["published_sources"] == "e"
    assert rows[3]["mean"] == "" and rows[3]["diff"] == ""
    assert rows[4]["published_mean"] == ""


def test_cost_csv_rows():
    rows = list(csv.DictReader(io.StringIO(render_cost_csv(COLLECTED))))
    assert [row["run"] for row in rows] == ["digits_20-fixmatch_ra-1", "digits_20-fixmatch_ra-2", "cifar10_40-fixmatch_ra-1"]
    assert (rows[0]["finished"], rows[0]["gpu_hours"]) == ("True", "0.000000")
    assert (rows[1]["finished"], rows[1]["device"]) == ("False", "")
    assert rows[2]["gpu_hours"] == "1.500000"
