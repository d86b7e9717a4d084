"""Pipeline parallelism through torch.distributed.pipelining: the model is split into stages by
its ModelSpec's `pipeline_fn`, each pipeline rank (the mesh's "pp" dimension) runs its stages,
and a schedule interleaves the forwards and backwards of the micro-batches. The loss is computed
on the last stage.

One trainer micro-batch (trainer.micro_batch_size samples) is split along the batch into
parallel.pp_microbatches pipeline micro-batches; gradient accumulation (trainer.grad_accum) runs
the schedule once per trainer micro-batch. The loss of every pipeline micro-batch is the model's
summed loss times the trainer's scale (data-parallel degree / targets of the whole step), so the
gradients are those of the plain run (the schedule's own 1/n_microbatches scaling is off).

Order of the wrappers: the model's own parallelism (spec.parallelize, applied by the trainer to the
whole model before the split; a tensor-parallel plan on mesh["tp"] composes there once pp x tp is
allowed), activation checkpointing, then FSDP2 over the data-parallel dimensions per stage, as
torchtitan does (TP -> activation checkpointing -> FSDP). The strategy that runs the schedules is
memtrain.engine.pipeline_strategy.PipelineStrategy.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from memtrain.config.pipeline_schedules import (  # noqa: F401  (re-exported)
    PIPELINE_OFFLOAD,
    PIPELINE_PARALLEL,
    SCHEDULES,
    ScheduleRule,
    stage_ids,
    validate_pipeline,
)


class RankModules(nn.Module):
    """The union of one rank's stage modules under the whole model's parameter names: what the
    optimizer updates and checkpoints save. Module dicts (blocks keyed by their global index)
    are merged; other children belong to one stage."""

    def __init__(self, stages: list[nn.Module]):
        super().__init__()
        for stage in stages:
            for name, child in stage.named_children():
                if isinstance(child, nn.ModuleDict):
                    if name not in self._modules:
                        self.add_module(name, nn.ModuleDict())
                    self._modules[name].update(child)
                else:
                    self.add_module(name, child)


def grad_norm(parameters: list[nn.Parameter], pp_group: dist.ProcessGroup) -> torch.Tensor:
    """The 2-norm of all gradients of the model: each rank's (DTensor shards gathered) squared
    norm, summed over the pipeline ranks."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    squared = norm.double() ** 2
    dist.all_reduce(squared, group=pp_group)
    return squared.sqrt().float()
