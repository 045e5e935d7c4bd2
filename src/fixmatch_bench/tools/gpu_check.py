"""``make gpu-check``: the CUDA path in one short run, summarised in ``reports/gpu_check.md``.

1. The ``cuda`` test set (``pytest -m cuda``, tests/test_cuda.py): the paper step
   for each network, augmentation and speed option, the batched augmentations on
   CUDA against CPU, resume, host synchronisation and peak memory. Each test
   records its figures as junit properties; tests are ordered by priority, and
   once the tests' share of the time budget is spent the rest are skipped as
   "not run" (``FIXMATCH_GPU_CHECK_DEADLINE``, tests/conftest.py).
2. The throughput benchmark (``fixmatch_bench.tools.bench``, quick timing) in the
   remaining budget: steps/s of the suite's pipeline and of the peers', the
   speed-option ladder, and the paper suite's projected GPU-hours. It writes
   ``reports/throughput.md`` and ``.json``.
3. The summary: device, torch / CUDA / cuDNN versions, every item with its
   result and figures, in ``reports/gpu_check.md`` and ``.json``, also printed.

Without a CUDA device every test is skipped with its reason, the benchmark is
not run, and the summary says so. Exit status 1 if anything failed.

CLI: ``python -m fixmatch_bench.tools.gpu_check [--out reports] [--budget-s 420]
[--tests-share 0.7] [-k EXPR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

DEADLINE_ENV = "FIXMATCH_GPU_CHECK_DEADLINE"  # time.time() after which the cuda tests skip themselves
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"


@dataclass
class Item:
    """One test of the cuda set: its outcome, the first line of why (failure, skip), its figures."""

    name: str
    outcome: str  # passed | failed | skipped
    seconds: float
    reason: str = ""
    figures: dict[str, str] = field(default_factory=dict)


def environment() -> dict[str, Any]:
    """Device, driver and library versions: what a figure was measured on."""
    facts: dict[str, Any] = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda,
                             "python": platform.python_version(), "host": platform.node(),
                             "cpu_cores": os.cpu_count()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        facts.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                     memory_gib=round(properties.total_memory / 2**30, 1),
                     capability=f"{properties.major}.{properties.minor}",
                     cudnn=torch.backends.cudnn.version(), driver=_driver_version())
    else:
        facts["device"] = NO_CUDA
    return facts


def _driver_version() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def read_junit(path: Path) -> list[Item]:
    """The items of a pytest ``--junitxml`` report, figures from ``record_property``."""
    items = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        outcome = {None: "passed", "failure": "failed", "error": "failed", "skipped": "skipped"}[
            None if problem is None else problem.tag]
        text = "" if problem is None else (problem.get("message") or problem.text or "")
        properties = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        items.append(Item(name=case.get("name", "?"), outcome=outcome, seconds=float(case.get("time", 0.0)),
                          reason=(text.strip().splitlines() or [""])[0][:400], figures=properties))
    return items


def run_tests(tests: Path, deadline: float, expression: str | None, junit: Path) -> list[Item]:
    """``pytest -m cuda`` in a process of its own (the GPU is free again for the benchmark after it)."""
    command = [sys.executable, "-m", "pytest", str(tests), "-m", "cuda", "-p", "no:cacheprovider", "-q", "-rfs",
               "--continue-on-collection-errors",
               f"--junitxml={junit}", "-o", "junit_family=xunit1"]
    if expression:
        command += ["-k", expression]
    # cuBLAS is deterministic only with a fixed workspace, set before it starts (the deterministic resume test).
    env = {**os.environ, DEADLINE_ENV: str(deadline), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    subprocess.run(command, env=env, check=False)
    return read_junit(junit) if junit.exists() else [Item("pytest", "failed", 0.0, "pytest wrote no report")]


def run_throughput(out: Path, seconds: float) -> dict[str, Any] | None:
    """The quick benchmark within ``seconds``; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from .bench import run_benchmark, write_report  # imports the whole training stack

    report = run_benchmark(torch.device("cuda"), quick=True, deadline=time.monotonic() + seconds)
    write_report(report, out)
    return report


