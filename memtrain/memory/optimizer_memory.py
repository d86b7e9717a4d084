"""Optimizer state bytes, per parameter, as each optimizer allocates them (memtrain estimate).

`state_bytes(cfg, shapes, b)` sums the state of parameters of these shapes (whole, or one rank's
shard of each) for the configured optimizer, with floating-point states `b` bytes wide (the
parameter dtype; float32 inside DeepSpeed's partitions). Per optimizer, for a parameter of n
elements, a matrix [..., R, C] having rows = prod(shape[:-1]) and cols = prod(shape[:-2]) * C:

    AdamW        2 n b + 4                           exp_avg, exp_avg_sq, float32 step
    Adafactor    (rows + cols) b + 4 (vector: n b + 4)   factored second moment
    Lion         n b                                 one moment, no step count
    SM3          sum(shape) b + 4 (vector: n b + 4)  one accumulator per dim; + n b with momentum
    CAME         n b + 2 (rows + cols) b + 4         momentum, factored v and confidence
                 (vector: 2 n b + 4)
    Adam-mini    n b + k b + 4                       k = heads (Q, K), rows (other matrices),
                                                     1 (vectors), n (embedding/output: AdamW)
    AdamW-bf16   2 n 2 + 4                           both moments bfloat16
    AdamW8bit    2 n + 2 * 256 * 4 + 2 ceil(n/256) 4 uint8 moments, a 256-entry code map and a
                 (n < min_8bit_size: 2 n 4)          float32 absmax per 256-block for each
    MeZO         0                                   no state, and no gradients (see estimator)
"""

from __future__ import annotations

from collections import Counter

import math

import torch
from omegaconf import DictConfig

from memtrain.config.errors import ConfigError
from memtrain.config.optimizer_compat import optimizer_name
from memtrain.models import get_spec
from memtrain.models.meta import build_on_meta

STEP_BYTES = 4
BNB_BLOCK, BNB_CODE = 256, 256  # bitsandbytes' block-wise quantization: block size, code-map entries


def _rows_cols(shape: torch.Size) -> tuple[int, int]:
    return math.prod(shape[:-1]), math.prod(shape[:-2]) * shape[-1]


def _adamw(shape, b, ocfg, role):
    return 2 * math.prod(shape) * b + STEP_BYTES


def _adafactor(shape, b, ocfg, role):
    if len(shape) > 1:
        return sum(_rows_cols(shape)) * b + STEP_BYTES
    return math.prod(shape) * b + STEP_BYTES


def _lion(shape, b, ocfg, role):
    return math.prod(shape) * b


def _sm3(shape, b, ocfg, role):
    n = math.prod(shape)
    acc = sum(shape) if len(shape) > 1 else n
    return acc * b + STEP_BYTES + (n * b if ocfg.momentum > 0 else 0)


def _came(shape, b, ocfg, role):
    n = math.prod(shape)
    if len(shape) > 1:
        return n * b + 2 * sum(_rows_cols(shape)) * b + STEP_BYTES
    return 2 * n * b + STEP_BYTES


def _adam_mini(shape, b, ocfg, role):
    from memtrain.optim.adam_mini import block_count

    kind, heads = role
    return math.prod(shape) * b + block_count(kind, heads, shape) * b + STEP_BYTES


def _adamw_bf16(shape, b, ocfg, role):
    return 2 * math.prod(shape) * 2 + STEP_BYTES


def _adamw_8bit(shape, b, ocfg, role):
    n = math.prod(shape)
    if n < ocfg.min_8bit_size:
        return 2 * n * 4
    return 2 * n + 2 * BNB_CODE * 4 + 2 * math.ceil(n / BNB_BLOCK) * 4


def _none(shape, b, ocfg, role):
    return 0


STATE = {"AdamW": _adamw, "Adam": _adamw, "Adafactor": _adafactor, "Lion": _lion, "SM3": _sm3, "CAME": _came,
         "AdamMini": _adam_mini, "AdamWBF16": _adamw_bf16, "AdamW8bit": _adamw_8bit, "MeZO": _none}
ZEROTH_ORDER = ("MeZO",)


def zeroth_order(cfg: DictConfig) -> bool:
    """Forward passes only: no gradients, no optimizer state, no activations kept for a backward."""
    return optimizer_name(cfg) in ZEROTH_ORDER


def param_roles(cfg: DictConfig) -> list[tuple[str, int]]:
    """Adam-mini's block of every parameter, in the estimator's order (root parameters outside the
    blocks, then each block's; tied ones once), from a build on the meta device; cached per model
    and optimizer.adamw_names (memtrain plan asks for many configurations of one model)."""
    from memtrain.config.cfgview import node_key

    key = (cfg.model.arch, node_key(cfg.model), tuple(cfg.optimizer.adamw_names))
    if key not in _ROLES:
        if len(_ROLES) >= 64:
            _ROLES.clear()
        _ROLES[key] = _param_roles(cfg.model, key[2])
    return list(_ROLES[key])


_ROLES: dict[tuple, tuple] = {}


def _param_roles(mcfg: DictConfig, adamw_names: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    from memtrain.optim.adam_mini import partition

    spec = get_spec(mcfg.arch)
    model = build_on_meta(spec.build_model, mcfg)
    kinds = partition(model, adamw_names)
    blocks = spec.blocks(model)
    in_blocks = {id(p) for p in blocks.parameters()}
    order = [p for p in model.parameters() if id(p) not in in_blocks] + [p for blk in blocks for p in blk.parameters()]
    return tuple(kinds[id(p)] for p in order)


def state_bytes(cfg: DictConfig, shapes: list[torch.Size], b: int) -> int:
    name = optimizer_name(cfg)
    if name not in STATE:
        raise ConfigError("optimizer._target_", f"the estimator has no memory model of {cfg.optimizer._target_}",
                          allowed=sorted(STATE))
    roles = param_roles(cfg) if name == "AdamMini" else [None] * len(shapes)
    if len(roles) != len(shapes):
        raise ValueError(f"{len(shapes)} shapes for {len(roles)} parameters")
    # each distinct (shape, role) once, times how often it occurs (a model's blocks repeat shapes)
    state, ocfg = STATE[name], cfg.optimizer
    return sum(state(s, b, ocfg, r) * n for (s, r), n in Counter(zip(shapes, roles)).items())


def inference_activation_bytes(per_block: list[int], outside: int) -> int:
    """Zeroth-order training keeps nothing for a backward pass: at any moment the device holds the
    working set of the one block being computed (bounded by what training would save for it) or of
    the head (logits and the loss), whichever is larger."""
    return max([*per_block, outside])
