"""trainer.init_device resolved without torch: whether a config may build its model without any
rank holding it whole (meta: on the meta device under FSDP2, inside deepspeed.zero.Init under
ZeRO-3), and which of eager or meta `auto` picks (read by validation, the Trainer and `memtrain
estimate`). What each choice does, and the materialisation itself: memtrain.engine.init_device.

"Full fp32 states" counts FULL_STATE_BYTES per parameter: fp32 weights, gradients and Adam's two
moments (Rajbhandari et al. 2020, "ZeRO", Section 3.1, with K = 8 for the fp32 moments and fp32
rather than fp16 weights and gradients).
"""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, as_enum
from memtrain.config.parallel_options import MetaBuild, parallel_option
from memtrain.config.schema import InitDevice

FULL_STATE_BYTES = 16  # fp32 weight + fp32 gradient + Adam's two fp32 moments, bytes per parameter
GIB = 2**30


def meta_refusal(cfg: DictConfig, has_initialiser: bool) -> Optional[str]:
    """Why `cfg` cannot build its model without any rank holding it whole (trainer.init_device=meta;
    a ConfigError message), or None when it can: FSDP2 (parallel=fsdp|hsdp, no pipeline) builds it
    on the meta device and materialises each rank's shards with the family's initialiser; ZeRO-3
    (parallel=zero3) builds it inside deepspeed.zero.Init, which runs the family's constructors."""
    name, build = cfg.parallel.name, parallel_option(cfg).meta_build
    if build is MetaBuild.NONE:
        return (f"trainer.init_device=meta builds a model that no rank holds whole, which parallel={name} cannot "
                "wrap (DDP and a single process hold the whole model on every rank, ZeRO-1/2 partition only the "
                "optimizer states and gradients of a model every rank holds, a model-parallel option splits a whole "
                "model); use parallel=fsdp, parallel=hsdp or parallel=zero3, or trainer.init_device=eager")
    if build is MetaBuild.FULLY_SHARD and cfg.parallel.pp != 1:
        return (f"trainer.init_device=meta materialises each rank's shards after FSDP2's fully_shard, but "
                f"parallel={name} with parallel.pp={cfg.parallel.pp} splits pipeline stages from the whole model; "
                "use parallel.pp=1 or trainer.init_device=eager")
    if build is MetaBuild.FULLY_SHARD and not has_initialiser:
        return (f"trainer.init_device=meta needs the model family's initialiser of materialised shards "
                f"(ModelSpec.init_weights), which model.arch={cfg.model.arch} does not have; use "
                "trainer.init_device=eager")
    return None


def choose_init_device(cfg: DictConfig, n_params: int, budget_bytes: float, has_initialiser: bool = True) -> InitDevice:
    """InitDevice.eager or InitDevice.meta for `cfg` (trainer.init_device resolved): `n_params` the model's
    parameter count, `budget_bytes` the memory the full fp32 states are compared with (used only
    by auto). Raises ConfigError (trainer.init_device, parallel.name) for meta where it cannot run."""
    choice = as_enum(cfg.trainer.get("init_device", "eager"), InitDevice)
    if choice is InitDevice.eager:
        return InitDevice.eager
    refusal = meta_refusal(cfg, has_initialiser)
    if choice is InitDevice.meta:
        if refusal is not None:
            raise ConfigError("trainer.init_device", refusal)
        return InitDevice.meta
    return InitDevice.meta if refusal is None and n_params * FULL_STATE_BYTES > budget_bytes else InitDevice.eager


def budget_bytes(cfg: DictConfig, device_bytes: float) -> float:
    """trainer.init_budget_gb (GiB) in bytes when set, else `device_bytes` (the device's memory)."""
    gb = cfg.trainer.get("init_budget_gb")
    return float(gb) * GIB if gb is not None else float(device_bytes)
