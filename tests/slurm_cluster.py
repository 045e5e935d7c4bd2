"""A real one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd from
Debian's packages (installed with apt when absent), configuration, state and logs in a temporary
folder, stopped by PID. Where that cannot be had, the tests that need it are skipped with the reason."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("sbatch", "squeue", "scontrol", "slurmctld", "slurmd", "munged")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ensure_installed() -> None:
    if all(shutil.which(name) for name in BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and apt-get cannot install it here (needs root and apt)")
    install = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge"
    done = subprocess.run(["bash", "-c", install], capture_output=True, text=True)
    if done.returncode != 0 or not all(shutil.which(name) for name in BINARIES):
        pytest.skip(f"apt-get could not install slurm-wlm and munge: {done.stderr.strip()[-300:]}")


@dataclass
class Cluster:
    folder: Path
    processes: list[subprocess.Popen]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf")}

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True)

    def state(self, job: str) -> str:
        fields = self.run("scontrol", "show", "job", "-o", job).stdout.split()
        return next((field.split("=", 1)[1] for field in fields if field.startswith("JobState=")), "GONE")

    def wait(self, jobs: list[str], timeout_s: float = 600) -> dict[str, str]:
        """Wait until every job ended; their final states."""
        deadline, ended = time.monotonic() + timeout_s, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "GONE",
                                                         "NODE_FAIL", "OUT_OF_MEMORY")
        while time.monotonic() < deadline:
            states = {job: self.state(job) for job in jobs}
            if all(state in ended for state in states.values()):
                return states
            time.sleep(0.25)
        raise AssertionError(f"jobs still running after {timeout_s} s: {states}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def start_cluster(folder: Path) -> Cluster:
    """Start munged, slurmctld and slurmd (foreground processes, so their PIDs are ours) on this host."""
    _ensure_installed()
    for sub in ("state", "spool", "log", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host, socket_path = socket.gethostname().split(".")[0], folder / "munge" / "munge.socket"
    (folder / "slurm.conf").write_text("\n".join([
        "ClusterName=fixmatchtest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        # cred_expire: how long a requeued job waits before it starts again (default 120 s)
        f"AuthInfo=socket={socket_path},cred_expire=5", "CredType=cred/munge",
        f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "SchedulerType=sched/backfill", "SchedulerParameters=bf_interval=1,sched_interval=1",  # schedule every second, not every 30-60 s
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "MpiDefault=none", "ReturnToService=2", "JobRequeue=1", "MinJobAge=3600",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    cluster = Cluster(folder, [])
    munge = [shutil.which("munged"), "--foreground", f"--key-file={key}", f"--socket={socket_path}",
             f"--pid-file={folder / 'munge' / 'munged.pid'}", f"--log-file={folder / 'munge' / 'munged.log'}",
             f"--seed-file={folder / 'munge' / 'munged.seed'}", "--force"]
    logs = open(folder / "log" / "daemons.out", "a")
    for command in (munge, ["slurmctld", "-D", "-f", str(folder / "slurm.conf")],
                    ["slurmd", "-D", "-f", str(folder / "slurm.conf")]):
        cluster.processes.append(subprocess.Popen(command, env=cluster.env, stdout=logs, stderr=subprocess.STDOUT))
        time.sleep(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "idle" in cluster.run("sinfo", "-h", "-o", "%t").stdout:
            return cluster
        time.sleep(0.5)
    cluster.stop()
    pytest.skip(f"the SLURM daemons did not bring the node up: {(folder / 'log' / 'daemons.out').read_text()[-500:]}")
