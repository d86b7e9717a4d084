"""Where a model's parameters are first made (`trainer.init_device`): whole on every rank
(eager), or on the meta device and materialised shard by shard after the parallel wrapping
(meta), so that FSDP2 can hold a model whose full states exceed one device's memory.

    eager  the model is built on trainer.device under trainer.seed on every rank, then
           model-parallelised and wrapped (torch's and the parity tests' reference: every layout
           starts from the same, bit-identical weights).
    meta   the model is built on the meta device (shapes only), model-parallelised and sharded
           (fully_shard) there, then `to_empty` allocates only this rank's shards and the family's
           initialiser (ModelSpec.init_weights) fills them in place. A sharded parameter's local
           shard draws from its own generator, seeded from (trainer.seed, parameter name, the
           rank's coordinates on the mesh dimensions that shard it), so the ranks' shards differ
           and replicas (HSDP's dp_replicate, a tensor-parallel Replicate) agree without any
           communication. The weights have the same distribution as eager ones, not the same values.
           (torch's own DTensor RNG does not help on CPU/gloo: its offset-based tracker supports
           CUDA-like devices only, and elsewhere every rank draws the same values for its shard.)
    auto   meta only when the layout shards parameters (parallel=fsdp|hsdp, no pipeline) and the
           model's full fp32 states would not fit the budget (trainer.init_budget_gb, else the
           device's memory); eager otherwise, so small models keep eager's weights.

"Full fp32 states" counts FULL_STATE_BYTES per parameter: fp32 weights, gradients and Adam's two
moments (Rajbhandari et al. 2020, "ZeRO", Section 3.1, with K = 8 for the fp32 moments and fp32
rather than fp16 weights and gradients).

This module imports no torch at the top: `memtrain estimate` reads `choose_init_device`.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Callable, Optional

from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, enum_names

if TYPE_CHECKING:
    import torch
    from torch import nn

FULL_STATE_BYTES = 16  # fp32 weight + fp32 gradient + Adam's two fp32 moments, bytes per parameter
META_PARALLEL = ("fsdp", "hsdp")  # the parallel options whose wrapping (fully_shard) runs on the meta device
GIB = 2**30


def meta_refusal(cfg: DictConfig, has_initialiser: bool) -> Optional[str]:
    """Why `cfg` cannot build on the meta device (a ConfigError message), or None when it can."""
    name = cfg.parallel.name
    if name not in META_PARALLEL or cfg.parallel.pp != 1:
        layout = f"parallel={name}" + (f" with parallel.pp={cfg.parallel.pp}" if name in META_PARALLEL else "")
        return (f"trainer.init_device=meta builds the model on the meta device and materialises only each rank's "
                f"shards after FSDP2's fully_shard, which {layout} does not apply (DDP and a single process hold "
                "the whole model on every rank, pipeline stages are split from the whole model, DeepSpeed ZeRO "
                "partitions a model it is given whole); use parallel=fsdp or parallel=hsdp (parallel.pp=1), or "
                "trainer.init_device=eager")
    if not has_initialiser:
        return (f"trainer.init_device=meta needs the model family's initialiser of materialised shards "
                f"(ModelSpec.init_weights), which model.arch={cfg.model.arch} does not have; use "
                "trainer.init_device=eager")
    return None


def choose_init_device(cfg: DictConfig, n_params: int, budget_bytes: float, has_initialiser: bool = True) -> str:
    """"eager" or "meta" for `cfg` (trainer.init_device resolved): `n_params` the model's
    parameter count, `budget_bytes` the memory the full fp32 states are compared with (used only
    by auto). Raises ConfigError (trainer.init_device, parallel.name) for meta where it cannot run."""
    choice = enum_names(cfg.trainer.get("init_device", "eager"))
    if choice == "eager":
        return "eager"
    refusal = meta_refusal(cfg, has_initialiser)
    if choice == "meta":
        if refusal is not None:
            raise ConfigError("trainer.init_device", refusal)
        return "meta"
    return "meta" if refusal is None and n_params * FULL_STATE_BYTES > budget_bytes else "eager"


def budget_bytes(cfg: DictConfig, device_bytes: float) -> float:
    """trainer.init_budget_gb (GiB) in bytes when set, else `device_bytes` (the device's memory)."""
    gb = cfg.trainer.get("init_budget_gb")
    return float(gb) * GIB if gb is not None else float(device_bytes)


def device_memory_bytes(device: "torch.device") -> int:
    """The memory of `device`: a CUDA device's total memory, or the host's physical memory for the CPU."""
    import os

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def shard_generator(seed: int, name: str, tensor: "torch.Tensor") -> Optional["torch.Generator"]:
    """The generator that initialises `tensor` (parameter `name`): for a DTensor, a generator on
    its local shard's device seeded from (seed, name without activation-checkpoint wrappers, this
    rank's coordinates on the mesh dimensions its placements shard); None (the global RNG, as
    eager) for a plain tensor."""
    import torch
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return None
    coords = tensor.device_mesh.get_coordinate() or []
    shards = [c for c, p in zip(coords, tensor.placements) if p.is_shard()]
    name = name.replace("_checkpoint_wrapped_module.", "")
    key = f"{seed}/{name}/{'.'.join(map(str, shards))}".encode()
    device = tensor.to_local().device
    return torch.Generator(device=device).manual_seed(zlib.crc32(key))


def materialize(model: "nn.Module", device: "torch.device", seed: int,
                init_weights: Callable[["nn.Module", Callable[[str, "torch.Tensor"], Optional["torch.Generator"]]], None]) -> None:
    """Allocate `model`'s meta parameters and buffers on `device` (each rank's shards only, for
    DTensors) and initialise them in place with `init_weights(model, generator_for)`, where
    generator_for(name, tensor) gives the generator for that parameter (`shard_generator`).
    Raises RuntimeError when a parameter or buffer is still on the meta device afterwards (the
    family's initialiser left it unset)."""
    import torch

    model.to_empty(device=device)
    with torch.no_grad():
        init_weights(model, lambda name, tensor: shard_generator(seed, name, tensor))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"still on the meta device after materialising: {left[:5]}")
