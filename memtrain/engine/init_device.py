"""Where a model's parameters are first made (`trainer.init_device`): whole on every rank
(eager), or never whole on any rank (meta), so that FSDP2 or ZeRO-3 can hold a model whose full
states exceed one device's memory. Under FSDP2, meta builds on the meta device and materialises
shard by shard after the parallel wrapping (below); under DeepSpeed ZeRO-3 it builds inside
deepspeed.zero.Init, which partitions each module as it is built
(memtrain.engine.zero_strategy.build_partitioned: the eager build's weights, partitioned).

    eager  the model is built on trainer.device under trainer.seed on every rank, then
           model-parallelised and wrapped (torch's and the parity tests' reference: every layout
           starts from the same, bit-identical weights).
    meta   (FSDP2) the model is built on the meta device (shapes only), model-parallelised and sharded
           (fully_shard) there, then `to_empty` allocates only this rank's shards and the family's
           initialiser (ModelSpec.init_weights) fills them in place. A sharded parameter's local
           shard draws from its own generator, seeded from (trainer.seed, parameter name, the
           rank's coordinates on the mesh dimensions that shard it), so the ranks' shards differ
           and replicas (HSDP's dp_replicate, a tensor-parallel Replicate) agree without any
           communication. The weights have the same distribution as eager ones, not the same values.
           (torch's own DTensor RNG does not help on CPU/gloo: its offset-based tracker supports
           CUDA-like devices only, and elsewhere every rank draws the same values for its shard.)
    auto   meta only when the layout shards parameters (parallel=fsdp|hsdp with no pipeline, or
           parallel=zero3) and the model's full fp32 states would not fit the budget
           (trainer.init_budget_gb, else the device's memory); eager otherwise, so small models
           keep eager's weights.

The choice itself (refusals, auto's budget, the full fp32 states' bytes) is made without torch
in memtrain.config.init_device.
"""

from __future__ import annotations

import zlib
from typing import Callable, Optional

import torch
from torch import nn


def shard_generator(seed: int, name: str, tensor: torch.Tensor) -> Optional[torch.Generator]:
    """The generator that initialises `tensor` (parameter `name`): for a DTensor, a generator on
    its local shard's device seeded from (seed, name without activation-checkpoint wrappers, this
    rank's coordinates on the mesh dimensions its placements shard); None (the global RNG, as
    eager) for a plain tensor."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return None
    coords = tensor.device_mesh.get_coordinate() or []
    shards = [c for c, p in zip(coords, tensor.placements) if p.is_shard()]
    name = name.replace("_checkpoint_wrapped_module.", "")
    key = f"{seed}/{name}/{'.'.join(map(str, shards))}".encode()
    device = tensor.to_local().device
    return torch.Generator(device=device).manual_seed(zlib.crc32(key))


def materialize(model: nn.Module, device: torch.device, seed: int,
                init_weights: Callable[[nn.Module, Callable[[str, torch.Tensor], Optional[torch.Generator]]], None]) -> None:
    """Allocate `model`'s meta parameters and buffers on `device` (each rank's shards only, for
    DTensors) and initialise them in place with `init_weights(model, generator_for)`, where
    generator_for(name, tensor) gives the generator for that parameter (`shard_generator`). The
    initialiser must write every parameter and buffer: to_empty leaves uninitialised memory."""
    model.to_empty(device=device)
    with torch.no_grad():
        init_weights(model, lambda name, tensor: shard_generator(seed, name, tensor))
