"""Launcher and autograd.Function of the Evoformer attention kernels (kernel.py).

    evoformer_attention(q, k, v, bias=None, mask=None, key_bias=None)

q [*, N_q, H, D], k and v [*, N_k, H, D] (any strides: the [*, H, N, D] views of a gated
attention module are passed as they are), bias broadcastable to [*, H, N_q, N_k] (typically
[*, 1, H, N_q, N_k]: one pair bias for every MSA row), mask [*, N_k] (1 = keep) and/or key_bias
[*, N_k] (an additive per-key bias, e.g. an already formed mask bias) -> [*, N_q, H, D].

The leading dims `*` are split into Z (where the bias varies) and S (the trailing dims over which
it is broadcast). The kernels see q as [Z, S, N_q, H, D] and the bias as [Z, H, N_q, N_k]; the
gradient of the bias is formed at that size, never at [Z, S, H, N_q, N_k].
"""

from __future__ import annotations

import math

import torch

from memtrain.kernels.evoformer_attention import kernel as K
from memtrain.kernels.evoformer_attention.reference import MASK_BIAS
from memtrain.kernels.runtime import variant

# Block sizes in the interpreter: 16 is the smallest tl.dot accepts; small blocks keep tests quick
# and make N = 17 or 33 cover partial tiles.
INTERPRET_BLOCK = 16


def hopper_configs():
    """Autotune candidates for H100 (sm_90). UNMEASURED: chosen from the usual flash-attention
    ranges for D <= 64 (see docs/benchmarks.md for the measurement that should settle them)."""
    import triton

    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
        for bm, bn, w, st in [
            (128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3),
            (64, 64, 4, 4), (64, 32, 4, 4), (128, 128, 8, 2), (64, 128, 4, 2),
        ]
    ]


def _autotune(jit):
    import triton

    return triton.autotune(configs=hopper_configs(), key=["N_Q", "N_K", "BLOCK_D", "HAS_BIAS", "HAS_KEY_BIAS"])(jit)


def _autotune_dbias(jit):
    import triton

    return triton.autotune(configs=hopper_configs(), key=["N_Q", "N_K", "BLOCK_D", "HAS_KEY_BIAS"])(jit)


def _launch(kernel, grid, args, device, dbias=False, **constexprs):
    fn = variant(kernel, device, None if device.type == "cpu" else (_autotune_dbias if dbias else _autotune))
    if device.type == "cpu":
        constexprs.update(BLOCK_M=INTERPRET_BLOCK, BLOCK_N=INTERPRET_BLOCK)
    fn[grid](*args, **constexprs)


