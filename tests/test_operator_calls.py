"""Operator calls per training step (:mod:`fixmatch_bench.tools.operator_calls`): what is counted, and issue 28's bounds.

Counts, not times: they are the same on every machine (for one torch version).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import record_function

from fixmatch_bench.tools import operator_calls
from fixmatch_bench.tools.operator_calls import AUGMENTATION_BEFORE, VIEWS_BEFORE, count_calls, paper_params, step_calls


@pytest.fixture(scope="module")
def paper():
    return paper_params()


@pytest.fixture(scope="module")
def at_batch_1(paper) -> dict[str, dict[str, int]]:
    """The calls of a WRN-28-2 step at B = 1 per method (each step costs seconds: counted once)."""
    return {method: step_calls(paper, "cifar10", method, 1) for method in sorted(AUGMENTATION_BEFORE)}


def test_a_call_is_a_top_level_aten_operator_in_its_innermost_phase() -> None:
    x = torch.ones(4)

    def function() -> None:
        with record_function("augmentation"):
            x.float().add(1)  # aten::to returns x: no nested call
            torch.nn.functional.linear(x.view(1, 4), x.view(1, 4))  # one call, its nested ones not counted
        x.mul(2)

    counts = count_calls(function)
    assert counts == {"augmentation": 5, "other": 1}


def test_the_counts_do_not_depend_on_the_batch(paper, at_batch_1) -> None:
    """What lets the report count at a small batch and speak for the paper's B = 64."""
    assert step_calls(paper, "cifar10", "fixmatch_cta", 2) == at_batch_1["fixmatch_cta"]


@pytest.mark.parametrize("method", sorted(AUGMENTATION_BEFORE))
def test_the_dense_augmentation_issues_at_most_a_quarter_of_the_calls_of_before_issue_28(at_batch_1, method) -> None:
    calls = at_batch_1[method]["augmentation"]
    assert calls <= AUGMENTATION_BEFORE[method] / 4, (calls, AUGMENTATION_BEFORE[method])


def test_the_all_cutout_step_issues_at_most_30_calls() -> None:
    calls = operator_calls.view_calls(n=4)
    assert calls["the all-cutout step"] <= 30
    assert calls.keys() == VIEWS_BEFORE.keys()
