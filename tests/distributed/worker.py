"""A worker for the multi-process tests (started by torch.distributed.run, or in-process for the
single-process reference): the gradients of the first step's micro-batches, then the losses of a
few optimizer steps, written by rank 0 to OUT.

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


def run(out: str, overrides: list[str]) -> dict:
    cfg = load_config(overrides)
    trainer = Trainer(cfg, Path(out).parent / "run")
    try:
        micro = trainer.micro_batches()
        n = trainer._global_sum(sum(float((t != -100).sum()) for _, t in micro))
        for j, (x, y) in enumerate(micro):
            trainer.strategy.forward_backward(x, y, trainer.dims.dp / n, sync=j == len(micro) - 1)
        grads = full_grads(trainer) if not cfg.parallel.name.startswith("zero") else {}
        trainer.optimizer.zero_grad(set_to_none=True)
        losses = [r["loss"] for r in trainer.fit()]
        result = {"grads": grads, "losses": losses}
        if trainer.env.is_main:
            torch.save(result, out)
        return result
    finally:
        trainer.close()


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
    if dist.is_initialized():
        dist.destroy_process_group()
