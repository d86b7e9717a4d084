"""Replicated data parallelism: torch DDP over the mesh's dp_replicate dimension."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel


def apply_ddp(model: nn.Module, mesh: DeviceMesh, device: torch.device) -> DistributedDataParallel:
    """Wrap `model`; gradients are all-reduced (averaged) over dp_replicate in buckets during
    backward, and are views into those buckets."""
    return DistributedDataParallel(
        model,
        device_mesh=mesh["dp_replicate"],
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,  # gradients live in the buckets: no second copy of them
    )
