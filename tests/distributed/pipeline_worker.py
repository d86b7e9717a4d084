"""Pipeline-parallel worker: for each case (a set of Hydra overrides, separated by `--`), the
gradients of the first step, gathered whole from every pipeline stage, and the losses and gradient
norms of a few optimizer steps; rank 0 writes {case index: result} to OUT. One launch runs every
case, so the process group is made here once and each Trainer joins it.

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed/pipeline_worker.py OUT \
        COMMON_OVERRIDES -- CASE_1_OVERRIDES -- CASE_2_OVERRIDES ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from memtrain.config.loader import load_config
from memtrain.engine.trainer import Trainer
from tests.distributed.worker import full_grads


def first_step_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The gradients of step 0's micro-batches (as the trainer scales them), every rank's stages
    merged by parameter name (replicas along the data-parallel dimensions agree)."""
    micro = trainer.micro_batches()
    n = trainer._global_sum(sum(float(trainer.spec.num_targets(t)) for _, t in micro))
    for j, (x, y) in enumerate(micro):
        trainer.strategy.forward_backward(x, y, trainer.dims.dp / n, sync=j == len(micro) - 1)
    local = full_grads(trainer)  # FSDP shards gathered over the data-parallel ranks
    trainer.optimizer.zero_grad(set_to_none=True)
    everyone: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, local)
    return {name: g for grads in everyone for name, g in grads.items()}


def run_case(out_dir: Path, overrides: list[str]) -> dict:
    cfg = load_config(overrides)
    trainer = Trainer(cfg, out_dir / "run")
    try:
        grads = first_step_grads(trainer)
        records = trainer.fit()
        return {"grads": grads, "losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records]}
    finally:
        trainer.close()  # the group belongs to this script: closing leaves it alone


def main(out: str, args: list[str]) -> None:
    groups, current = [], []
    for a in args:
        if a == "--":
            groups.append(current)
            current = []
        else:
            current.append(a)
    groups.append(current)
    common, cases = groups[0], groups[1:]
    dist.init_process_group("gloo")
    try:
        results = {i: run_case(Path(out).parent / f"case{i}", common + case) for i, case in enumerate(cases)}
        if dist.get_rank() == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
