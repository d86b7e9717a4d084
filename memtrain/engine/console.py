"""What a training run prints around the loop: a start-up line saying what is being built, and a
final summary (steps, final loss, wall time, peak memory, the last checkpoint, the metrics file).
Only rank 0 prints; the other ranks of a multi-process job also leave Python warnings to rank 0,
so each warning shows once, not once per rank."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from memtrain.config.errors import as_enum
from memtrain.config.schema import Device


def is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def warnings_from_rank0_only() -> None:
    """In a worker of rank > 0, silence Python warnings (rank 0 shows the same ones)."""
    if not is_rank0():
        warnings.simplefilter("ignore")


def startup_line(cfg: DictConfig, choices: dict[str, str]) -> str:
    """`choices`: the option chosen per config group (Hydra's runtime.choices)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    picked = ", ".join(f"{g}={choices[g]}" for g in ("recipe", "model", "parallel", "precision", "optimizer",
                                                     "offload", "activation_checkpoint", "data") if choices.get(g))
    return (f"building {picked} on {world} rank{'s' if world > 1 else ''} "
            f"(trainer.device={as_enum(cfg.trainer.device, Device).name}); then {cfg.trainer.max_steps} steps")


def summary(records: list[dict[str, Any]], step: int, wall_s: float, run_dir: Path, checkpoint: Path | None) -> str:
    """The run's last words: steps, final loss, wall time, peak memory, checkpoint, metrics."""
    last = records[-1] if records else {}
    parts = [f"[bold green]done[/]: step {step}"]
    if "loss" in last:
        parts.append(f"final loss [cyan]{last['loss']:.4f}[/]")
    parts.append(f"wall time {wall_s:.1f} s")
    if last.get("peak_mem_bytes") is not None:
        parts.append(f"peak memory {last['peak_mem_bytes'] / 2**30:.2f} GiB")
    lines = ["; ".join(parts)]
    if checkpoint is not None:
        lines.append(f"  checkpoint [bold]{checkpoint}[/]")
    lines.append(f"  metrics    {run_dir / 'metrics.jsonl'}")
    return "\n".join(lines)


def print_startup(cfg: DictConfig, choices: dict[str, str], console: Console | None = None) -> None:
    if is_rank0():
        (console or Console()).print(startup_line(cfg, choices), highlight=False)
