"""Stopping cleanly on a signal, in every run: Ctrl-C (SIGINT), SIGTERM (a local `kill`, or Slurm
ending a job) and SIGUSR1 (Slurm's warning before a time limit or a preemption, with
`#SBATCH --signal=USR1@N`).

While the training loop runs (`Preemption.catching()`), a signal only sets a flag; the loop asks
`Preemption.should_stop()` at every step boundary, which reduces the flag over all ranks (MAX), so
every rank finishes the same step, writes the checkpoint and stops, and no collective is skipped on
one rank. A second SIGINT exits at once (exit code 130) without a checkpoint, for a user who will
not wait; the previous checkpoint stays intact (memtrain.engine.checkpoint commits atomically).

Inside a Slurm job, `stopped()` also leaves a marker in the run directory: the batch script sees it
and requeues the job, and the requeued job resumes from the checkpoint (trainer.resume=auto).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
MARKER = "preempted"  # <run_dir>/slurm/preempted: the step at which the job stopped for a signal

_received: list[int] = []  # signal numbers received by this process (a signal is process-wide)


def _handler(signum: int, frame: object) -> None:
    if signum == signal.SIGINT and signal.SIGINT in _received:  # Ctrl-C twice: the user will not wait
        os.write(2, b"memtrain: interrupted twice: exiting now, without a checkpoint of this step\n")
        os._exit(128 + signum)
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


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def marker_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "slurm" / MARKER


def under_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ


class Preemption:
    """The training loop's view: `with catching():` around the loop, should_stop() at step
    boundaries, stopped() after the checkpoint. `enabled=False` never stops (and catches nothing).
    `group`: the ranks that stop together (the run's whole world); None or a one-rank group: this
    process alone, with no collective per step."""

    def __init__(self, device: torch.device, group: dist.ProcessGroup | None = None, enabled: bool = True):
        self.device, self.group, self.enabled = device, group, enabled

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        """Signal handlers installed for the duration (the previous ones restored afterwards)."""
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        install()
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def should_stop(self) -> bool:
        """True on every rank once any rank received a signal (a collective: call it on all ranks)."""
        if not self.enabled:
            return False
        flag = 1.0 if _received else 0.0
        if self.group is not None and dist.get_world_size(self.group) > 1:
            t = torch.tensor([flag], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
            flag = float(t)
        return flag > 0

    def stopped(self, run_dir: str | Path, step: int, is_main: bool) -> None:
        """Record, inside a Slurm job, that it stopped early at `step` with a checkpoint (rank 0
        writes the marker the batch script requeues on)."""
        if is_main and under_slurm():
            path = marker_path(run_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{step}\n")
