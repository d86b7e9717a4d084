"""Chunking (OpenFold's chunk_layer): apply a layer to slices of its inputs' batch-like
dimensions, so its intermediate activations exist for one chunk at a time. The result equals
the unchunked one; only peak memory (and, a little, speed) change."""

from __future__ import annotations

import math
from typing import Callable

import torch


def chunk_layer(
    fn: Callable[..., torch.Tensor],
    inputs: dict[str, torch.Tensor],
    chunk_size: int,
    no_batch_dims: int,
) -> torch.Tensor:
    """fn(**inputs) computed in chunks of `chunk_size` over the first `no_batch_dims` dimensions.

    Those dimensions of the inputs broadcast against each other: an input whose batch dimensions
    are all 1 is passed whole to every chunk (a pair bias shared by every MSA row, say); one that
    matches the broadcast batch shape is sliced; anything in between is expanded first. fn must
    treat the batch dimensions element-wise (no mixing across them) and return one tensor whose
    leading dimensions are the (flattened) batch dimension.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    batch_shape = torch.broadcast_shapes(*(t.shape[:no_batch_dims] for t in inputs.values()))
    n = math.prod(batch_shape)

    def flatten(t: torch.Tensor) -> torch.Tensor:
        if all(d == 1 for d in t.shape[:no_batch_dims]):
            return t.reshape(1, *t.shape[no_batch_dims:])
        return t.expand(*batch_shape, *t.shape[no_batch_dims:]).reshape(n, *t.shape[no_batch_dims:])

    flat = {k: flatten(t) for k, t in inputs.items()}
    outputs = []
    for start in range(0, n, chunk_size):
        piece = {k: t if t.shape[0] == 1 and n != 1 else t[start:start + chunk_size] for k, t in flat.items()}
        outputs.append(fn(**piece))
    out = torch.cat(outputs, dim=0) if len(outputs) > 1 else outputs[0]
    return out.reshape(*batch_shape, *out.shape[1:])
