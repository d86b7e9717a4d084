"""Multi-tensor ("foreach") steps for memtrain's optimizers.

An optimizer's elementwise work runs as torch._foreach_* ops over buckets of parameters instead of
one op per parameter: on CUDA one kernel launch covers many tensors, on any device the Python loop
shrinks. Each op allocates its result for the whole bucket, so buckets hold at most BUCKET_BYTES of
parameters: the step's temporaries stay bounded, as the per-parameter loop's are (torch's own
foreach optimizers take every parameter at once). A parameter larger than a bucket gets its own.

DTensor parameters (FSDP2 shards, tensor-parallel shards) enter the elementwise ops as their local
tensors: parameter, gradient and state share placements, so an elementwise update commutes with
the sharding, and plain tensors have every foreach op (DTensor lacks some, e.g. _foreach_sign on
older torch). Reductions over a parameter's dimensions stay per parameter, on the DTensors.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.distributed.tensor import DTensor

BUCKET_BYTES = 64 * 2**20


def local(t: torch.Tensor) -> torch.Tensor:
    """The local tensor of a DTensor (a view sharing its storage), a plain tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def buckets(params: Sequence[torch.Tensor], max_bytes: int = BUCKET_BYTES) -> Iterator[list[int]]:
    """Indices into `params`, in order, grouped by (device, dtype) and cut where a group would
    pass max_bytes of parameters."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    for ids in groups.values():
        bucket: list[int] = []
        size = 0
        for i in ids:
            nbytes = params[i].numel() * params[i].element_size()
            if bucket and size + nbytes > max_bytes:
                yield bucket
                bucket, size = [], 0
            bucket.append(i)
            size += nbytes
        if bucket:
            yield bucket


def resolve(foreach: bool | None) -> bool:
    """foreach=None (the default): on, on every device."""
    return True if foreach is None else bool(foreach)
