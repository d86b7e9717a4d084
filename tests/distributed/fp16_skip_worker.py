"""fp16 under FSDP2: an inf in one rank's gradient shard makes every rank skip the update and
back off the loss scale. Rank 0 writes {rank: (skipped, changed, scale)} gathered from all ranks."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from memtrain.config.loader import load_config
from memtrain.engine.trainer import Trainer

trainer = Trainer(load_config(sys.argv[2:] + ["parallel=fsdp", "precision=fp16"]), "/tmp/memtrain-fp16-skip")
weight = next(p for n, p in trainer.model.named_parameters() if n.endswith("output.weight"))
before = weight.to_local().clone()
inputs, targets = trainer.micro_batches()[0]
trainer.strategy.forward_backward(inputs, targets, 1e-3, sync=True)
if trainer.env.rank == 1:
    weight.grad.to_local()[0, 0] = float("inf")
_, skipped = trainer.strategy.step(1e-3)
mine = (skipped, not torch.equal(before, weight.to_local()), trainer.precision.scaler.get_scale())
everyone = [None] * trainer.env.world_size
dist.all_gather_object(everyone, mine)
if trainer.env.is_main:
    torch.save({"results": everyone}, sys.argv[1])
trainer.close()
