"""Optimizer construction: the optimizer group's `_target_` instantiated over parameter groups;
the learning-rate schedule (lr_at) and the scheduler object that applies it (WarmupDecayLR)."""

from __future__ import annotations

import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from memtrain.config.errors import as_enum
from memtrain.config.schema import LRSchedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; norms' scales and biases (ndim < 2) are not decayed. A
    parameter DeepSpeed's zero.Init has already partitioned (an empty placeholder) counts by its
    whole shape (its ds_shape)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
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


def lr_at(step: int, base_lr: float, warmup: int, max_steps: int, schedule: LRSchedule | str, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then constant, cosine or
    linear decay (`schedule`, an LRSchedule or its name) to base_lr * min_ratio at max_steps."""
    schedule = as_enum(schedule, LRSchedule)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule is LRSchedule.constant or max_steps <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule is LRSchedule.cosine else 1 - progress
    return base_lr * (min_ratio + (1 - min_ratio) * decay)


class WarmupDecayLR(LRScheduler):
    """`lr_at` as a torch learning-rate scheduler: after `step()` number u, every parameter group's
    lr is lr_at(u, base_lr, ...), base_lr being the group's lr when the scheduler was built.

    The trainer steps it once per *applied* update (not per attempted step), so a step skipped for
    non-finite gradients (fp16 overflow) gives its learning rate to the next one; `last_epoch` is
    therefore the number of updates applied. Checkpoints keep that position (`seek` restores it);
    the base lr and the schedule's shape come from the resuming run's config, as every optimizer
    hyper-parameter does (memtrain.engine.resume).

    The param groups do not keep the `initial_lr` entry torch's schedulers add (the base lrs live
    in `base_lrs`), so the optimizer's state dict, and with it the checkpoint layout, is the one
    an optimizer without a scheduler has."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, schedule: str,
                 min_lr_ratio: float):
        self.warmup_steps, self.max_steps, self.schedule, self.min_lr_ratio = warmup_steps, max_steps, schedule, min_lr_ratio
        super().__init__(optimizer)
        for group in optimizer.param_groups:
            group.pop("initial_lr", None)

    def get_lr(self) -> list[float]:
        return [lr_at(self.last_epoch, base, self.warmup_steps, self.max_steps, self.schedule, self.min_lr_ratio)
                for base in self.base_lrs]

    def seek(self, updates: int) -> None:
        """Move to the position after `updates` applied updates (a resumed run) and set the groups' lr."""
        self.last_epoch, self._step_count = updates, updates + 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def build_lr_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> WarmupDecayLR:
    """The run's schedule (trainer.warmup_steps, max_steps, lr_schedule, min_lr_ratio) over
    `optimizer`, whose groups' lr (optimizer.lr) is the base lr. `optimizer` is the torch optimizer
    that holds the param groups (under DeepSpeed: the one inside its ZeRO wrapper)."""
    t = cfg.trainer
    # the schedule's name: the scheduler's state dict goes into the checkpoint's meta.json
    return WarmupDecayLR(optimizer, t.warmup_steps, t.max_steps, as_enum(t.lr_schedule, LRSchedule).name, t.min_lr_ratio)
