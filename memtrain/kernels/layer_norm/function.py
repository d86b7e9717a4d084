"""Launcher and autograd.Function of the fused layer norm (kernel.py).

    layer_norm(x, weight, bias, eps) : x [*, C] -> [*, C] in x's dtype, statistics in fp32;
    weight and bias [C] (any float dtype, or None) get gradients in their own dtype.
"""

from __future__ import annotations

import torch

from memtrain.kernels.layer_norm import kernel as K
from memtrain.kernels.runtime import variant

ROWS_PER_PROGRAM = 64  # rows whose dw/db partial sums one backward program keeps in registers


def _warps(block_c: int) -> int:
    # UNMEASURED: one warp per 256 fp32 columns, 1..8 (the Triton tutorial's rule)
    return min(8, max(1, block_c // 256))


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        C = x.shape[-1]
        x2 = x.reshape(-1, C)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        R = x2.shape[0]
        block_c = max(16, 1 << (C - 1).bit_length())
        y = torch.empty(R, C, dtype=x.dtype, device=x.device)
        mean = torch.empty(R, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
        dummy = x2.new_empty(1)
        extra = {} if x.device.type == "cpu" else {"num_warps": _warps(block_c)}
        variant(K._ln_fwd_kernel, x.device)[(R,)](
            x2, weight if weight is not None else dummy, bias if bias is not None else dummy, y, mean, rstd,
            x2.stride(0), y.stride(0), C, eps, HAS_W=weight is not None, HAS_B=bias is not None,
            BLOCK_C=block_c, **extra)
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.shape, ctx.block_c, ctx.extra = x.shape, block_c, extra
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        R, C = x2.shape
        dy2 = dy.reshape(R, C)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = torch.empty_like(x2)
        P = max(1, -(-R // ROWS_PER_PROGRAM))
        dw_part = torch.empty(P, C, dtype=torch.float32, device=x2.device)
        db_part = torch.empty_like(dw_part)
        variant(K._ln_bwd_kernel, x2.device)[(P,)](
            x2, weight if weight is not None else x2, dy2, dx, mean, rstd, dw_part, db_part,
            x2.stride(0), dy2.stride(0), dx.stride(0), R, C, HAS_W=weight is not None,
            ROWS=ROWS_PER_PROGRAM, BLOCK_C=ctx.block_c, **ctx.extra)
        dw = dw_part.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = db_part.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx.reshape(ctx.shape), dw, db, None


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    return _LayerNorm.apply(x, weight, bias, eps)
