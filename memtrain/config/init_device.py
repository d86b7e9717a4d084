"""trainer.init_device resolved without torch: whether a config may build its model on the meta
device, and which of eager or meta `auto` picks (read by validation, the Trainer and `memtrain
estimate`). What each choice does, and the materialisation itself: memtrain.engine.init_device.

"Full fp32 states" counts FULL_STATE_BYTES per parameter: fp32 weights, gradients and Adam's two
moments (Rajbhandari et al. 2020, "ZeRO", Section 3.1, with K = 8 for the fp32 moments and fp32
rather than fp16 weights and gradients).
"""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, as_enum
from memtrain.config.parallel_options import parallel_option
from memtrain.config.schema import InitDevice

FULL_STATE_BYTES = 16  # fp32 weight + fp32 gradient + Adam's two fp32 moments, bytes per parameter
GIB = 2**30


def meta_refusal(cfg: DictConfig, has_initialiser: bool) -> Optional[str]:
    """Why `cfg` cannot build on the meta device (a ConfigError message), or None when it can."""
    name, fsdp = cfg.parallel.name, parallel_option(cfg).fsdp
    if not fsdp or cfg.parallel.pp != 1:
        layout = f"parallel={name}" + (f" with parallel.pp={cfg.parallel.pp}" if fsdp else "")
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
