"""A multi-process test's own torchrun launch (most cases are batched instead: batch.py), with one
thread per worker and a timeout, since a collective skipped on one rank hangs the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import REPO
from tests.distributed.batch import worker_env

HERE = Path(__file__).parent
WORKER = HERE / "worker.py"


def torchrun(nproc: int, script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=worker_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def torchrun_worker(nproc: int, out: Path, *overrides: str, timeout: float = 600) -> dict:
    """tests/distributed/worker.py on `nproc` ranks; what rank 0 saved to `out`."""
    torchrun(nproc, WORKER, str(out), *overrides, timeout=timeout)
    return torch.load(out, weights_only=True)
