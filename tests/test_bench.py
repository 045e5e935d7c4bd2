"""The throughput benchmark's pieces: per-image peers' dataset, the suite's step, the report."""

import json

import torch

from fixmatch_bench.bench import (BenchConfig, RandomData, _PerImage, _SuiteStep, _breakdown, reduced_configs,
                                  render_markdown, write_report)
from fixmatch_bench.speed import SpeedOptions

TINY = BenchConfig("tiny", {"filters": 8, "scales": 1, "repeat": 1}, batch=2, uratio=3, train_size=16, test_size=8,
                   steps=2, warmup=1, breakdown_steps=2, eval_every=1, eval_batch=8)


def test_cutout_and_translate_follow_the_dataset_table():
    assert (TINY.translate, TINY.cutout) == (4, 16)
    assert BenchConfig("stl", {}, image_size=96, strong="ctaugment").cutout == 48
    assert BenchConfig("stl", {}, image_size=96).translate == 12
    assert reduced_configs()[0].image_size == 32 and reduced_configs()[0].uratio == 7


def test_the_peers_dataset_augments_one_uint8_image_per_item():
    data = RandomData.make(TINY)
    assert data.train.shape == (16, 3, 32, 32) and data.train.dtype == torch.uint8
    weak, strong = _PerImage(data.train, data.train_targets, TINY, unlabeled=True)[3]
    assert weak.shape == strong.shape == (3, 32, 32) and weak.dtype == torch.uint8
    assert not torch.equal(weak, strong)
    image, target = _PerImage(data.train, data.train_targets, TINY, unlabeled=False)[5]
    assert image.shape == (3, 32, 32) and target == data.train_targets[5]


def test_the_suite_step_trains_and_its_breakdown_covers_three_phases():
    run = _SuiteStep(TINY, RandomData.make(TINY), torch.device("cpu"), SpeedOptions())
    before = [p.detach().clone() for p in run.trainer.model.parameters()]
    batch = run.augment()
    assert batch.labeled.shape == (2, 3, 32, 32) and batch.weak.shape == batch.strong.shape == (6, 3, 32, 32)
    run()
    assert any(not torch.equal(a, b) for a, b in zip(before, run.trainer.model.parameters()))
    breakdown = _breakdown(run, 1)
    assert set(breakdown) == {"augmentation_ms", "forward_backward_ms", "optimizer_ema_ms"}
    assert all(value > 0 for value in breakdown.values())


def test_a_cpu_report_says_gpu_figures_were_not_measured(tmp_path):
    report = {"device": "CPU (x86_64, 2 cores)", "device_type": "cpu", "reduced": True, "torch": "2.13",
              "cpu_cores": 2, "load_average_1min": 0.5, "results": [{"config": "tiny", "settings": {}, "ratio": 2.0,
                                           "peers": {"steps_per_s": 1.5, "workers": 2},
                                           "suite": {"steps_per_s": 3.0, "speed_options": {},
                                                     "breakdown_ms": {"augmentation_ms": 10.0,
                                                                      "forward_backward_ms": 300.0,
                                                                      "optimizer_ema_ms": 1.25}}}]}
    write_report(report, tmp_path)
    markdown = (tmp_path / "throughput.md").read_text()
    assert "| tiny | 1.50 | 3.00 | 2.00x | 10.0 | 300.0 | 1.2 |" in markdown
    assert "host load average at start 0.50" in markdown
    assert "GPU figures: not measured" in markdown and "REDUCED" in markdown
    assert json.loads((tmp_path / "throughput.json").read_text())["gpu_figures"] == "not measured"
    assert render_markdown(report) == markdown