def _throughput_lines(report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return ["Not run: " + NO_CUDA + "."]
    from ..report import gpu_hours

    lines = ["| configuration | protocol (fp32 eager) steps/s | suite's speed options steps/s | peers steps/s | "
             "suite / peers |", "|---|---|---|---|---|"]
    for row in report["results"]:
        def figure(name: str) -> str:
            entry = row.get(name)
            if not isinstance(entry, dict):
                return "—"
            return f"{entry['steps_per_s']:.2f}" if "steps_per_s" in entry else entry.get("skipped", "failed")
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "—"
        lines.append(f"| {row['config']} | {figure('protocol')} | {figure('suite')} | {figure('peers')} | {ratio} |")
    lines += [""] + gpu_hours.render(report["paper_suite"], report["device"])
    lines += ["", "The ladder of speed options and the per-phase breakdown: reports/throughput.md."]
    return lines


def render(facts: dict[str, Any], items: list[Item], throughput: dict[str, Any] | None, seconds: float) -> str:
    """The summary as markdown."""
    counts = {outcome: sum(item.outcome == outcome for item in items) for outcome in ("passed", "failed", "skipped")}
    versions = (f"torch {facts['torch']}, CUDA runtime {facts['cuda_runtime']}"
                + (f", cuDNN {facts['cudnn']}, driver {facts['driver']}, compute capability {facts['capability']}, "
                   f"{facts['memory_gib']} GiB" if "cudnn" in facts else ""))
    lines = ["# GPU check", "",
             f"Made by `make gpu-check` (`python -m fixmatch_bench.tools.gpu_check`) in {seconds:.0f} s.", "",
             f"- Device: {facts['device']}", f"- Software: {versions}; Python {facts['python']}",
             f"- Host: {facts['cpu_cores']} CPU cores",
             f"- CUDA tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped", "",
             "## CUDA tests (tests/test_cuda.py)", "", "| item | result | s | figures or reason |", "|---|---|---|---|"]
    for item in items:
        detail = "; ".join(f"{name} = {value}" for name, value in item.figures.items())
        detail = "; ".join(part for part in (detail, item.reason) if part).replace("|", "\\|")
        lines.append(f"| {item.name} | {item.outcome} | {item.seconds:.1f} | {detail} |")
    lines += ["", "## Throughput (quick timing)", ""] + _throughput_lines(throughput)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for gpu_check.md/.json and "
                        "throughput.md/.json")
    parser.add_argument("--tests", type=Path, default=Path("tests"), help="the test folder")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole check's time budget")
    parser.add_argument("--tests-share", type=float, default=0.7, help="the cuda tests' share of the budget")
    parser.add_argument("-k", dest="expression", help="only the cuda tests matching this pytest -k expression")
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    facts = environment()
    print(f"gpu-check on {facts['device']} (torch {facts['torch']}, CUDA {facts['cuda_runtime']})", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        items = run_tests(args.tests, time.time() + args.budget_s * args.tests_share, args.expression,
                          Path(scratch) / "cuda.xml")
    throughput = run_throughput(args.out, args.budget_s - (time.monotonic() - started))
    seconds = time.monotonic() - started
    text = render(facts, items, throughput, seconds)
    (args.out / "gpu_check.md").write_text(text)
    (args.out / "gpu_check.json").write_text(json.dumps(
        {"environment": facts, "seconds": seconds, "items": [asdict(item) for item in items],
         "paper_suite": throughput["paper_suite"] if throughput else None}, indent=2) + "\n")
    print(text, flush=True)
    return 1 if any(item.outcome == "failed" for item in items) else 0


if __name__ == "__main__":
    sys.exit(main())
