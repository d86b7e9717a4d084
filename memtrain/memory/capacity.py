"""Refusing, before anything is allocated or launched, a run that this machine cannot hold.

`check_fits_here` compares memtrain's own estimate (memtrain.memory.estimator: exact model states,
activations within a few percent) with the memory of the device the run trains on and with the
host's RAM, and refuses a run whose estimate exceeds it, naming the key that dominates. It refuses
only what cannot fit: the estimate is a lower bound of what the run allocates at its peak (no
allocator slack, no framework workspace is counted). `check_launch_here` bounds the number of local
worker processes on a CPU.
"""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, as_enum
from memtrain.config.schema import Device
from memtrain.machine import host_memory_bytes
from memtrain.memory.report import human

GiB = 2**30


def _device_type(cfg: DictConfig) -> str:
    device = as_enum(cfg.trainer.device, Device)
    if device is Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.value  # a torch device type


def check_fits_here(cfg: DictConfig, local_ranks: int) -> None:
    """ConfigError when the estimated per-device bytes exceed the device's memory (CUDA), or the
    bytes of `local_ranks` ranks on this host exceed its RAM (a CPU run keeps everything there)."""
    from memtrain.memory.estimator import estimate

    est = estimate(cfg)
    device = _device_type(cfg)
    parts = (f"parameters {human(est.params)}, gradients {human(est.grads)}, optimizer states {human(est.optimizer)}, "
             f"activations {human(est.activations)}")
    key = "trainer.micro_batch_size" if est.activations >= est.params + est.grads + est.optimizer else "model"
    advice = ("reduce trainer.micro_batch_size or data.seq_len, use activation checkpointing (activation_checkpoint=full), "
              "or shard the model states (parallel=fsdp or zero*); `memtrain estimate` shows the table and "
              "`memtrain plan` finds a layout that fits")
    if device == "cuda":
        capacity = min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        if est.total > capacity:
            raise ConfigError(key, f"the run needs at least {human(est.total)} per GPU ({parts}), more than the "
                                   f"{human(capacity)} of this machine's GPUs; {advice}")
        host_need = est.host * local_ranks
    else:
        host_need = (est.total + est.host) * local_ranks
    capacity = host_memory_bytes()
    if host_need > capacity:
        where = "on the CPU" if device == "cpu" else "in host memory"
        raise ConfigError(key, f"{local_ranks} rank(s) need at least {human(host_need)} {where} ({parts} per rank), "
                               f"more than this machine's {human(capacity)} of RAM; {advice}")


def check_launch_here(cfg: DictConfig) -> None:
    """A CPU run starts at most max(8, 4 x cores) local worker processes."""
    per_node, cores = cfg.launcher.nproc_per_node, os.cpu_count() or 1
    if _device_type(cfg) == "cpu" and per_node > max(8, 4 * cores):
        raise ConfigError("launcher.nproc_per_node", f"{per_node} worker processes on this {cores}-core CPU; memtrain "
                                                     f"starts at most {max(8, 4 * cores)} here (4 per core)")
