"""A real Slurm cluster for these tests: the one SLURM_CONF (or /etc/slurm) names if it answers,
else a single-node cluster on this machine started by scripts/slurm/local_cluster.sh (installing
Slurm with apt-get where absent) and stopped, by PID, when the session ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "slurm" / "local_cluster.sh"


def _answers() -> bool:
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30).stdout.count("UP") > 0


@pytest.fixture(scope="session")
def slurm_cluster():
    if _answers():
        yield os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
        return
    if os.geteuid() != 0 and shutil.which("slurmctld") is None:
        pytest.skip("no Slurm cluster answers, and Slurm is not installed and cannot be (needs root)")
    folder = Path(tempfile.mkdtemp(prefix="memtrain-slurm-"))
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"Slurm cannot be installed here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = proc.stdout.strip().splitlines()[-1]
    try:
        yield os.environ["SLURM_CONF"]
    finally:
        # jobs left by a failed test would outlive the daemons: cancel them first (our own cluster)
        ids = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["scancel", *ids])
            wait_until(lambda: not subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                                                  text=True).stdout.split(), 90, "cancelled jobs to end")
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def job_state(job_id: str) -> str | None:
    """The job's state (PENDING, RUNNING, ...) while Slurm knows it; None once it is gone."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    fields = dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)
    return fields.get("JobState")


def job_fields(job_id: str) -> dict[str, str]:
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    return dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_done(job_id: str, timeout: float = 300) -> str:
    """Wait until the job has finished; its final state (COMPLETED, FAILED, ...)."""
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
    return wait_until(lambda: (s := job_state(job_id)) in done and s, timeout, f"job {job_id} to finish")
