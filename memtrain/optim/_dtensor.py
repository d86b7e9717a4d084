"""Helpers for optimizers whose update reduces over a parameter's dimensions (factored second
moments, per-block statistics): under FSDP2 the parameter is a DTensor sharded on dim 0, and a
reduction over that dim leaves a pending (Partial) result, which is made whole before it is
stored or divided by."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, Replicate


def settle(x: torch.Tensor) -> torch.Tensor:
    """x with every Partial placement reduced to Replicate (a plain tensor is returned as is)."""
    if isinstance(x, DTensor) and any(p.is_partial() for p in x.placements):
        return x.redistribute(x.device_mesh, [Replicate() if p.is_partial() else p for p in x.placements])
    return x
