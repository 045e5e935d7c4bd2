"""Strong-view throughput: per-image PIL reference vs batched tensor ops.

Run: ``uv run pytest benchmarks/bench_augment.py --benchmark-only -q -s``.
One unlabeled FixMatch batch (448 images, 3 x 32 x 32); the strong view
includes its own weak view and the cutout. Results (images/s from the fastest
round, which is the least disturbed by other load on a shared machine, and the
batched / reference ratio) are printed and stored in ``benchmark.extra_info``.
"""

from __future__ import annotations

import pytest
import torch

from fixmatch_bench.augment.augmenter import make_augmenter

BATCH, CHANNELS, SIZE = 448, 3, 32
KINDS = ("randaugment", "ctaugment")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_reference_rate: dict[str, float] = {}


def _images(device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (BATCH, CHANNELS, SIZE, SIZE), generator=generator, dtype=torch.uint8).to(device)


def _strong(kind: str, impl: str, device: str):
    augmenter = make_augmenter(kind, impl)
    images = _images(device)
    generator = torch.Generator(device=device).manual_seed(1)

    def run() -> torch.Tensor:
        out = augmenter.strong(images, generator)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up (CUDA context, cached tables)
    return run


def _record(benchmark, name: str) -> float:
    rate = BATCH / benchmark.stats.stats.min
    benchmark.extra_info["images_per_s"] = round(rate, 1)
    print(f"\n{name}: {rate:,.0f} images/s", end="")
    return rate


@pytest.mark.parametrize("kind", KINDS)
def test_reference_strong_cpu(benchmark, kind: str) -> None:
    benchmark.pedantic(_strong(kind, "reference", "cpu"), rounds=10, iterations=1)
    _reference_rate[kind] = _record(benchmark, f"{kind} reference cpu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_batched_strong(benchmark, kind: str, device: str) -> None:
    benchmark.pedantic(_strong(kind, "batched", device), rounds=20 if device == "cpu" else 50, iterations=1)
    rate = _record(benchmark, f"{kind} batched {device}")
    if kind in _reference_rate:
        ratio = rate / _reference_rate[kind]
        benchmark.extra_info["speedup_vs_reference_cpu"] = round(ratio, 2)
        print(f" ({ratio:.2f}x the per-image reference)", end="")