def _block_d(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


class _EvoformerAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, key_bias):
        """q [Z, S, N_q, H, D], k v [Z, S, N_k, H, D], bias [Z, H, N_q, N_k] or None, key_bias [Z*S, N_k] fp32 or None."""
        Z, S, NQ, H, D = q.shape
        NK = k.shape[2]
        if D > 128:
            raise ValueError(f"head dim {D} > 128 is not supported by the Triton kernel")
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(Z * S * H, NQ, device=q.device, dtype=torch.float32)
        dummy = q.new_empty(1)
        b = bias if bias is not None else dummy
        kb = key_bias if key_bias is not None else dummy
        bstrides = bias.stride() if bias is not None else (0, 0, 0, 0)
        sm_scale = 1.0 / math.sqrt(D)
        meta = dict(HAS_BIAS=bias is not None, HAS_KEY_BIAS=key_bias is not None,
                    PRECISION="ieee" if q.dtype == torch.float32 else "tf32", BLOCK_D=_block_d(D))
        import triton

        grid = lambda m: (Z * S * H, triton.cdiv(NQ, m["BLOCK_M"]))  # noqa: E731
        _launch(K._fwd_kernel, grid, (q, k, v, b, kb, o, lse, *q.stride(), *k.stride(), *v.stride(), *bstrides,
                                      *o.stride(), S, H, NQ, NK, D, sm_scale), q.device, **meta)
        ctx.save_for_backward(q, k, v, bias, key_bias, o, lse)
        ctx.meta, ctx.sm_scale = meta, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        import triton

        q, k, v, bias, key_bias, o, lse = ctx.saved_tensors
        Z, S, NQ, H, D = q.shape
        NK = k.shape[2]
        do = do.contiguous()
        # delta_i = sum_d dO_id O_id  (= sum_j P_ij dP_ij), [Z*S*H, N_q] fp32 like lse
        delta = (do.float() * o.float()).sum(-1).permute(0, 1, 3, 2).reshape(Z * S * H, NQ).contiguous()
        dummy = q.new_empty(1)
        b = bias if bias is not None else dummy
        kb = key_bias if key_bias is not None else dummy
        bstrides = bias.stride() if bias is not None else (0, 0, 0, 0)
        common = (*q.stride(), *k.stride(), *v.stride(), *bstrides, *do.stride(), S, H, NQ, NK, D, ctx.sm_scale)
        # dk and dv are written with k's and v's strides: give them those strides
        dk = torch.empty_strided(k.shape, k.stride(), dtype=k.dtype, device=k.device)
        dv = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device)
        dq = torch.empty_strided(q.shape, q.stride(), dtype=q.dtype, device=q.device)
        dev = q.device
        _launch(K._bwd_dkdv_kernel, lambda m: (Z * S * H, triton.cdiv(NK, m["BLOCK_N"])),
                (q, k, v, b, kb, do, lse, delta, dk, dv, *common), dev, **ctx.meta)
        _launch(K._bwd_dq_kernel, lambda m: (Z * S * H, triton.cdiv(NQ, m["BLOCK_M"])),
                (q, k, v, b, kb, do, lse, delta, dq, *common), dev, **ctx.meta)
        dbias = None
        if bias is not None and ctx.needs_input_grad[3]:
            db = torch.empty(Z, H, NQ, NK, device=dev, dtype=torch.float32)
            meta = {k_: v_ for k_, v_ in ctx.meta.items() if k_ != "HAS_BIAS"}
            _launch(K._bwd_dbias_kernel,
                    lambda m: (Z * H, triton.cdiv(NQ, m["BLOCK_M"]), triton.cdiv(NK, m["BLOCK_N"])),
                    (q, k, v, b, kb, do, lse, delta, db, *common), dev, dbias=True, **meta)
            dbias = db.to(bias.dtype)
        return dq, dk, dv, dbias, None


def _split_batch(lead: tuple[int, ...], bias: torch.Tensor | None) -> int:
    """Index where S (the trailing leading dims over which `bias` is broadcast) starts."""
    if bias is None:
        return len(lead)
    bl = (1,) * (len(lead) + 3 - bias.dim()) + tuple(bias.shape[:-3])
    start = len(lead)
    while start > 0 and bl[start - 1] == 1:
        start -= 1
    return start


def evoformer_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + bias + key_bias + MASK_BIAS * (1 - mask)) v; shapes in the module
    docstring. Differentiable in q, k, v and bias; mask and key_bias take no gradient."""
    if q.dim() < 3 or k.shape != v.shape or q.shape[:-3] != k.shape[:-3] or q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"expected q [*, N_q, H, D] and k, v [*, N_k, H, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    lead, (NQ, H, D), NK = q.shape[:-3], q.shape[-3:], k.shape[-3]
    k, v = k.to(q.dtype), v.to(q.dtype)
    kb = None
    for extra, name in ((mask, "mask"), (key_bias, "key_bias")):
        if extra is None:
            continue
        if extra.requires_grad and name == "key_bias":
            raise ValueError("key_bias takes no gradient in the Triton kernel; pass it detached")
        term = MASK_BIAS * (1.0 - extra.float()) if name == "mask" else extra.detach().float()
        kb = term if kb is None else kb + term
    if kb is not None:
        kb = kb.expand(*lead, NK).reshape(-1, NK).contiguous()  # [Z*S, N_k]: small (no N_q, no H)
    split = _split_batch(lead, bias)
    Z, S = math.prod(lead[:split]), math.prod(lead[split:])
    q5, k5, v5 = (t.reshape(Z, S, *t.shape[-3:]) for t in (q, k, v))
    bz = None
    if bias is not None:
        bl = bias.reshape((1,) * (len(lead) + 3 - bias.dim()) + tuple(bias.shape))
        bz = bl.reshape(*bl.shape[:split], *bl.shape[-3:])  # drop the size-1 S dims: a view
        bz = bz.expand(*lead[:split], H, NQ, NK).reshape(Z, H, NQ, NK)  # copies only where Z is broadcast
    out = _EvoformerAttention.apply(q5, k5, v5, bz, kb)
    return out.reshape(*lead, NQ, H, D)
