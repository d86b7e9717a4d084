"""Starting multi-process tests: torchrun (torch.distributed.run --standalone) on a script, with
one thread per worker and a timeout, since a collective skipped on one rank hangs the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import REPO

HERE = Path(__file__).parent
WORKER = HERE / "worker.py"


def torchrun(nproc: int, script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # the repository root on the path, so worker scripts can share code through the tests package
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def torchrun_worker(nproc: int, out: Path, *overrides: str, timeout: float = 600) -> dict:
    """tests/distributed/worker.py on `nproc` ranks; what rank 0 saved to `out`."""
    torchrun(nproc, WORKER, str(out), *overrides, timeout=timeout)
    return torch.load(out, weights_only=True)
