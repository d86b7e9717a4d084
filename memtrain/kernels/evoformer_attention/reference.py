"""Plain-torch Evoformer attention with a pair bias, the reference the kernels are tested against."""

from __future__ import annotations

import math

import torch

MASK_BIAS = -1e4  # the additive bias of a masked key, as memtrain.models.alphafold.primitives.MASK_BIAS


def evoformer_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """q [*, N_q, H, D], k and v [*, N_k, H, D], bias broadcastable to [*, H, N_q, N_k],
    mask [*, N_k] (1 = keep) -> [*, N_q, H, D].

    softmax(q k^T / sqrt(D) + bias + MASK_BIAS * (1 - mask)) v, computed in fp32 when `upcast`
    (the exact result the kernels approximate), returned in q's dtype."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
        bias = None if bias is None else bias.float()
    qh, kh, vh = (t.transpose(-2, -3) for t in (q, k, v))  # [*, H, N, D]
    logits = torch.matmul(qh, kh.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits + (MASK_BIAS * (1.0 - mask.to(logits.dtype)))[..., None, None, :]
    out = torch.matmul(torch.softmax(logits.float(), dim=-1).to(vh.dtype), vh)
    return out.transpose(-2, -3).to(dtype)
