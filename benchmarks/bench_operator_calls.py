"""Operator calls per training step (:mod:`fixmatch_bench.tools.operator_calls`): a count, the same on every machine.

Run: ``uv run pytest benchmarks --benchmark-only -q -s -k operator_calls``. Per network and
strong augmentation of the paper suite, the trainer's step on CPU with the dense augmentation (what
CUDA runs), at B = 2, mu = 7 (the counts do not depend on the batch). The calls per phase are printed
and stored in ``benchmark.extra_info``, with the augmentation's calls before issue 28; the time is
that of counting (one profiled step), not a training figure. ``python -m fixmatch_bench.tools.operator_calls``
writes the same counts to reports/operator_calls.md.
"""

from __future__ import annotations

import pytest

from fixmatch_bench.tools.operator_calls import AUGMENTATION_BEFORE, AUGMENTATIONS, NETWORKS, paper_params, step_calls


@pytest.fixture(scope="module")
def paper():
    return paper_params()


@pytest.mark.parametrize("network,dataset", NETWORKS, ids=[network for network, _ in NETWORKS])
@pytest.mark.parametrize("strong,method", AUGMENTATIONS, ids=[strong for strong, _ in AUGMENTATIONS])
def test_operator_calls_per_step(benchmark, paper, network: str, dataset: str, strong: str, method: str) -> None:
    calls = benchmark.pedantic(step_calls, args=(paper, dataset, method, 2), rounds=1, iterations=1)
    benchmark.extra_info.update(calls, augmentation_before_issue_28=AUGMENTATION_BEFORE[method])
    print(f"\n{network} {strong}: {calls} (augmentation before issue 28: {AUGMENTATION_BEFORE[method]:,})", end="")
