import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
REPO = Path(__file__).resolve().parents[1]


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real DVC CLI in ``repo`` (stage commands find this environment's python)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("FIXMATCH_MIRROR", None)
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)


def repo_on_suite(destination: Path, name: str, suite: str, files: dict[str, str] | None = None) -> Path:
    """The working tree's files (tracked and untracked, not ignored; no results or data) in a fresh
    git repo whose default suite is ``conf/suite/<name>.yaml`` = ``suite``, params composed from it;
    ``files`` (path: text) replace or add files before the commit."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for file in filter(None, listed):
        source = REPO / file
        if source.is_file() and not file.startswith(("results/", "data/")):
            (destination / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / file)
    (destination / f"conf/suite/{name}.yaml").write_text(suite)
    for path, text in (files or {}).items():
        (destination / path).write_text(text)
    config = destination / "conf/config.yaml"
    config.write_text(config.read_text().replace("  - suite: quick", f"  - suite: {name}"))
    subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.compose", "params.yaml"], cwd=destination, check=True)
    (destination / "dvc.lock").unlink(missing_ok=True)
    git(destination, "init", "-q")
    git(destination, "add", "-A")
    git(destination, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"{name} suite")
    return destination


def wait_for_lines(path: Path, count: int, timeout_s: float = 120.0) -> None:
    """Wait until a training curve file has more than ``count`` lines (training is under way)."""
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and len(path.read_text().splitlines()) > count) and time.monotonic() < deadline:
        time.sleep(0.05)


def digits_workspace(root: Path, train: dict) -> tuple[Path, dict]:
    """Prepared digits and the fold-1 split of 20 labels, as the pipeline makes them, plus the
    committed params with ``train`` overrides (also written to ``root/params.yaml``)."""
    from fixmatch_bench.core.params import validate_params
    from fixmatch_bench.data.digits import digits_arrays
    from fixmatch_bench.data.download import fetch, load_sources
    from fixmatch_bench.data.prepared import load_prepared, save_prepared
    from fixmatch_bench.data.splits import make_split, write_split

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    fetch(load_sources(REPO / "params.yaml", REPO / "conf/sources").files("digits")[0], root / "raw")
    facts = validate_params(params).datasets["digits"]  # params hold its weight decay, conf/datasets the facts
    save_prepared(root / "prepared/digits", "digits", 10, digits_arrays(root / "raw", facts.image_size, facts.test_size))
    write_split(make_split(load_prepared(root / "prepared/digits"), 20, 1), root / "splits/digits_20-1.json")
    params["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root, params


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the tests in reverse order: each must build what it needs (make test-isolation)")


def pytest_collection_modifyitems(config, items):
    """``--reverse`` reverses the order; ``cuda`` tests skip with the reason where no CUDA device exists."""
    import torch

    if config.getoption("--reverse"):
        items.reverse()

    if torch.cuda.is_available() or os.environ.get("FIXMATCH_CUDA_TESTS_DEVICE") == "cpu":  # a rehearsal on the CPU
        return
    skip = pytest.mark.skip(reason="no CUDA device (torch.cuda.is_available() is False): run by `make gpu-check` "
                                   "on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def pytest_runtest_setup(item):
    """Under `make gpu-check`, the cuda tests not started by the deadline are skipped as not run."""
    from fixmatch_bench.tools.gpu_check import DEADLINE_ENV

    deadline = os.environ.get(DEADLINE_ENV)
    if deadline and item.get_closest_marker("cuda") is not None and time.time() > float(deadline):
        pytest.skip("not run: gpu-check's time budget for the tests was spent (re-run with -k to run it)")


@pytest.fixture(autouse=True, scope="session")
def checkpoints_outside_home(tmp_path_factory):
    """Training in tests (and the DVC stages they start) checkpoints under a temporary root."""
    root = tmp_path_factory.mktemp("checkpoints")
    previous = os.environ.get("FIXMATCH_CHECKPOINTS")
    os.environ["FIXMATCH_CHECKPOINTS"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("FIXMATCH_CHECKPOINTS")
    else:
        os.environ["FIXMATCH_CHECKPOINTS"] = previous


@pytest.fixture
def params() -> dict:
    """The committed quick-suite params."""
    return yaml.safe_load((REPO / "params.yaml").read_text())
