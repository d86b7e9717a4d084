"""The one path from a built model to a trained one's wrapping, in a fixed order, called once by
the trainer (torchtitan's order):

    precision swaps (QAT, FP8)  ->  the family's fused loss head  ->  model parallelism (the family's
    `parallelize`: TP/SP, DAP, spatial)  ->  activation checkpointing  ->  regional compilation
    (trainer.compile)  ->  the data-parallel wrap and optimizer (the strategy: DDP / FSDP2 / HSDP,
    DeepSpeed ZeRO, or pipeline stages each wrapped on their own)

Each step only reads the config and the family's ModelSpec; none branches on a model family or an
option name (memtrain.config.parallel_options says what an option does)."""

from __future__ import annotations

from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from memtrain.config.parallel import ParallelDims
from memtrain.engine.strategy import Strategy, build_strategy
from memtrain.models.activation_checkpoint import apply_activation_checkpointing
from memtrain.models.spec import ModelSpec
from memtrain.precision.amp import Precision
from memtrain.precision.transforms import apply_precision_transforms


def parallelize(model: nn.Module, cfg: DictConfig, spec: ModelSpec, mesh: DeviceMesh, dims: ParallelDims,
                precision: Precision, device: torch.device,
                materialize: Callable[[nn.Module], None] | None = None) -> Strategy:
    """Wrap `model` (built, cast to the parameter dtype; on the meta device when `materialize` is
    given, which the strategy calls after sharding) for training under `cfg` on `mesh` (every
    dimension named, all of size 1 on one rank), whose degrees `dims` are. Returns the strategy,
    which owns the wrapped model and the optimizer."""
    apply_precision_transforms(model, cfg.precision, spec, device)  # QAT / FP8 module swaps
    if spec.loss_head is not None:
        spec.loss_head(model, cfg)  # e.g. the decoder's fused, chunked linear cross entropy
    if spec.parallelize is not None:
        spec.parallelize(model, mesh, cfg)  # model parallelism before checkpointing and data parallelism
    apply_activation_checkpointing(model, cfg.activation_checkpoint, spec)
    if cfg.trainer.get("compile", False):  # validation refuses it where a strategy would not keep it
        from memtrain.engine.fast_path import compile_blocks

        compile_blocks(spec.blocks(model))
    return build_strategy(cfg, model, spec, mesh, dims, precision, device, materialize=materialize)
