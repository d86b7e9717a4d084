"""Analytic per-device memory model behind `memtrain estimate`.

Model states are exact: parameter shapes come from building the model on the meta device (no
memory is touched), and each optimizer's state is counted tensor by tensor as torch allocates it.
Activations come from the ModelSpec's analytic count of the tensors saved for the backward pass,
combined here with the activation-checkpointing policy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, enum_names
from memtrain.memory.activation_checkpoint import checkpointed_block_ids
from memtrain.models import get_spec
from memtrain.precision.amp import dtype_of

STEP_BYTES = 4  # torch optimizers keep `step` as a float32 scalar tensor per parameter


def _adam_state(shape: torch.Size, param_bytes: int) -> int:
    """exp_avg and exp_avg_sq in the parameter's dtype."""
    return 2 * math.prod(shape) * param_bytes + STEP_BYTES


def _adafactor_state(shape: torch.Size, param_bytes: int) -> int:
    """Factored second moment for matrices (row_var [..., R, 1], col_var [..., 1, C]); a full
    variance for vectors (Shazeer & Stern 2018, Algorithm 4). No first moment."""
    if len(shape) > 1:
        rows = math.prod(shape[:-1])
        cols = math.prod(shape[:-2]) * shape[-1]
        return (rows + cols) * param_bytes + STEP_BYTES
    return math.prod(shape) * param_bytes + STEP_BYTES


OPTIMIZER_STATE = {"AdamW": _adam_state, "Adam": _adam_state, "Adafactor": _adafactor_state}


@dataclass
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    activations: int
    total: int
    n_params: int
    activations_per_block: list[int] = field(default_factory=list)
    activations_outside_blocks: int = 0
    recompute_buffer: int = 0  # one block's activations, live while it is recomputed in backward

    def as_dict(self) -> dict:
        return asdict(self)


def param_shapes(cfg: DictConfig) -> list[torch.Size]:
    """Shapes of the model's parameters (tied ones once), from a build on the meta device."""
    with torch.device("meta"):
        model = get_spec(cfg.model.arch).build_model(cfg.model)
    return [p.shape for p in model.parameters()]


def model_state_bytes(cfg: DictConfig, shapes: list[torch.Size]) -> tuple[int, int, int]:
    """(parameters, gradients, optimizer states) in bytes."""
    param_bytes = dtype_of(cfg.precision.param_dtype).itemsize
    name = cfg.optimizer._target_.rpartition(".")[2]
    if name not in OPTIMIZER_STATE:
        raise ConfigError("optimizer._target_", f"the estimator has no memory model of {cfg.optimizer._target_}",
                          allowed=sorted(OPTIMIZER_STATE))
    numel = sum(math.prod(s) for s in shapes)
    optimizer = sum(OPTIMIZER_STATE[name](s, param_bytes) for s in shapes)
    return numel * param_bytes, numel * param_bytes, optimizer


def activation_bytes(cfg: DictConfig) -> tuple[list[int], int, int]:
    """(saved bytes per block, saved bytes outside the blocks, recompute buffer) for one micro-batch."""
    spec = get_spec(cfg.model.arch)
    compute = dtype_of(cfg.precision.compute_dtype).itemsize
    residual = dtype_of(cfg.precision.param_dtype).itemsize
    parts = spec.activation_bytes(cfg.model, cfg.trainer.micro_batch_size, cfg.data.seq_len, compute, residual)
    ac = cfg.checkpoint
    mode, policy = enum_names(ac.mode), enum_names(ac.policy)
    n_blocks = cfg.model.n_layers
    recomputed = set(checkpointed_block_ids(n_blocks, mode, policy, ac.every_k))
    per_block = []
    for i in range(n_blocks):
        if i in recomputed:
            per_block.append(parts["block_input"])
        elif mode == "selective" and policy == "attention":
            per_block.append(parts["block"] - parts["attention_core_freed"])
        else:
            per_block.append(parts["block"])
    if recomputed:
        buffer = parts["block"]
    elif mode == "selective" and policy == "attention":
        buffer = parts["attention_core_freed"]
    else:
        buffer = 0
    return [int(b) for b in per_block], int(parts["outside_blocks"]), int(buffer)


def estimate(cfg: DictConfig) -> MemoryEstimate:
    shapes = param_shapes(cfg)
    params, grads, optimizer = model_state_bytes(cfg, shapes)
    per_block, outside, buffer = activation_bytes(cfg)
    activations = sum(per_block) + outside + buffer
    return MemoryEstimate(
        params=params,
        grads=grads,
        optimizer=optimizer,
        activations=activations,
        total=params + grads + optimizer + activations,
        n_params=sum(math.prod(s) for s in shapes),
        activations_per_block=per_block,
        activations_outside_blocks=outside,
        recompute_buffer=buffer,
    )
