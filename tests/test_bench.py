"""The throughput benchmark's pieces: per-image peers' dataset, the suite's step, the report."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixmatch_bench.tools.bench import (GPU_LADDER, GPU_SPEED, BenchConfig, _attempt, _breakdown, _PerImage, main,
                                  random_data, reduced_configs, render_markdown, suite_step, timed_rounds,
                                  write_report)
from fixmatch_bench.tools import bench
from fixmatch_bench.tools.compose import compose_params
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.train import step as step_module
from fixmatch_bench.train.speed import SpeedOptions

REPO = Path(__file__).resolve().parents[1]
TINY = BenchConfig("tiny", "cifar10", train={"batch": 2, "uratio": 3, "eval_batch": 8},
                   network={"filters": 8, "scales": 1, "repeat": 1}, train_size=16, test_size=8,
                   steps=2, rounds=3, warmup=1, breakdown_steps=2, eval_every=1)


@pytest.fixture(scope="module")
def paper():
    return validate_params(compose_params(["suite=paper"], REPO / "conf"))


def test_a_configuration_is_the_paper_suites_params_with_its_overrides(paper):
    params = TINY.params(paper, SpeedOptions(channels_last=True), torch.device("cpu"))
    assert params.train.batch == 2 and params.train.lr == paper.train.lr == 0.03
    assert params.threshold == paper.threshold == 0.95 and params.train.steps == 2**20
    assert params.methods[TINY.method].threshold == paper.methods[TINY.method].threshold == 0.95
    assert params.datasets["cifar10"].network.filters == 8 and params.speed.channels_last
    assert paper.datasets["cifar10"].network.filters == 32  # the paper's params are left alone
    reduced = reduced_configs()[0].params(paper, SpeedOptions(), torch.device("cpu"))
    assert reduced.train.uratio == 7 and reduced.datasets["cifar10"].image_size == 32


def test_the_peers_dataset_augments_one_uint8_image_per_item(paper):
    data = random_data(TINY, paper.datasets["cifar10"], torch.device("cpu"))
    assert data.labeled_images.shape == (16, 3, 32, 32) and data.labeled_images.dtype == torch.uint8
    facts = paper.datasets["cifar10"]
    weak, strong = _PerImage(data.labeled_images, data.labeled_targets, facts, unlabeled=True)[3]
    assert weak.shape == strong.shape == (3, 32, 32) and weak.dtype == torch.uint8
    assert not torch.equal(weak, strong)
    image, target = _PerImage(data.labeled_images, data.labeled_targets, facts, unlabeled=False)[5]
    assert image.shape == (3, 32, 32) and target == data.labeled_targets[5]


def test_the_benchmark_times_the_trainers_own_step_over_several_rounds(paper, monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(step_module.train_step(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(bench, "train_step", counted)  # the benchmark calls the trainer's step function
    under_test = suite_step(TINY, paper, torch.device("cpu"), SpeedOptions())
    before = [p.detach().clone() for p in under_test.state.model.parameters()]
    rounds = timed_rounds(TINY, under_test)
    assert len(rounds) == 3 and all(value > 0 for value in rounds)
    assert len(calls) == TINY.warmup + TINY.rounds * TINY.steps == under_test.state.step
    assert set(calls[0]) >= {"loss", "loss_x", "loss_u", "mask_rate", "lr"}  # train_step's logs (FixMatch's loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, under_test.state.model.parameters()))
    breakdown = _breakdown(TINY, under_test)
    assert set(breakdown) == {"batch_ms", "update_ms"} and all(value > 0 for value in breakdown.values())


def test_a_cpu_report_says_gpu_figures_were_not_measured(tmp_path):
    report = {"device": "CPU (x86_64, 2 cores)", "device_type": "cpu", "reduced": True, "torch": "2.13",
              "cpu_cores": 2, "load_average_1min": 0.5, "results": [{"config": "tiny", "settings": {}, "ratio": 2.0,
                                           "peers": {"steps_per_s": 1.5, "steps_per_s_stdev": 0.1,
                                                     "workers": 2},
                                           "suite": {"steps_per_s": 3.0, "speed_options": {},
                                                     "steps_per_s_stdev": 0.25,
                                                     "breakdown_ms": {"batch_ms": 10.0, "update_ms": 300.0}}}]}
    write_report(report, tmp_path)
    markdown = (tmp_path / "throughput.md").read_text()
    assert "| tiny | 1.50 ± 0.10 | 3.00 ± 0.25 | 2.00x | 10.0 | 300.0 |" in markdown
    assert "host load average at start 0.50" in markdown
    assert "GPU figures: not measured" in markdown and "REDUCED" in markdown
    assert json.loads((tmp_path / "throughput.json").read_text())["gpu_figures"] == "not measured"
    assert render_markdown(report) == markdown


def _measured(steps_per_s: float) -> dict:
    return {"steps_per_s": steps_per_s, "steps_per_s_stdev": 1.0, "speed_options": {},
            "breakdown_ms": {"batch_ms": 1.0, "update_ms": 2.5}}


def test_a_gpu_report_has_the_option_ladder_failures_and_cta_against_ra():
    ladder = [dict(label=label, **_measured(100.0 * (index + 1))) for index, (label, _) in enumerate(GPU_LADDER[:5])]
    ladder.append({"label": GPU_LADDER[5][0], "error": "BackendCompilerFailed: boom"})
    report = {"device": "NVIDIA H100", "device_type": "cuda", "reduced": False, "torch": "2.11", "cpu_cores": 16,
              "load_average_1min": 0.1, "results": [
                  {"config": "WRN-28-2 CIFAR-10 RandAugment", "settings": {}, "ratio": 8.0,
                   "suite": _measured(240.0), "peers": _measured(30.0), "ladder": ladder},
                  {"config": "WRN-28-2 CIFAR-10 CTAugment", "settings": {}, "suite": _measured(216.0)}]}
    markdown = render_markdown(report)
    assert "| WRN-28-2 CIFAR-10 RandAugment | 30.00 ± 1.00 | 240.00 ± 1.00 | 8.00x | 1.0 | 2.5 |" in markdown
    assert "| WRN-28-2 CIFAR-10 CTAugment | — | 216.00 ± 1.00 | — | 1.0 | 2.5 |" in markdown
    assert "- WRN-28-2 CIFAR-10: CTAugment runs at 0.90 of RandAugment's steps/s." in markdown
    assert "| + TF32 convolutions and matmuls (speed.tf32: not the paper protocol) | 300.00 ± 1.00 | 3.00x |" in markdown
    assert "| + compile: model | 500.00 ± 1.00 | 5.00x | 1.0 | 2.5 |" in markdown
    assert "| + compile: step | failed (see throughput.json) | — | — | — |" in markdown
    assert "compile: step" in markdown.split("\n")[5] and "not measured" not in markdown


def test_a_failing_measurement_is_reported_not_raised(capsys):
    def broken():
        raise RuntimeError("no kernel image")
    assert _attempt("x", broken) == {"error": "RuntimeError: no kernel image"}
    assert "failed: RuntimeError: no kernel image" in capsys.readouterr().err
    assert _attempt("y", lambda: {"steps_per_s": 1.0}) == {"steps_per_s": 1.0}


def test_past_the_deadline_a_measurement_is_reported_as_not_reached_without_running(capsys):
    def measure():
        pytest.fail("measured past the deadline")

    skipped = _attempt("z", measure, time.monotonic() - 1.0)
    assert skipped == {"skipped": bench.NOT_REACHED}
    assert "skipping z" in capsys.readouterr().err
    assert _attempt("w", lambda: {"steps_per_s": 2.0}, time.monotonic() + 60.0) == {"steps_per_s": 2.0}
    report = {"device": "NVIDIA H100", "device_type": "cuda", "reduced": False, "quick": True, "torch": "2.11",
              "cpu_cores": 16, "load_average_1min": 0.1, "results": [
                  {"config": "WRN-28-8 CIFAR-100 RandAugment", "settings": {}, "suite": skipped,
                   "protocol": _measured(20.0)}]}
    markdown = render_markdown(report)
    assert f"| WRN-28-8 CIFAR-100 RandAugment | — | {bench.NOT_REACHED} | — | — | — | 20.00 ± 1.00 |" in markdown
    assert "no evaluation inside the timed rounds (quick timing)" in markdown


def test_quick_timing_is_three_short_rounds_without_evaluations():
    config = bench.full_configs()[0]
    quick = config.quick()
    assert (quick.steps, quick.rounds, quick.warmup) == (32, 3, 10) and quick.eval_every > quick.steps * quick.rounds
    assert (quick.name, quick.dataset, quick.method, quick.ladder) == (config.name, config.dataset, config.method, True)


def test_the_ladders_start_from_the_paper_suites_speed_options(paper):
    assert bench.PROTOCOL == paper.speed == GPU_LADDER[0][1] == bench.CPU_LADDER[0][1]


def test_the_gpu_ladder_adds_one_option_at_a_time_and_labels_the_algorithm_changing_rung():
    options = [speed for _, speed in GPU_LADDER]
    assert options[0].compile == "none" and not options[0].autocast_bf16 and not options[0].tf32
    assert [speed for speed in options if speed.tf32] == [SpeedOptions(tf32=True)]  # its own rung
    assert not GPU_SPEED.tf32
    assert GPU_SPEED in options and not GPU_SPEED.weak_no_grad and GPU_SPEED.compile == "step"
    changing = [label for label, speed in GPU_LADDER if speed.weak_no_grad]
    assert len(changing) == 1 and "ALGORITHM-CHANGING" in changing[0]


def test_only_that_matches_no_configuration_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "no such config", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "matches no configuration" in capsys.readouterr().err
    assert not (tmp_path / "throughput.json").exists()


def test_the_reduced_benchmark_runs_end_to_end_from_the_command_line(tmp_path):
    """What CI exercises of ``python -m fixmatch_bench.tools.bench``: both pipelines, the ratio, the CPU ladder."""
    main(["--reduced", "--device", "cpu", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert report["gpu_figures"] == "not measured" and report["reduced"]
    (row,) = report["results"]
    assert row["suite"]["steps_per_s"] > 0 and row["peers"]["steps_per_s"] > 0
    assert row["peers"]["precision"] == {"cudnn_allow_tf32": True, "matmul_allow_tf32": False}  # as peers run
    assert row["suite"]["speed_options"]["tf32"] is False  # the suite: IEEE float32 unless speed.tf32
    assert row["ratio"] == pytest.approx(row["suite"]["steps_per_s"] / row["peers"]["steps_per_s"])
    assert [rung["label"] for rung in row["ladder"]] == ["fp32 eager", "+ channels_last"]
    assert row["suite"]["steps_per_s"] == row["ladder"][0]["steps_per_s"] == row["protocol"]["steps_per_s"]
    assert row["workload"].startswith("ResNet filters=16 scales=2 repeat=1, 3x32x32, randaugment, B=2, mu=7")
    assert report["paper_suite"]["totals"]["protocol"] == {"hours": 0.0, "runs_not_measured": 155}  # CPU: no figure
    assert "| speed options | steps/s |" in (tmp_path / "throughput.md").read_text()


def test_make_bench_collects_every_benchmark_file():
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    collected = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    assert collected == {"benchmarks/bench_augment.py", "benchmarks/bench_network.py", "benchmarks/bench_operator_calls.py",
                         "benchmarks/bench_step.py"}
