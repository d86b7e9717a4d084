"""What quantization-aware training and FP8 linear layers change in `memtrain estimate`.

Counted per swapped linear layer of a block (in, out its features; B S the micro-batch tokens;
c the compute dtype's bytes, r the residual stream's):

QAT (memtrain.precision.qat): the layer saves its fake-quantized operands instead of the plain
ones. Without autocast they are new tensors besides the input the previous op already keeps: one
quantized input copy (B S in r, when activations are quantized) and one quantized weight copy
(in out r) per layer and micro-batch. Under autocast the saved low-precision casts are of the
quantized tensors instead of the plain ones (the same bytes, already counted by the model's
activation count). The quantized inputs are per layer: where g layers shared one saved input
(q, k, v), g copies are kept, (g - 1) extra. BitLinear keeps its input (for its norm), its own
quantized input (B S in r) and rstd (4 B S). The straight-through estimator saves nothing.
Checked against the measured CPU forward for int8 (fp32, bf16) and bitnet (fp32); bitnet under
autocast is counted the same way but not measured.

FP8 (memtrain.precision.fp8): each layer saves its input and weight in e4m3 (1 byte) where
autocast would save bf16 copies (c bytes): B S in (c - 1) + in out (c - 1) fewer bytes per layer.
Delayed scaling adds three float32 amax histories per layer (model state, counted once).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import as_enum
from memtrain.config.schema import FP8Scaling, QATActivations, QATScheme
from memtrain.models import get_spec


def block_linears(cfg: DictConfig) -> list[tuple[int, int, int]]:
    """(in, out, g) of every nn.Linear in one block, g the number of the block's linear layers that
    read the same input tensor (3 for q/k/v), from a forward of two tokens on the meta device."""
    spec = get_spec(cfg.model.arch)
    with torch.device("meta"):
        model = spec.build_model(cfg.model)
    linears = [m for m in spec.blocks(model)[0].modules() if type(m) is nn.Linear]
    inputs: dict[nn.Module, torch.Tensor] = {}  # the tensors themselves: an id() of a freed one can be reused

    def record(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs.setdefault(mod, args[0])

    hooks = [m.register_forward_hook(record) for m in linears]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 2, dtype=torch.long, device="meta"))
    except (RuntimeError, NotImplementedError, TypeError):  # a model that does not run on meta: no sharing assumed
        inputs.clear()
    for h in hooks:
        h.remove()
    return [(m.in_features, m.out_features, sum(v is inputs.get(m) for v in inputs.values()) or 1)
            for m in linears]


def precision_activation_parts(cfg: DictConfig, parts: dict[str, float], compute: int, residual: int) -> dict[str, float]:
    """The model's activation parts (ModelSpec.activation_bytes) with QAT's or FP8's per-block change."""
    p = cfg.precision
    qat, fp8 = as_enum(p.get("qat", "none"), QATScheme), bool(p.get("fp8", False))
    if qat is QATScheme.none and not fp8:
        return parts
    tokens = cfg.trainer.micro_batch_size * cfg.data.seq_len
    autocast = compute != residual
    delta = 0.0
    for n_in, n_out, group in block_linears(cfg):
        if fp8 and n_in % 16 == 0 and n_out % 16 == 0:
            delta -= (tokens * n_in + n_in * n_out) * (compute - 1)
        elif qat is QATScheme.bitnet:  # own normalized, quantized input + rstd; its input stays saved (norm backward)
            delta += 4 * tokens + tokens * n_in * residual + (0 if autocast else n_in * n_out * residual)
        elif qat is not QATScheme.none and not autocast:
            delta += n_in * n_out * residual
            if as_enum(p.get("qat_activations", "int8"), QATActivations) is QATActivations.int8:
                # a quantized copy per layer replaces the one input tensor `group` layers shared
                delta += tokens * n_in * residual * (group - 1) / group
    return {**parts, "block": parts["block"] + delta}


def precision_state_bytes(cfg: DictConfig) -> int:
    """Persistent per-rank bytes of precision state: FP8 delayed scaling's amax histories."""
    p = cfg.precision
    if not p.get("fp8", False) or as_enum(p.fp8_scaling, FP8Scaling) is not FP8Scaling.delayed:
        return 0
    spec = get_spec(cfg.model.arch)
    n = sum(1 for i, o, _ in block_linears(cfg) if i % 16 == 0 and o % 16 == 0) * spec.num_blocks(cfg.model)
    return n * 3 * p.fp8_amax_history * 4
