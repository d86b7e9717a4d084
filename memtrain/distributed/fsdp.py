"""Fully sharded data parallelism with FSDP2 (`fully_shard`): every block, then the root, is
sharded over dp_shard (and replicated over dp_replicate for HSDP)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard


def apply_fsdp(
    model: nn.Module,
    blocks: nn.ModuleList,
    mesh: DeviceMesh,
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    reshard_after_forward: bool,
    cpu_offload: bool,
    pin_memory: bool,
) -> nn.Module:
    """Shard `model` in place. hsdp: a 2-D (dp_replicate, dp_shard) mesh; fsdp: dp_shard only.
    reshard_after_forward applies to the blocks (all but the last); the root never reshards."""
    dp_mesh = mesh["dp_replicate", "dp_shard"] if mesh["dp_replicate"].size() > 1 else mesh["dp_shard"]
    kwargs = dict(
        mesh=dp_mesh,
        mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype),
        offload_policy=CPUOffloadPolicy(pin_memory=pin_memory) if cpu_offload else OffloadPolicy(),
    )
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by the backward: keep them gathered
        fully_shard(block, reshard_after_forward=reshard_after_forward and i < len(blocks) - 1, **kwargs)
    # the root's parameters (embedding, final norm, output head) stay gathered after the forward,
    # as torch's own default for a root does: the root's forward spans the whole model, so the
    # backward would gather them again at once; and a fused loss head (memtrain.models.gpt.loss)
    # uses the head's weight after the forward has returned
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model
