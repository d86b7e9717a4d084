"""Plain-torch layer norm in fp32, the reference of the fused kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float = 1e-5) -> torch.Tensor:
    """x [*, C] -> [*, C] in x's dtype, normalised over C in fp32 (as AlphaFold's LayerNorm)."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).to(x.dtype)
