"""AlphaFold 2 building blocks: Linear with the paper's initialisers, an fp32 LayerNorm, gated
multi-head attention with a selectable backend, and the functions that set the memory knobs
(attention backend, chunk size) on a built model from outside.

Supplement references are to Jumper et al. 2021, "Highly accurate protein structure prediction
with AlphaFold", Supplementary Information. Shapes: `*` leading batch dims, H heads, Q queries,
K keys, C channels.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memtrain.models.meta import local_tensor
from memtrain.models.reset import GeneratorFor, xavier_uniform_

# Additive bias for a masked key: bias = MASK_BIAS * (1 - mask).
# DISCREPANCY: AlphaFold's and OpenFold's code use 1e9 * (mask - 1) in fp32. That overflows to
# -inf in fp16 (max 65504), and a row whose keys are all masked (padding) then becomes
# softmax(-inf, ..., -inf) = NaN, which poisons the gradients. -1e4 is finite in fp16 (exact) and
# bf16 (rounded to -9984), six such biases summed still fit in fp16, and exp(-1e4 + logit)
# underflows to exactly 0 in fp32 (the smallest subnormal is exp(-103.3)) while the logits stay far
# below 1e4, so masking is exact for any row with at least one unmasked key; a fully masked row
# gives a finite average of its values instead of NaN.
MASK_BIAS = -1e4


def mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """mask [*] with 1 = keep, 0 = masked -> additive bias [*]: 0 where kept, MASK_BIAS where masked."""
    return MASK_BIAS * (1.0 - mask)


# -- Linear with AlphaFold's initialisers (Supplement 1.11.4) --------------------------------------

_TRUNC_NORMAL_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def _trunc_normal_(weight: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> None:
    """Truncated normal on [-2 std, 2 std] with the variance scale / fan_in after truncation
    (fan_in from the global shape; a DTensor's local shard is filled)."""
    fan_in = weight.shape[1]
    std = math.sqrt(scale / max(1, fan_in)) / _TRUNC_NORMAL_STD
    nn.init.trunc_normal_(local_tensor(weight), mean=0.0, std=std, a=-2.0 * std, b=2.0 * std, generator=generator)


class Linear(nn.Linear):
    """nn.Linear with the initialisers of Supplement 1.11.4:

    - "default": LeCun normal (truncated normal, variance 1 / fan_in), bias 0;
    - "relu": He normal (truncated normal, variance 2 / fan_in), for layers followed by a ReLU;
    - "glorot": Glorot (Xavier) uniform, used for the attention query/key/value projections;
    - "normal": untruncated normal, variance 1 / fan_in (OpenFold's choice for pair-bias layers);
    - "gating": weight 0, bias 1, so a sigmoid gate starts almost open (sigmoid(1) = 0.73);
    - "final": weight 0 and bias 0, so every residual branch starts as the identity.
    """

    INITS = ("default", "relu", "glorot", "normal", "gating", "final")

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, init: str = "default"):
        if init not in self.INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {self.INITS}")
        if init == "gating" and not bias:
            raise ValueError("the 'gating' init sets the bias to 1 and needs bias=True")
        self.init = init
        super().__init__(in_dim, out_dim, bias=bias)

    @torch.no_grad()
    def reset_parameters(self, generator_for: GeneratorFor | None = None) -> None:
        """The init kind's values in place: at construction from torch's global RNG; for a model
        materialised from the meta device (memtrain.models.reset) from generator_for("weight", w),
        into a DTensor's local shard with the whole weight's fans."""
        init = getattr(self, "init", "default")  # nn.Linear.__init__ calls this before self.init is set
        w, gen = self.weight, (generator_for("weight", self.weight) if generator_for is not None else None)
        if init == "default":
            _trunc_normal_(w, scale=1.0, generator=gen)
        elif init == "relu":
            _trunc_normal_(w, scale=2.0, generator=gen)
        elif init == "glorot":
            xavier_uniform_(w, gain=1.0, generator=gen)
        elif init == "normal":
            nn.init.normal_(local_tensor(w), std=1.0 / math.sqrt(max(1, self.in_features)), generator=gen)
        else:  # gating, final
            nn.init.zeros_(local_tensor(w))
        if self.bias is not None:
            if init == "gating":
                nn.init.ones_(local_tensor(self.bias))
            else:
                nn.init.zeros_(local_tensor(self.bias))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """max(float32, x.dtype): the dtype reductions are computed in. fp32 for bf16/fp16 inputs (as
    OpenFold keeps LayerNorm and softmax), fp64 for fp64 inputs (so fp64 gradient checks hold)."""
    return torch.promote_types(x.dtype, torch.float32)


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm over the last dim, computed in max(fp32, input dtype) (input, weight and
    bias cast to it, autocast off), then cast back to the input's dtype. Under bf16/fp16 autocast this
    keeps the mean/variance reductions over C in fp32, as OpenFold does; fp64 stays fp64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        same = self.weight is None or self.weight.dtype == dtype
        if x.dtype == dtype and same and not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.to(dtype)
            bias = None if self.bias is None else self.bias.to(dtype)
            out = F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class FusedLayerNorm(LayerNorm):
    """LayerNorm through the fused Triton kernel (memtrain.kernels.layer_norm): same parameters and
    the same numbers (fp32 statistics, output in the input's dtype). `set_attention_backend(model,
    "triton")` switches a model's LayerNorm modules to this class in place (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from memtrain.kernels.layer_norm import layer_norm

        if len(self.normalized_shape) != 1:
            return super().forward(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return layer_norm(x, self.weight, self.bias, self.eps)


# -- attention ------------------------------------------------------------------------------------


class AttentionBackend(Enum):
    """How softmax(q k^T / sqrt(d) + bias) v is computed; results agree to rounding."""

    naive = "naive"  # explicit logits, softmax in fp32; every intermediate is a plain tensor
    sdpa = "sdpa"  # torch.nn.functional.scaled_dot_product_attention, biases summed into a float mask
    triton = "triton"  # memtrain.kernels.evoformer_attention: fused, the pair bias never expanded over rows


def resolve_backend(backend: Any) -> AttentionBackend:
    """AttentionBackend from an AttentionBackend, a string, or any enum whose value is one of them
    (the config schema has its own enum with the same values)."""
    if isinstance(backend, AttentionBackend):
        return backend
    value = getattr(backend, "value", backend)
    try:
        return AttentionBackend(value)
    except ValueError:
        raise ValueError(
            f"unknown attention backend {backend!r}; expected one of {[b.value for b in AttentionBackend]}"
        ) from None


def _sum_biases(biases: list[torch.Tensor]) -> torch.Tensor | None:
    total = None
    for b in biases:
        total = b if total is None else total + b
    return total


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, biases: list[torch.Tensor]) -> torch.Tensor:
    """q [*, H, Q, D], k and v [*, H, K, D], biases broadcastable to [*, H, Q, K] -> [*, H, Q, D].

    The logits are formed in the compute dtype, the softmax in max(fp32, that dtype), and the
    weights cast back.
    """
    logits = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-1, -2))
    bias = _sum_biases(biases)
    if bias is not None:
        logits = logits + bias
    weights = torch.softmax(logits.to(compute_dtype(logits)), dim=-1).to(v.dtype)
    return torch.matmul(weights, v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, biases: list[torch.Tensor]) -> torch.Tensor:
    """Same contract as naive_attention, through F.scaled_dot_product_attention.

    The leading dims are flattened to one batch dim ([B', H, Q, D]), the layout every SDPA kernel
    accepts. The summed bias goes in as a float attn_mask in q's dtype; its H, Q and K dims keep
    their size-1 broadcast dims (SDPA broadcasts them), only its batch dims are expanded and flattened.
    """
    batch = q.shape[:-3]
    q4, k4, v4 = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    mask = _sum_biases(biases)
    if mask is not None:
        mask = mask.to(q.dtype)
        if mask.dim() < q.dim():
            mask = mask.reshape((1,) * (q.dim() - mask.dim()) + tuple(mask.shape))
        tail = mask.shape[-3:]
        if all(d == 1 for d in mask.shape[:-3]):
            mask = mask.reshape(1, *tail)
        else:
            mask = mask.expand(*batch, *tail).reshape(-1, *tail)
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask)
    return out.reshape(*batch, *out.shape[-3:])


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, biases: list[torch.Tensor]) -> torch.Tensor:
    """Same contract as naive_attention, through the fused Triton kernel. Biases whose head and
    query dims are 1 ([*, 1, 1, K]: mask biases) are summed into one per-key bias that takes no
    gradient; the others are summed into the pair bias, which keeps its broadcast dims (the kernel
    reduces its gradient over them). The [*, H, Q, D] views are passed as [*, Q, H, D] views."""
    from memtrain.kernels.evoformer_attention import evoformer_attention

    key_biases = [b for b in biases if b.dim() >= 3 and b.shape[-3] == 1 and b.shape[-2] == 1]
    pair = _sum_biases([b for b in biases if not any(b is kb for kb in key_biases)])
    key = _sum_biases([b.squeeze(-2).squeeze(-2) for b in key_biases])
    if key is not None and key.requires_grad:
        # DISCREPANCY: the kernel gives per-key (mask) biases no gradient; one that needs it joins the pair bias
        pair, key = (key[..., None, None, :] if pair is None else pair + key[..., None, None, :]), None
    o = evoformer_attention(q.transpose(-2, -3), k.transpose(-2, -3), v.transpose(-2, -3), bias=pair, key_bias=key)
    return o.transpose(-2, -3)


_BACKENDS = {
    AttentionBackend.naive: naive_attention,
    AttentionBackend.sdpa: sdpa_attention,
    AttentionBackend.triton: triton_attention,
}


class Attention(nn.Module):
    """Gated multi-head attention (Supplement 1.11.3, the form used by Algorithms 7, 8, 13, 14;
    OpenFold's `Attention`):

        q, k, v = LinearNoBias(q_x), LinearNoBias(kv_x), LinearNoBias(kv_x)   per head, c_hidden each
        a = softmax(q k^T / sqrt(c_hidden) + sum(biases))
        o = sigmoid(Linear(q_x)) * (a v)                                        if gating
        out = Linear(concat_h o)                                                "final" init

    The backend is the module attribute `backend` (default naive), set from outside with
    `set_attention_backend(model, backend)`.
    """

    def __init__(self, c_q: int, c_k: int, c_v: int, c_hidden: int, no_heads: int, gating: bool = True):
        super().__init__()
        self.c_hidden, self.no_heads, self.gating = c_hidden, no_heads, gating
        hc = c_hidden * no_heads
        self.linear_q = Linear(c_q, hc, bias=False, init="glorot")
        self.linear_k = Linear(c_k, hc, bias=False, init="glorot")
        self.linear_v = Linear(c_v, hc, bias=False, init="glorot")
        self.linear_g = Linear(c_q, hc, init="gating") if gating else None
        self.linear_o = Linear(hc, c_q, init="final")
        self.backend = AttentionBackend.naive

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[*, N, H * c] -> [*, H, N, c]."""
        return x.unflatten(-1, (self.no_heads, self.c_hidden)).transpose(-2, -3)

    def forward(self, q_x: torch.Tensor, kv_x: torch.Tensor, biases: list[torch.Tensor]) -> torch.Tensor:
        """q_x [*, Q, C_q], kv_x [*, K, C_k], biases: each broadcastable to [*, H, Q, K] -> [*, Q, C_q]."""
        q = self._heads(self.linear_q(q_x))
        k = self._heads(self.linear_k(kv_x))
        v = self._heads(self.linear_v(kv_x))
        o = _BACKENDS[resolve_backend(self.backend)](q, k, v, biases)  # [*, H, Q, c]
        o = o.transpose(-2, -3)  # [*, Q, H, c]
        if self.linear_g is not None:
            g = torch.sigmoid(self.linear_g(q_x)).unflatten(-1, (self.no_heads, self.c_hidden))
            o = o * g
        return self.linear_o(o.flatten(-2))


# -- memory knobs, set from outside ---------------------------------------------------------------


def set_attention_backend(model: nn.Module, backend: Any) -> None:
    """Resolve `backend` once and set it on every Attention module of `model`."""
    resolved = resolve_backend(backend)
    for module in model.modules():
        if isinstance(module, Attention):
            module.backend = resolved
        elif isinstance(module, LayerNorm):
            # the fused layer norm goes with the fused attention; parameters stay the same objects
            module.__class__ = FusedLayerNorm if resolved is AttentionBackend.triton else LayerNorm


def set_chunk_size(model: nn.Module, chunk_size: int | None) -> int:
    """Set `chunk_size` (None: no chunking) on every submodule that has the attribute; returns how
    many modules were set."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    count = 0
    for module in model.modules():
        if hasattr(module, "chunk_size"):
            module.chunk_size = chunk_size
            count += 1
    return count


def residual(x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """x + update; in place when autograd is off (inference), where no graph needs the old x.
    Callers must not rely on `x` keeping its old value when grad is disabled.

    A tensor that requires grad is never updated in place, even with autograd off: a reentrant
    activation checkpoint runs its forward under no_grad and keeps its inputs for recomputation.
    Nor is one whose dtype or shape x + update would change (a bf16 x with an fp32 update)."""
    if (
        torch.is_grad_enabled()
        or x.requires_grad
        or update.shape != x.shape
        or torch.result_type(x, update) != x.dtype
    ):
        return x + update
    x += update
    return x


class SharedDropout(nn.Module):
    """Dropout whose mask is shared along `shared_dim` (Supplement 1.11.6, Algorithm 6).

    "Row-wise" dropout uses shared_dim=-3: for x [*, N_rows, N_cols, C] the mask has shape
    [*, 1, N_cols, C], the same for every row. "Column-wise" uses shared_dim=-2: mask
    [*, N_rows, 1, C]. The mask is drawn from torch's RNG (F.dropout on a ones tensor), so a
    fixed torch seed reproduces it.
    """

    def __init__(self, p: float, shared_dim: int):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p, self.shared_dim = p, shared_dim

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        return tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = F.dropout(x.new_ones(self.mask_shape(x)), p=self.p, training=True)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, shared_dim={self.shared_dim}"
