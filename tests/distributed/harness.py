"""A multi-process test's own torchrun launch (most cases are batched instead: batch.py), with one
thread per worker and a timeout, since a collective skipped on one rank hangs the rest."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tests.conftest import REPO, run_bounded
from tests.distributed.batch import worker_env

HERE = Path(__file__).parent
WORKER = HERE / "worker.py"


def torchrun(nproc: int, script: Path, *args: str, timeout: float = 600) -> None:
    """`script` on `nproc` ranks; fails with the end of its output if it fails or outlives `timeout`
    (then it and its workers are ended)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *args]
    with tempfile.TemporaryFile("w+") as log:
        code = run_bounded(cmd, timeout, cwd=REPO, env=worker_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        log.seek(0)
        assert code == 0, f"{'stopped after %d s' % timeout if code is None else f'exit {code}'}:\n{log.read()[-4000:]}"


def torchrun_worker(nproc: int, out: Path, *overrides: str, timeout: float = 600) -> dict:
    """tests/distributed/worker.py on `nproc` ranks; what rank 0 saved to `out`."""
    torchrun(nproc, WORKER, str(out), *overrides, timeout=timeout)
    return torch.load(out, weights_only=True)
