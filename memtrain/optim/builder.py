"""Optimizer construction: the optimizer group's `_target_` instantiated over parameter groups."""

from __future__ import annotations

import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; norms' scales and biases (ndim < 2) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_supported(device_type: str) -> bool:
    """Whether torch has fused (single-kernel, multi-tensor) Adam/AdamW steps for this device type:
    CUDA, and the CPU since torch 2.4 (one vectorized, multithreaded pass over each parameter; see
    scripts/bench/optimizer_step.py for its time against the per-parameter loop)."""
    from torch.optim import optimizer as torch_optimizer

    supported = getattr(torch_optimizer, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    return device_type in supported()


def build_optimizer(ocfg: DictConfig, model: nn.Module, device_type: str) -> torch.optim.Optimizer:
    kwargs = OmegaConf.to_container(ocfg, resolve=True)
    if "fused" in kwargs and kwargs["fused"] is None:
        kwargs["fused"] = fused_supported(device_type)
    for key in ("betas", "eps", "adamw_names"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    factory = instantiate(OmegaConf.create(kwargs))
    build_groups = getattr(factory.func, "build_param_groups", None)  # e.g. Adam-mini's blocks
    if build_groups is not None:
        return factory(build_groups(model, ocfg.weight_decay, *[kwargs[k] for k in ("adamw_names",) if k in kwargs]))
    return factory(param_groups(model, ocfg.weight_decay))


def lr_at(step: int, base_lr: float, warmup: int, max_steps: int, schedule: str, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then constant, cosine or
    linear decay to base_lr * min_ratio at max_steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant" or max_steps <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return base_lr * (min_ratio + (1 - min_ratio) * decay)
