"""The benchmark files are named bench_*.py (pytest-benchmark), not test_*.py: collect them
here, so that `pytest benchmarks` (`make bench`) finds them without extra flags."""

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
