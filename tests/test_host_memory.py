"""keep_freed_memory: a training step's freed buffers are reused instead of faulted in again (counted, not timed)."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

# Forward + backward of the quick suite's network on 128 digits-sized images, in a fresh process: print
# whether the thresholds were set and the minor page faults per step after two warm-up steps.
STEPS = """
import resource, sys, torch
from fixmatch_bench.train.host_memory import keep_freed_memory
from fixmatch_bench.models.wide_resnet import WideResNet
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
model = WideResNet(num_classes=10, in_channels=1, filters=16, scales=2, repeat=1, bn_momentum=0.01)
images = torch.randn(128, 1, 16, 16)
for _ in range(2):
    model(images).sum().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    model(images).sum().backward()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_step(mode: str, env: dict | None = None) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], env={**os.environ, **(env or {})},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", float(out[1])


def test_kept_memory_makes_a_step_fault_a_tenth_as_often_or_less() -> None:
    """Measured with glibc 2.36: about 4,000 faults a step by default, about 150 with the thresholds fixed."""
    kept, faults = _faults_per_step("keep")
    default_kept, default_faults = _faults_per_step("default")
    assert kept and not default_kept
    assert faults < 0.1 * default_faults


def test_the_users_own_malloc_settings_are_left_alone() -> None:
    kept, _ = _faults_per_step("keep", {"MALLOC_TRIM_THRESHOLD_": "4096"})
    assert not kept
