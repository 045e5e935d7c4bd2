"""`make gpu-check` where there is no GPU (its skip path), and its summary writer on a real junit report."""

import json
import subprocess
import sys
import textwrap

import torch

from conftest import REPO
from fixmatch_bench.tools.gpu_check import NO_CUDA, environment, read_junit, render


def test_without_a_gpu_every_cuda_test_is_skipped_with_its_reason_and_the_summary_says_so(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.gpu_check", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    collected = subprocess.run([sys.executable, "-m", "pytest", "tests", "-m", "cuda", "--collect-only", "-q",
                                "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=600)
    cuda_tests = [line for line in collected.stdout.splitlines() if "::" in line]
    assert len(summary["items"]) == len(cuda_tests) > 40
    assert all(item["outcome"] == "skipped" and "no CUDA device" in item["reason"] for item in summary["items"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert f"Device: {NO_CUDA}" in markdown and f"Not run: {NO_CUDA}." in markdown
    assert f"0 passed, 0 failed, {len(cuda_tests)} skipped" in markdown
    assert "test_the_paper_step_under_each_speed_option[WRN-28-8-CTA-+ compile: step]" in markdown
    assert not (tmp_path / "throughput.json").exists()  # no benchmark without a GPU
    assert markdown in done.stdout  # also printed


def test_the_summary_lists_each_outcome_with_its_figures_and_first_line_of_reason(tmp_path):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent('''
        import pytest

        def test_measures(record_property):
            record_property("peak MiB", "1,234")
            record_property("bit-exact", True)

        def test_breaks():
            assert 1 + 1 == 3, "arithmetic | broke"

        def test_waits():
            pytest.skip("not run: the time budget was spent")
        '''))
    subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_sample.py"), "-p", "no:cacheprovider",
                    f"--junitxml={tmp_path / 'report.xml'}", "-o", "junit_family=xunit1"], cwd=tmp_path,
                   capture_output=True, check=False)
    items = {item.name: item for item in read_junit(tmp_path / "report.xml")}
    assert {name: item.outcome for name, item in items.items()} == {
        "test_measures": "passed", "test_breaks": "failed", "test_waits": "skipped"}
    assert items["test_measures"].figures == {"peak MiB": "1,234", "bit-exact": "True"}
    assert "arithmetic | broke" in items["test_breaks"].reason and "\n" not in items["test_breaks"].reason
    assert items["test_waits"].reason == "not run: the time budget was spent"
    markdown = render(environment(), list(items.values()), None, 12.0)
    assert "| test_measures | passed |" in markdown and "peak MiB = 1,234; bit-exact = True" in markdown
    assert "| test_breaks | failed |" in markdown and "arithmetic \\| broke" in markdown  # the table survives
    assert "1 passed, 1 failed, 1 skipped" in markdown and f"torch {torch.__version__}" in markdown
