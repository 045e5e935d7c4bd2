"""A researcher's own method, written as the README shows it: one module outside the package, one conf
entry, trained by the same stages and tabulated beside FixMatch; a bad declaration refused in one line."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, dvc, repo_on_suite
from test_pipeline import MINI_SUITE


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## Your own method"):].split("\n## ", 1)[0]


def _readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _readme_section(), flags=re.S)


def _own_package(root: Path) -> Path:
    """The README's module, written where its first line says, in a folder outside src/."""
    code = _readme_blocks("python")[0]
    path = root / code.splitlines()[0].removeprefix("# ").split(":")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    return root


def _suite_with(method_entry: str) -> str:
    """The miniature suite with the README's conf entry under methods and the method in ssl_methods."""
    name = method_entry.strip().split(":")[0]
    return (MINI_SUITE.replace("ssl_methods: [fixmatch_ra]", f"ssl_methods: [fixmatch_ra, {name}]")
            + "methods:\n" + "".join(f"  {line.strip()}\n" for line in method_entry.strip().splitlines()))


def _readme_entry() -> str:
    """The README's conf entry, ``<name>: {impl: ..., ...}``."""
    return [line for line in _readme_blocks("yaml")[0].splitlines() if line and not line.startswith("#")][0]


def test_the_readme_method_is_trained_by_the_same_stages_and_tabulated_beside_fixmatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(_own_package(tmp_path / "own")))  # as the README's command sets it
    entry = _readme_entry()
    name = entry.strip().split(":")[0]
    repo = repo_on_suite(tmp_path / "repo", "mini", _suite_with(entry))
    done = dvc(repo, "repro", "aggregate")
    assert f"Running stage 'train@digits_20-{name}-1'" in done.stdout
    with open(repo / "reports/results.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"supervised", "fixmatch_ra", name}
    assert rows[name]["folds_done"] == "1" and 0.0 <= float(rows[name]["mean"]) <= 100.0
    assert f"| {name} |" in (repo / "reports/results.md").read_text()
    curve = (repo / f"results/digits_20-{name}-1/curves/train/loss_u.tsv").read_text().splitlines()
    assert curve[0].split("\t")[0] == "step" and len(curve) > 1  # its unlabeled loss is plotted with the others


@pytest.mark.parametrize("edit, message", [
    (lambda code: code.replace('views = ("weak",)', 'views = ("weak", "medium")'),
     "= 'medium' (allowed: weak, strong)"),
    (lambda code: code, "weight = None (missing)"),
])
def test_a_method_that_declares_something_invalid_is_refused_in_one_line_before_any_work(tmp_path, edit, message):
    own = _own_package(tmp_path / "own")
    module = next(own.rglob("*.py"))
    module.write_text(edit(module.read_text()))
    entry = _readme_entry()
    if "missing" in message:
        entry = re.sub(r",\s*weight:[^}]*", "", entry)
    conf = tmp_path / "conf"
    subprocess.run(["cp", "-r", str(REPO / "conf"), str(conf)], check=True)
    (conf / "suite/mini.yaml").write_text(_suite_with(entry))
    done = subprocess.run([sys.executable, "-m", "fixmatch_bench.tools.compose", "params.yaml", "suite=mini"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(own)})
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid params: methods.") and message in lines[0], lines
    assert not (tmp_path / "params.yaml").exists()
