"""Every test passes on its own and in any order (`make test-isolation`).

Runs each test file alone, then a few single tests of the files whose tests share module
fixtures, each alone, then the whole suite in reverse order. Prints one line per run and
exits 1 if any failed. Not a pytest module: a script that starts pytest in fresh processes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Single tests of files whose tests share a module fixture (a repository, a trained run).
SINGLE_TESTS = (
    "test_pipeline.py::test_an_ablation_variant_is_its_own_stage_and_computes_what_the_changed_param_computes",
    "test_pipeline.py::test_a_regressed_experiment_is_kept_with_its_failing_verdict",
    "test_dvc_native.py::test_a_datasets_settings_change_only_its_own_stages_and_urls_are_not_params",
    "test_trainer.py::test_a_finished_run_is_removed_unless_kept_and_a_finished_checkpoint_rewrites_the_outputs",
    "test_speed.py::test_channels_last_training_follows_the_reference_trajectory",
    "test_quick_check.py::test_the_check_stage_fails_when_fixmatch_loses_its_unlabeled_loss",
)


def _pytest(*args: str) -> tuple[str, bool, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=TESTS.parent, capture_output=True, text=True)
    passed = done.returncode in (0, 5)  # 5: every test deselected or skipped
    if not passed:
        print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return " ".join(args), passed, time.monotonic() - started


def main() -> int:
    started = time.monotonic()
    files = sorted(f"tests/{path.name}" for path in TESTS.glob("test_*.py"))
    singles = [f"tests/{test}" for test in SINGLE_TESTS]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time, as make test's two workers
        runs = list(pool.map(lambda target: _pytest(target), files + singles))
    runs.append(_pytest("-n", "2", "--dist", "loadfile", "--reverse", "tests"))
    for target, passed, seconds in runs:
        print(f"{'pass' if passed else 'FAIL'}  {seconds:6.0f} s  {target}")
    failed = [target for target, passed, _ in runs if not passed]
    print(f"{len(runs) - len(failed)} of {len(runs)} runs passed in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
