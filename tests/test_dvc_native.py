"""DVC-native behaviour, with real DVC: finished runs restored from the run-cache, every run's
metrics and curves declared, per-dataset dependencies, stage dependencies that cover what the
stage scripts import, and a committed lock that matches the code."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, dvc, git, repo_on_suite
from test_pipeline import MINI_SUITE

TRAINING_STAGES = ("train@digits_20-supervised-1", "train@digits_20-fixmatch_ra-1")


@pytest.fixture(scope="module")
def mini_repo(tmp_path_factory) -> tuple[Path, str]:
    """The miniature quick suite after `dvc repro aggregate`, and its results table."""
    repo = repo_on_suite(tmp_path_factory.mktemp("native"), "mini", MINI_SUITE)
    dvc(repo, "repro", "aggregate")
    return repo, (repo / "reports/results.csv").read_text()


def test_returning_to_a_parameter_set_restores_every_run_from_the_run_cache(mini_repo):
    repo, first_table = mini_repo
    other = dvc(repo, "exp", "run", "aggregate", "-S", "threshold=0.5")
    assert "Running stage 'train@digits_20-fixmatch_ra-1'" in other.stdout  # B trains
    back = dvc(repo, "exp", "run", "aggregate", "-S", "threshold=0.95")
    output = back.stdout + back.stderr
    assert "Stage 'train@digits_20-fixmatch_ra-1' is cached - skipping run, checking out outputs" in output
    assert "Stage 'train@digits_20-supervised-1' didn't change, skipping" in output  # no threshold in its params
    assert "Running stage 'train@" not in output  # every run, supervised included
    assert "error " not in output  # the trainer prints "<run>: error x %" whenever it runs
    assert (repo / "reports/results.csv").read_text() == first_table
    assert (repo / "models/digits_20-fixmatch_ra-1.pt").stat().st_size > 0  # the EMA weights came back too


LONGER_STEPS = 400  # stopped within a few steps of a checkpoint, well before its end (about 70 steps/s here: 6 s)
LONGER_SUITE = (MINI_SUITE.replace("steps: 24", f"steps: {LONGER_STEPS}").replace("eval_every: 8", "eval_every: 500")
                .replace("checkpoint_every: 16", "checkpoint_every: 8"))


def _trainers(run: str, checkpoints: Path) -> list[str]:
    """PIDs of this test's Python processes training ``run`` (those whose checkpoints go to its
    ``checkpoints``: never another session's trainer of the same run); not a ``/bin/sh -c`` that DVC
    may keep above one."""
    pattern = f"^[^ ]*python[^ ]* pipeline/train.py {run}"
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [pid for pid in found if _environment(pid).get("FIXMATCH_CHECKPOINTS") == str(checkpoints)]


def _environment(pid: str) -> dict[str, str]:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # it ended meanwhile
        return {}
    return dict(entry.decode(errors="replace").partition("=")[::2] for entry in entries if b"=" in entry)


def _wait_for_a_checkpoint(checkpoints: Path, run: str, since: float = 0.0) -> None:
    """Wait until ``run`` has a checkpoint written after ``since`` (a ``time.time()``)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(
            path.stat().st_mtime > since for path in checkpoints.glob(f"{run}-*/state.pt")):
        time.sleep(0.05)


