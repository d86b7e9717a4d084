"""The training step for zeroth-order optimizers (optimizer=mezo): two forward passes under
torch.no_grad per step, no backward, no gradient reduction.

The loss closure evaluates this rank's micro-batches with the unwrapped module (no DDP hooks run)
and sums over the data-parallel ranks, normalised by the step's scored tokens, so every rank sees
the loss of the whole batch; with the same seed on every rank (derived from trainer.seed and the
step number, so it also survives a resume) the projected gradient, and thus the update, is the
same everywhere: the average over ranks of their projected gradients.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from memtrain.engine.trainer import StepResult, Trainer


def step_seed(base: int, step: int) -> int:
    """A distinct 63-bit seed per step, identical on every rank."""
    return (base * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)


def zeroth_order_step(trainer: Trainer) -> StepResult:
    from memtrain.engine.trainer import StepResult, to_device

    micro = [(to_device(x, trainer.device), to_device(y, trainer.device)) for x, y in trainer.micro_batches()]
    n_scored = trainer._global_sum(sum(float(trainer.spec.num_targets(t)) for _, t in micro))
    module = trainer.strategy.module

    def closure() -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=trainer.device)
        with trainer.precision.autocast():
            for inputs, targets in micro:
                loss, _ = trainer.spec.loss_fn(module(inputs), targets)
                total += loss.double()
        if dist.is_initialized():
            dist.all_reduce(total)
            total *= trainer.dims.dp / trainer.env.world_size  # ranks sharing data count once
        return total / n_scored

    for group in trainer.optimizer.param_groups:
        group["lr"] = trainer.lr
    with torch.no_grad():
        loss, grad = trainer.optimizer.step(closure, seed=step_seed(trainer.tcfg.seed, trainer.step))
    skipped = not math.isfinite(grad)
    trainer.count_step(skipped)
    return StepResult(loss, abs(grad), int(n_scored), skipped)
