"""The training step for zeroth-order optimizers (optimizer=mezo): two forward passes under
torch.no_grad per step, no backward, no gradient reduction.

The loss closure evaluates this rank's micro-batches with the unwrapped module (no DDP hooks run)
and sums over the data-parallel ranks, normalised by the step's scored tokens, so every rank sees
the loss of the whole batch; with the same seed on every rank (derived from trainer.seed and the
step number, so it also survives a resume) the projected gradient, and thus the update, is the
same everywhere: the average over ranks of their projected gradients.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from memtrain.engine.step import MicroBatches, RankSums, StepResult, count_targets, to_device
from memtrain.models.spec import ModelSpec


def step_seed(base: int, step: int) -> int:
    """A distinct 63-bit seed per step, identical on every rank."""
    return (base * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)


class ZerothOrderStep:
    """A step function (memtrain.engine.step) for an optimizer with `zeroth_order = True` whose
    `step(closure, seed)` returns (loss, projected gradient) as Python floats (memtrain.optim.mezo).

    module: the unwrapped model; autocast: the precision's autocast context factory; sums: the
    reduction over ranks; seed: trainer.seed (each step's perturbation seed derives from it and the
    step number)."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, spec: ModelSpec,
                 autocast: Callable[[], contextlib.AbstractContextManager], sums: RankSums, seed: int,
                 device: torch.device):
        self.module, self.optimizer, self.spec, self.autocast = module, optimizer, spec, autocast
        self.sums, self.seed, self.device = sums, seed, device

    def __call__(self, micro: MicroBatches, step: int) -> StepResult:
        n_scored = self.sums.over_batch(count_targets(self.spec, micro, self.device))
        micro = [(to_device(x, self.device), to_device(y, self.device)) for x, y in micro]

        def closure() -> torch.Tensor:
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            with self.autocast():
                for inputs, targets in micro:
                    loss, _ = self.spec.loss_fn(self.module(inputs), targets)
                    total += loss.double()
            return self.sums.over_data_parallel(total) / n_scored  # ranks sharing data count once

        with torch.no_grad():
            loss, grad = self.optimizer.step(closure, seed=step_seed(self.seed, step))
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64, device=self.device)  # noqa: E731
        return StepResult(as_tensor(loss), as_tensor(abs(grad)), n_scored, not math.isfinite(grad))
