"""Stopping cleanly when the cluster asks: Slurm sends SIGUSR1 some time before a job's time limit
or a preemption (`#SBATCH --signal=USR1@N`), and SIGTERM when it ends a job.

A signal only sets a flag; the training loop asks `Preemption.should_stop()` at every step boundary,
which reduces the flag over all ranks (MAX), so every rank stops after the same step and no
collective is skipped on one rank. The loop then writes a checkpoint and calls `stopped()`, which
leaves a marker in the run directory: the Slurm batch script sees it and requeues the job, and the
requeued job resumes from the checkpoint (trainer.resume=auto).

Handlers are installed only inside a Slurm job (SLURM_JOB_ID set) or when asked explicitly, so a
local run keeps the default behaviour of SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
MARKER = "preempted"  # <run_dir>/slurm/preempted: the step at which the job stopped for a signal

_received: list[int] = []  # signal numbers received by this process (a signal is process-wide)


def _handler(signum: int, frame: object) -> None:
    _received.append(signum)


def install(signals: tuple[int, ...] = SIGNALS) -> bool:
    """Catch `signals` in this process (main thread only; idempotent). Returns whether installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in signals:
        if signal.getsignal(sig) is not _handler:
            signal.signal(sig, _handler)
    return True


def received() -> int | None:
    """The first signal this process received, if any."""
    return _received[0] if _received else None


def marker_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "slurm" / MARKER


class Preemption:
    """The training loop's view: should_stop() at step boundaries, stopped() after the checkpoint."""

    def __init__(self, device: torch.device, enabled: bool | None = None):
        self.device = device
        self.enabled = ("SLURM_JOB_ID" in os.environ) if enabled is None else enabled
        if self.enabled:
            install()

    def should_stop(self) -> bool:
        """True on every rank once any rank received a signal (a collective: call it on all ranks)."""
        if not self.enabled:
            return False
        flag = 1.0 if _received else 0.0
        if dist.is_initialized():
            t = torch.tensor([flag], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = float(t)
        return flag > 0

    def stopped(self, run_dir: str | Path, step: int, is_main: bool) -> None:
        """Record that the job stopped early at `step` with a checkpoint (rank 0 writes the marker)."""
        if is_main:
            path = marker_path(run_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{step}\n")
