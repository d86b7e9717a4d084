"""A worker for the multi-process tests (started by torch.distributed.run, or in-process for the
single-process reference): the gradients of the first step's micro-batches, then the losses and
gradient norms of a few optimizer steps, written by rank 0 to OUT.

    python tests/distributed/worker.py OUT [hydra overrides]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from memtrain.config.loader import load_config
from memtrain.engine.trainer import Trainer


def full_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in trainer.model.named_parameters():
        g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        name = name.replace("_checkpoint_wrapped_module.", "").removeprefix("module.")
        grads[name] = g.detach().float().cpu().clone()
    return grads


def zero_full_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    """DeepSpeed ZeRO: the reduced gradients, gathered whole from the ranks' partitions
    (a collective under ZeRO-3: every rank calls it)."""
    from deepspeed.utils import safe_get_full_grad

    grads = {}
    for name, p in trainer.model.module.named_parameters():
        name = name.replace("_checkpoint_wrapped_module.", "")
        grads[name] = safe_get_full_grad(p).detach().float().cpu().clone()
    return grads


def capture_first_step_grads(trainer: Trainer, grads: dict[str, torch.Tensor]) -> None:
    """ZeRO keeps reduced gradients in its own partitions, and zero_grad does not clear them all
    (ZeRO-2 with offload_optimizer keeps accumulating into its host buffers until the next
    step()), so a separate pass would leak into the first step; instead take them inside the
    first real step, after its last backward and before the update."""
    step = trainer.strategy.step

    def step_and_capture(lr: float):
        if not grads:
            grads.update(zero_full_grads(trainer))
        return step(lr)

    trainer.strategy.step = step_and_capture


def run(out: str, overrides: list[str]) -> dict:
    cfg = load_config(overrides)
    trainer = Trainer(cfg, Path(out).parent / "run")
    try:
        if cfg.parallel.name.startswith("zero"):
            grads: dict[str, torch.Tensor] = {}
            capture_first_step_grads(trainer, grads)
        else:
            micro = trainer.micro_batches()
            n = trainer._global_sum(sum(float(trainer.spec.num_targets(t)) for _, t in micro))
            for j, (x, y) in enumerate(micro):
                trainer.strategy.forward_backward(x, y, trainer.dims.dp / n, sync=j == len(micro) - 1)
            if trainer.mesh is not None and trainer.spec.reduce_gradients is not None:
                trainer.spec.reduce_gradients(trainer.strategy.module, trainer.mesh)  # e.g. DAP's partial sums
            grads = full_grads(trainer)
            trainer.optimizer.zero_grad(set_to_none=True)
        records = trainer.fit()
        result = {"grads": grads, "losses": [r["loss"] for r in records],
                  "grad_norms": [r["grad_norm"] for r in records]}
        if trainer.env.is_main:
            torch.save(result, out)
        return result
    finally:
        trainer.close()


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
    if dist.is_initialized():
        dist.destroy_process_group()
