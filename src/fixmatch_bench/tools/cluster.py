"""The suite on a SLURM cluster: the run matrix fanned out as jobs, results back through DVC.

``python -m fixmatch_bench.tools.cluster submit [--root DIR] [--partition P] [--gpus-per-run N] [-- sbatch options]``
submits whatever suite params.yaml holds, at the committed HEAD:

1. one upstream job in this workspace: ``dvc repro split`` (downloads, prepared data, splits);
2. one job per training run, after it: ``dvc repro <stage>@<run>`` in the run's own git worktree
   (``<root>/worktrees/<run>``) whose DVC cache is this workspace's, so that a finished run lands
   in the shared cache and DVC's run-cache; requeueable, signalled ``--signal-before`` seconds
   before the time limit (the job then requeues itself), checkpoints in ``<root>/checkpoints``;
3. one final job after all of them, in this workspace: ``dvc repro`` with training switched off
   (``FIXMATCH_NO_TRAIN``), so every finished run is restored from the run-cache and a missing
   one fails its stage instead of training there; then the tables and the strict check, which
   reports incomplete cells and never passes them.

``status`` shows each run's job state and progress (steps done, from its curves). Submitting
again submits only the runs that `dvc status` lists here (missing, failed or out of date); a
run that finished in its job but was not yet restored comes back from the run-cache in seconds. ``<root>`` (default ``.cluster/``) must
be on storage that every node sees, as must the DVC cache; docs/multi_gpu.md has the procedure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import ParamsError
from ..core.params import load_params
from ..core.runs import Run, all_runs
from ..core.schema import Params
from ..core.stage import NO_TRAIN_ENV

ROOT = Path(".cluster")
SUBMISSION = "submission.json"
OUTPUTS = ("dvc.lock", "results", "reports", "data")  # what the final job writes here: may differ from HEAD


class ClusterError(RuntimeError):
    """A submission that cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class JobOptions:
    """What every job is given: the partition, resources and extra sbatch options."""

    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int = 1
    signal_before_s: int = 120
    extra: tuple[str, ...] = ()

    def common(self) -> list[str]:
        return ([f"--partition={self.partition}"] if self.partition else []) + list(self.extra)

    def run(self) -> list[str]:
        """A training job: requeueable, told before its time limit, its log appended to across requeues."""
        gpus = [f"--gres=gpu:{self.gpus_per_run}"] if self.gpus_per_run else []
        return [*self.common(), "--requeue", "--open-mode=append", f"--signal=B:USR1@{self.signal_before_s}",
                f"--cpus-per-task={self.cpus_per_run}", *gpus]


def stage_of(run: Run) -> str:
    return f"train@{run.key}"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _dvc_cache(repo: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=repo, check=True, capture_output=True,
                          text=True)
    return Path(done.stdout.strip()).resolve()


def _script(lines: Sequence[str]) -> str:
    return "#!/bin/bash\n" + "\n".join(lines) + "\n"


def _environment(workspace: Path, checkpoints: Path | None = None) -> list[str]:
    """A job's environment in ``workspace``: this checkout's virtualenv with the workspace's own code
    first on the path, one thread per allocated CPU, the runs' checkpoints on shared storage."""
    venv = Path(sys.executable).parent
    lines = [f"export PATH={shlex.quote(str(venv))}:$PATH",
             f"export PYTHONPATH={shlex.quote(str(workspace / 'src'))}${{PYTHONPATH:+:$PYTHONPATH}}",
             "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} DVC_NO_ANALYTICS=1"]
    if checkpoints is not None:
        lines.append(f"export FIXMATCH_CHECKPOINTS={shlex.quote(str(checkpoints))}")
    return [*lines, f"cd {shlex.quote(str(workspace))}"]


def run_script(worktree: Path, checkpoints: Path | None, run: Run, log: Path) -> str:
    """Train one run with ``dvc repro``; on USR1 (the time limit is near) requeue the job, whose
    SIGTERM makes the trainer checkpoint; the last line of a failed job is the stage's error."""
    return _script([
        *_environment(worktree, checkpoints),
        'trap \'echo "fixmatch-bench: time limit near, requeueing job $SLURM_JOB_ID"; '
        'scontrol requeue "$SLURM_JOB_ID"\' USR1',
        f"dvc repro {shlex.quote(stage_of(run))} &",
        "child=$! code=",
        'while [ -z "$code" ]; do',
        '  wait "$child"; status=$?',
        '  kill -0 "$child" 2>/dev/null || code=$status  # else wait returned for the trapped USR1: wait again',
        "done",
        'if [ "$code" -ne 0 ]; then',
        f"  echo \"fixmatch-bench: {run.key} failed (exit $code): "
        f"$(grep -a '^error: ' {shlex.quote(str(log))} | tail -n 1)\"",
        "fi",
        'exit "$code"',
    ])


def final_script(repo: Path) -> str:
    """Restore every finished run from DVC's run-cache (no training here), then tables and the strict check."""
    return _script([
        *_environment(repo),
        f"export {NO_TRAIN_ENV}=1",
        "dvc repro --keep-going; repro=$?",
        "if [ $repro -ne 0 ]; then python pipeline/aggregate.py; fi  # the tables, with the missing runs as incomplete",
        "python pipeline/check.py --strict",
    ])


def _sbatch(arguments: Sequence[str], script: Path, cwd: Path) -> str:
    done = subprocess.run(["sbatch", "--parsable", *arguments, str(script)], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"sbatch {' '.join(arguments)} {script} failed: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def _changed_stages(repo: Path) -> set[str]:
    """The stages `dvc status` lists in ``repo``: what is missing, failed or out of date."""
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"dvc status failed in {repo}: {done.stderr.strip()}")
    return set(json.loads(done.stdout or "{}"))