def test_stopping_dvc_repro_stops_its_trainer_and_the_next_repro_resumes_it(tmp_path, monkeypatch):
    """SIGTERM to the dvc process alone: its trainer checkpoints and exits instead of running on orphaned.

    DVC runs a stage as ``$SHELL -c <cmd>``: dash (/bin/sh here) stays between dvc and the trainer, bash
    execs the trainer. The run is stopped once under each, then finishes: every logged step once."""
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("FIXMATCH_CHECKPOINTS", str(checkpoints))
    repo = repo_on_suite(tmp_path / "repo", "mini", LONGER_SUITE)
    for attempt, shell in enumerate(["/bin/sh", "/bin/bash"]):
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SHELL": shell}
        log_path, started = tmp_path / f"round{attempt}.log", time.time()
        with open(log_path, "w") as log:
            first = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train@digits_20-fixmatch_ra-1"],
                                     cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
            _wait_for_a_checkpoint(checkpoints, "digits_20-fixmatch_ra-1", since=started)
            assert _trainers("digits_20-fixmatch_ra-1", checkpoints), log_path.read_text()
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)
        deadline = time.monotonic() + 60
        while _trainers("digits_20-fixmatch_ra-1", checkpoints) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _trainers("digits_20-fixmatch_ra-1", checkpoints), f"the trainer outlived dvc under {shell}"
        assert "stopped by SIGTERM at step" in log_path.read_text()
        assert attempt == 0 or "digits_20-fixmatch_ra-1: resuming at step" in log_path.read_text()
    again = dvc(repo, "repro", "train@digits_20-fixmatch_ra-1")
    assert "digits_20-fixmatch_ra-1: resuming at step" in again.stdout, again.stdout
    rows = (repo / "results/digits_20-fixmatch_ra-1/curves/train/loss.tsv").read_text().splitlines()[1:]
    steps = [int(row.split("\t")[0]) for row in rows]
    assert steps == list(range(8, LONGER_STEPS + 1, 8))  # one row per logged step: none lost, none twice


