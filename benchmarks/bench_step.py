"""The training step that `dvc repro` runs (`train/step.py` ``train_step``, built from the paper
suite's params), fed by the peers' pipeline (a) and by this suite's (b), in one pytest-benchmark group.

Run: ``uv run pytest benchmarks/bench_step.py --benchmark-only``. One round is a window of
the configuration's steps (EMA evaluations included); pytest-benchmark reports the rounds'
statistics, and (b)'s ``extra_info`` its steps/s ratio to (a) measured in the same session.
On CUDA the first full configuration (WRN-28-2, CIFAR-10 shapes, RandAugment) with the
suite's GPU speed options; on a CPU-only machine the reduced configuration (seconds, not a
GPU figure). `python -m fixmatch_bench.tools.bench` measures every configuration and the ladder.
"""

from pathlib import Path

import pytest
import torch

from fixmatch_bench.tools.bench import GPU_SPEED, full_configs, peers_step, reduced_configs, suite_step
from fixmatch_bench.tools.compose import compose_params
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.train.host_memory import keep_freed_memory
from fixmatch_bench.train.speed import SpeedOptions

REPO = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = full_configs()[0] if DEVICE.type == "cuda" else reduced_configs()[0]
STEPS_PER_S: dict[str, float] = {}  # median of each pipeline, for the ratio
keep_freed_memory()  # both pipelines with the trainer's host-memory settings


@pytest.mark.parametrize("pipeline", ["peers", "suite"])  # the baseline first
def test_train_step_throughput(benchmark, pipeline):
    paper = validate_params(compose_params(["suite=paper"], REPO / "conf"))
    if pipeline == "peers":
        under_test = peers_step(CONFIG, paper, DEVICE, workers=torch.multiprocessing.cpu_count())
    else:
        under_test = suite_step(CONFIG, paper, DEVICE, GPU_SPEED if DEVICE.type == "cuda" else SpeedOptions())
    evaluations = iter(range(1, 10**9))

    def window() -> None:
        for _ in range(CONFIG.steps):
            under_test.step()
            if next(evaluations) % CONFIG.eval_every == 0:
                under_test.evaluate()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    benchmark.group = f"fixmatch step: {CONFIG.name}"
    benchmark.pedantic(window, rounds=CONFIG.rounds, iterations=1, warmup_rounds=1)
    STEPS_PER_S[pipeline] = CONFIG.steps / benchmark.stats.stats.median
    benchmark.extra_info.update(device=str(DEVICE), steps_per_round=CONFIG.steps,
                                steps_per_s_median=STEPS_PER_S[pipeline])
    if pipeline == "suite" and "peers" in STEPS_PER_S:
        benchmark.extra_info["ratio_suite_to_peers"] = STEPS_PER_S["suite"] / STEPS_PER_S["peers"]
    assert under_test.state.step == (CONFIG.rounds + 1) * CONFIG.steps  # every round trained