def _worktree(repo: Path, path: Path, commit: str, cache: Path) -> None:
    """``path`` at ``commit``, sharing this workspace's DVC cache (created once, moved on later submissions)."""
    if path.exists():
        _git(path, "checkout", "--quiet", "--force", "--detach", commit)
    else:
        _git(repo, "worktree", "add", "--quiet", "--detach", str(path), commit)
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "cache.dir", str(cache)], cwd=path, check=True,
                   capture_output=True)


def submit(repo: Path, root: Path, options: JobOptions) -> dict:
    """Submit the suite of ``repo``'s params.yaml at its HEAD; returns the submission record."""
    if _git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{out}" for out in OUTPUTS)):
        raise ClusterError("the workspace has uncommitted changes; the jobs train the committed HEAD: "
                           "commit (or stash) them and submit again")
    params = load_params(repo / "params.yaml")
    commit, cache = _git(repo, "rev-parse", "HEAD"), _dvc_cache(repo)
    root = root.resolve()
    for folder in ("worktrees", "jobs", "logs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    checkpoints = None if params.checkpoints.dir else root / "checkpoints"
    common = options.common()
    # Before the upstream job exists: once submitted it may start at once and hold DVC's lock on this workspace.
    changed = _changed_stages(repo)
    upstream_script = root / "jobs" / "upstream.sh"
    upstream_script.write_text(_script([*_environment(repo), "dvc repro split"]))
    upstream = _sbatch([*common, "--job-name=fixmatch-upstream", f"--output={root / 'logs' / 'upstream.log'}"],
                       upstream_script, repo)
    jobs, skipped = {}, []
    for run in all_runs(params):
        if stage_of(run) not in changed:  # recorded in this workspace's dvc.lock, outputs present
            skipped.append(run.key)
            continue
        worktree, log = root / "worktrees" / run.key, root / "logs" / f"{run.key}.log"
        _worktree(repo, worktree, commit, cache)
        script = root / "jobs" / f"{run.key}.sh"
        script.write_text(run_script(worktree, checkpoints, run, log))
        jobs[run.key] = _sbatch([*options.run(), f"--job-name={run.key}", f"--output={log}",
                                 f"--dependency=afterok:{upstream}"], script, repo)
    final_path = root / "jobs" / "final.sh"
    final_path.write_text(final_script(repo))
    after = f"--dependency=afterany:{':'.join([upstream, *jobs.values()])}"
    final = _sbatch([*common, "--job-name=fixmatch-final", f"--output={root / 'logs' / 'final.log'}", after],
                    final_path, repo)
    record = {"commit": commit, "upstream": upstream, "runs": jobs, "skipped": skipped, "final": final,
              "steps": params.train.steps}
    (root / SUBMISSION).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _job_state(job: str) -> str:
    done = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
    for field in done.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE (purged by slurmctld: see its log)"


def steps_done(worktree: Path, run_key: str) -> int:
    """The last logged step of a run in its worktree (its curves are rewritten from the checkpoint on resume)."""
    curve = worktree / "results" / run_key / "curves" / "train" / "lr.tsv"
    rows = curve.read_text().splitlines()[1:] if curve.exists() else []
    return int(rows[-1].split("\t")[0]) if rows else 0


def status(repo: Path, root: Path) -> list[dict]:
    """Each run's job, state and steps done, plus the upstream and final jobs."""
    path = root / SUBMISSION
    if not path.exists():
        raise ClusterError(f"no submission in {root}; submit first")
    record = json.loads(path.read_text())
    params: Params = load_params(repo / "params.yaml")
    rows = [{"job": record["upstream"], "name": "upstream (download, prepare, split)",
             "state": _job_state(record["upstream"])}]
    for run in all_runs(params):
        job = record["runs"].get(run.key)
        state = _job_state(job) if job else "DONE (up to date in this workspace, not resubmitted)"
        rows.append({"job": job or "-", "name": run.key, "state": state,
                     "steps": f"{steps_done(root / 'worktrees' / run.key, run.key)}/{record['steps']}"})
    rows.append({"job": record["final"], "name": "final (restore, tables, check)", "state": _job_state(record["final"])})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    submitting = commands.add_parser("submit", help="submit the suite in params.yaml at HEAD")
    submitting.add_argument("--partition")
    submitting.add_argument("--gpus-per-run", type=int, default=0, help="GPUs per training job (--gres=gpu:N)")
    submitting.add_argument("--cpus-per-run", type=int, default=1)
    submitting.add_argument("--signal-before", type=int, default=120, metavar="SECONDS",
                            help="requeue a training job this long before its time limit")
    submitting.add_argument("extra", nargs="*", help="sbatch options for every job, after --")
    following = commands.add_parser("status", help="each run's job state and progress")
    for sub in (submitting, following):
        sub.add_argument("--root", type=Path, default=ROOT, help="shared folder for worktrees, logs, checkpoints")
        sub.add_argument("--repo", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    try:
        if args.command == "submit":
            options = JobOptions(args.partition, args.gpus_per_run, args.cpus_per_run, args.signal_before,
                                 tuple(args.extra))
            record = submit(repo, args.root, options)
            print(f"upstream job {record['upstream']}; {len(record['runs'])} run jobs "
                  f"({', '.join(record['runs'].values()) or 'none'}); final job {record['final']}")
            if record["skipped"]:
                print(f"not submitted (up to date in this workspace): {', '.join(record['skipped'])}")
            print(f"follow: python -m fixmatch_bench.tools.cluster status --root {args.root}   (or squeue --me)")
        else:
            for row in status(repo, args.root.resolve()):
                print(f"{row['job']:>8}  {row['state']:<12}  {row.get('steps', ''):>13}  {row['name']}")
    except (ClusterError, ParamsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