def test_an_interrupted_temp_experiment_resumes_from_its_checkpoint_when_run_again(tmp_path, monkeypatch):
    """`dvc exp run --temp` trains in a throw-away copy of the repository: the checkpoint outlives it."""
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("FIXMATCH_CHECKPOINTS", str(checkpoints))
    repo = repo_on_suite(tmp_path / "repo", "mini", LONGER_SUITE)
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-S", "threshold=0.6", "train@digits_20-fixmatch_ra-1"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    first = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_a_checkpoint(checkpoints, "digits_20-fixmatch_ra-1")
    trainer = _trainers("digits_20-fixmatch_ra-1", checkpoints)
    assert trainer, first.communicate()[0]
    os.kill(int(trainer[0]), signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode != 0 and "stopped by SIGTERM at step" in output, output
    again = dvc(repo, "exp", "run", "--temp", "-S", "threshold=0.6", "train@digits_20-fixmatch_ra-1")
    resumed = [line for line in again.stdout.splitlines() if "digits_20-fixmatch_ra-1: resuming at step" in line]
    assert len(resumed) == 1 and int(resumed[0].split("step ")[1].split()[0]) > 0, again.stdout
    assert list(checkpoints.iterdir()) == []  # finished: its checkpoint folder is removed


def test_the_summary_is_the_metric_and_every_runs_record_and_curves_stay_at_hand(mini_repo):
    """`dvc metrics show` (and so `dvc exp show`) lists the summary; each run's fields are in
    reports/runs.json (`dvc metrics show reports/runs.json`) and its curves are DVC plots."""
    repo, _ = mini_repo
    metrics = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    files = {path for revision in metrics.values() for path in revision["data"]}
    assert "reports/summary.json" in files and not [path for path in files if path.startswith("results/")]
    runs = json.loads(dvc(repo, "metrics", "show", "reports/runs.json", "--json").stdout)
    records = next(iter(runs.values()))["data"]["reports/runs.json"]["data"]
    assert set(records) == {"digits_20-supervised-1", "digits_20-fixmatch_ra-1"}
    recorded = json.loads((repo / "results/digits_20-fixmatch_ra-1/metrics.json").read_text())
    assert records["digits_20-fixmatch_ra-1"] == {key: value for key, value in recorded.items() if value is not None}
    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    for run in ("digits_20-supervised-1", "digits_20-fixmatch_ra-1"):
        for series in ("eval/error", "eval/accuracy", "train/loss", "train/lr"):
            assert f"results/{run}/curves/{series}.tsv" in plots, (run, series, sorted(plots))
    for series in ("train/loss_u", "train/mask_rate"):  # pseudo-label accuracy: only once a mask is on
        assert f"results/digits_20-fixmatch_ra-1/curves/{series}.tsv" in plots
    points = plots["results/digits_20-fixmatch_ra-1/curves/eval/error.tsv"][0]["content"]["data"]["values"]
    assert [int(point["step"]) for point in points] == [8, 16, 24] and all("error" in point for point in points)


def test_dvc_exp_show_lists_what_experiments_sweep_not_dataset_facts_or_every_runs_fields(mini_repo):
    repo, _ = mini_repo
    columns = dvc(repo, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    assert not [column for column in columns if column.startswith("results/")]  # no per-run metrics
    facts = [column for column in columns if column.startswith("datasets.") and not column.endswith(".weight_decay")]
    assert not facts and "datasets.cifar100.weight_decay" in columns and "conf/datasets/digits.yaml" in columns
    assert {"threshold", "train.steps", "methods.fixmatch_ra.anchoring", "digits_20-fixmatch_ra"} <= set(columns)  # the summary
    # each method block's keys once (what experiments sweep: 12 of the 121 columns allowed before the methods
    # held their own hyper-parameters); the rest bounded: 258 when the dataset table and every run's fields were columns
    method_columns = [column for column in columns if column.startswith("methods.")]
    blocks = yaml.safe_load((repo / "params.yaml").read_text())["methods"]
    assert len(method_columns) == sum(len(block) for block in blocks.values()), method_columns
    assert len(columns) - len(method_columns) <= 121 - 12, len(columns)


def test_a_datasets_settings_change_only_its_own_stages_and_urls_are_not_params(mini_repo):
    """A weight decay (params) re-runs that dataset's training runs; a fact of the dataset table
    (conf/datasets/<name>.yaml) re-runs that dataset's preparation and training, and the cheap splits."""
    repo, _ = mini_repo
    params_file, table_file = repo / "params.yaml", repo / "conf/datasets/cifar100.yaml"
    original, table = params_file.read_text(), table_file.read_text()
    digits = repo / "conf/datasets/digits.yaml"
    digits_table = digits.read_text()
    before = set(json.loads(dvc(repo, "status", "--json").stdout))  # check: never run here (no baseline)
    try:
        params = yaml.safe_load(original)
        params["datasets"]["cifar100"]["weight_decay"] = 0.002
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        # validate reads the whole file (any edit re-checks it, in seconds); its output never changes
        assert set(json.loads(dvc(repo, "status", "--json").stdout)) == before | {"validate"}
        params["datasets"]["digits"]["weight_decay"] = 0.002
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        assert set(json.loads(dvc(repo, "status", "--json").stdout)) - before == {"validate", *TRAINING_STAGES}
        params_file.write_text(original)
        table_file.write_text(table.replace("translate: 4", "translate: 3"))
        changed = set(json.loads(dvc(repo, "status", "--json").stdout)) - before
        assert changed == {"validate", "split@digits_20-1"}  # the splits read the table: cheap, same output
        table_file.write_text(table)
        digits.write_text(digits_table.replace("translate: 2", "translate: 1"))
        changed = set(json.loads(dvc(repo, "status", "--json").stdout)) - before
        assert changed == {"validate", "prepare@digits", "split@digits_20-1", *TRAINING_STAGES}
    finally:
        params_file.write_text(original)
        table_file.write_text(table)
        digits.write_text(digits_table)
    assert "sources" in params and not {"datasets", "url", "md5"} & set(params["sources"])
    columns = dvc(repo, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    assert [c for c in columns if c.startswith("sources")] == [f"sources.{key}" for key in params["sources"]]
    assert not [c for c in columns if "url" in c or "md5" in c]


def test_a_bad_value_fails_while_params_are_composed_in_one_line_before_any_stage_runs(mini_repo):
    """The same line as `python pipeline/validate.py` prints, exit status 2, no DVC "unexpected error" footer."""
    repo, _ = mini_repo
    before = {path: path.read_bytes() for path in sorted(repo.glob("results/**/*.*")) + [repo / "params.yaml"]}
    suites = ", ".join(sorted(path.stem for path in (repo / "conf/suite").glob("*.yaml")))
    for override, message in (("threshold=1.5", "threshold = 1.5 (must be a number in [0.0, 1.0])"),
                              ("folds=[]", "folds = [] (must not be empty)"),
                              ("train.lr=inf", "train.lr = inf (must be a finite number in (0.0, inf))"),
                              ("suite=nope", f"suite = 'nope' (allowed: {suites})")):
        failed = dvc(repo, "exp", "run", "-S", override, check=False)
        assert (failed.returncode, failed.stdout, failed.stderr) == (2, "", f"error: invalid params: {message}\n")
    queued = dvc(repo, "exp", "run", "--queue", "-S", "train.steps=0", check=False)  # refused, not queued to fail later
    assert (queued.returncode, queued.stderr) == (2, "error: invalid params: train.steps = 0 (must be an integer in "
                                                     "[1, inf))\n")
    assert "No experiment tasks in the queue" in dvc(repo, "queue", "status").stdout
    assert {path: path.read_bytes() for path in before} == before  # no output lost, params.yaml untouched


def _imports(path: Path, module: str) -> set[str]:
    """Project modules that ``path`` (module name ``module``) imports, as dotted names."""
    found = set()
    package = module.rsplit(".", 1)[0] if not path.name == "__init__.py" else module
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("fixmatch_bench")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("fixmatch_bench"):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def _module_file(name: str) -> Path | None:
    base = REPO / "src" / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _project_files(script: Path) -> set[Path]:
    """Every project source file that ``script`` imports, followed transitively."""
    seen: set[Path] = set()
    queue = [(script, "__main__")]
    while queue:
        path, module = queue.pop()
        for name in _imports(path, module):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                prefix = ".".join(parts[:depth])
                file = _module_file(prefix)
                if file is not None and file not in seen:
                    seen.add(file)
                    queue.append((file, prefix))
    return seen


def test_each_stage_depends_on_every_project_module_its_script_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = next(word for word in body["cmd"].split() if word.startswith("pipeline/"))
        deps = [REPO / dep for dep in body["deps"] if "${" not in dep]
        assert REPO / script in deps, name
        for file in _project_files(REPO / script):
            if file.name == "__init__.py" and not file.read_text().strip():
                continue  # an empty package marker runs no code
            assert any(file == dep or dep in file.parents for dep in deps), f"{name}: {file.relative_to(REPO)}"


def test_one_training_stage_trains_every_run_and_supervised_runs_ignore_the_threshold():
    """Every run, supervised included, is a train@ stage; each depends on its own method's block, where the
    FixMatch methods hold the threshold, and not on the top-level threshold."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "supervised" not in stages and stages["train"]["foreach"] == "${runs}"
    training = stages["train"]["do"]
    assert training["params"] == ["train", "augment", "speed", "datasets.${item.0}", "methods.${item.1}"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "threshold" not in params["methods"]["supervised"] and params["methods"]["fixmatch_ra"]["threshold"] == 0.95


def test_a_fresh_copy_of_the_committed_files_has_no_changed_dependency_parameter_or_result(tmp_path):
    """What `dvc status` says on a fresh clone: code, params and git-tracked results match dvc.lock.
    DVC-cached outputs (data, models, the runs' metrics.json) are absent from a clone without a
    remote, and may be: a stage reports them deleted, and a folder it depends on that holds them
    (aggregate's results/) modified. A changed git-tracked file in that folder still shows, as a
    changed output of the stage that wrote it."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for file in filter(None, listed):
        if (REPO / file).is_file():
            (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / file, tmp_path / file)
    git(tmp_path, "init", "-q")
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    cached = {out["path"] for stage in lock.values() for out in stage.get("outs", [])
              if not (tmp_path / out["path"]).exists()}  # DVC-cached outputs (data, models): not in a clone
    problems = []
    for stage, changes in json.loads(dvc(tmp_path, "status", "--json").stdout).items():
        for change in changes:
            if not isinstance(change, dict):
                problems.append(f"{stage}: {change}")
                continue
            for kind in ("changed deps", "changed outs"):
                for path, status in change.get(kind, {}).items():
                    absent = any(out == path or out.startswith(path + "/") for out in cached)
                    holds_absent = kind == "changed deps" and any(out.startswith(path + "/") for out in cached)
                    if not ((status in ("deleted", "not in cache") and absent) or (status == "modified" and holds_absent)):
                        problems.append(f"{stage}: {kind} {path} {status}")
    assert not problems, "dvc.lock does not match the committed files; run `dvc repro`:\n" + "\n".join(problems)


def _workspace(repo: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file DVC or a stage could touch (everything but params.yaml and DVC's own state)."""
    return {str(path.relative_to(repo)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in repo.rglob("*") if path.is_file()
            and not path.relative_to(repo).parts[0] in (".git", ".dvc") and path.name != "params.yaml"}


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(threshold=1.5), "error: invalid params: threshold = 1.5 (must be a number in [0.0, 1.0])"),
    (lambda p: p["methods"]["fixmatch_ra"].update(threshold=1.5),
     "error: invalid params: methods.fixmatch_ra.threshold = 1.5 (must be a number in [0.0, 1.0])"),
    (lambda p: p.update(treshold=p.pop("threshold")), "error: invalid params: treshold = 0.95 (not a known key"),
    (lambda p: p["train"].update(steps=0), "train.steps = 0"),
    (lambda p: p["train"].update(lr=float("inf")), "error: invalid params: train.lr = inf (must be a finite number"),
])
def test_a_bad_hand_edited_params_file_stops_dvc_repro_before_any_output_is_touched(mini_repo, edit, message):
    repo, first_table = mini_repo
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    before = _workspace(repo)
    params = yaml.safe_load(original)
    edit(params)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        done = dvc(repo, "repro", check=False)
    finally:
        params_file.write_text(original)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and message in output, output
    assert "Running stage 'validate'" in output or "Running stage" not in output, output
    assert _workspace(repo) == before
    assert (repo / "reports/results.csv").read_text() == first_table


def test_switching_suites_offline_loses_nothing_and_the_readmes_command_brings_the_workspace_back(mini_repo, tmp_path,
                                                                                                  monkeypatch):
    """`dvc exp run -S suite=paper` without the datasets: DVC checks the workspace out for the paper
    pipeline and the download fails; unfinished runs' checkpoints (outside the workspace) are untouched,
    and the README's `git checkout params.yaml dvc.lock results reports data && dvc checkout` restores
    every output: the runs' metrics and curves from git, models and data from DVC's cache."""
    checkpoints = tmp_path / "checkpoints"
    unfinished = checkpoints / "digits_20-fixmatch_ra-1-0123456789abcdef" / "state.pt"
    unfinished.parent.mkdir(parents=True)
    unfinished.write_bytes(b"an interrupted run's state")
    monkeypatch.setenv("FIXMATCH_CHECKPOINTS", str(checkpoints))
    repo, _ = mini_repo  # last in this module: it commits the module's workspace
    dvc(repo, "repro", "aggregate")  # (the mini suite has no baseline to check against)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "quick suite ran")
    status = json.loads(dvc(repo, "status", "--json").stdout)
    outputs = sorted(path for folder in ("results", "models", "reports", "data/splits") for path in
                     (repo / folder).rglob("*") if path.is_file())
    before = {path: path.read_bytes() for path in outputs}
    empty = tmp_path / "no-mirror"
    empty.mkdir()
    switched = dvc(repo, "exp", "run", "-S", "suite=paper", "-S", f"sources.mirror={empty}", check=False)
    assert switched.returncode != 0 and "download" in switched.stdout + switched.stderr
    assert not all(path.exists() for path in outputs)  # the paper pipeline's checkout took them away
    git(repo, "checkout", "params.yaml", "dvc.lock", "results", "reports", "data")
    dvc(repo, "checkout")
    assert {path: path.read_bytes() for path in outputs} == before
    assert unfinished.read_bytes() == b"an interrupted run's state"
    assert json.loads(dvc(repo, "status", "--json").stdout) == status
