"""Collectives with autograd, over a process group passed as an argument (nothing here is global):
used by Dynamic Axial Parallelism (memtrain.distributed.dap), context parallelism
(memtrain.distributed.context_parallel) and spatial parallelism (memtrain.distributed.spatial).

Gradients follow Megatron's convention for regions of replicated and sharded computation:
entering the sharded region (`scatter`) the backward all-gathers the shards' gradients; leaving
it (`gather_replicated`, into computation every rank repeats identically) the backward keeps this
rank's slice; a gather for local use inside the region (`gather`) reduce-scatters, since every
rank contributes part of the gradient. `all_to_all`'s backward is the inverse all-to-all.
Parameters of a sharded region get partial gradients, summed over the group by
`all_reduce_gradients`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed import ProcessGroup

# -- matched autograd pairs --------------------------------------------------------


def _all_gather(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    n = dist.get_world_size(group)
    x0 = x.movedim(dim, 0).contiguous()
    out = x0.new_empty((n * x0.shape[0], *x0.shape[1:]))
    dist.all_gather_into_tensor(out, x0, group=group)
    return out.movedim(0, dim)


def _reduce_scatter(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    n = dist.get_world_size(group)
    x0 = x.movedim(dim, 0).contiguous()
    out = x0.new_empty((x0.shape[0] // n, *x0.shape[1:]))
    dist.reduce_scatter_tensor(out, x0, group=group)
    return out.movedim(0, dim)


def local_shard(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    """This rank's slice of x along `dim` (no autograd pairing: for masks and other constants)."""
    return x.chunk(dist.get_world_size(group), dim=dim)[dist.get_rank(group)].contiguous()


def _all_to_all(x: torch.Tensor, split_dim: int, cat_dim: int, group: ProcessGroup) -> torch.Tensor:
    """Split x along split_dim into one piece per rank, send piece r to rank r, and concatenate
    what arrives along cat_dim (in rank order)."""
    n = dist.get_world_size(group)
    pieces = torch.stack(x.chunk(n, dim=split_dim))  # [n, ...]
    received = torch.empty_like(pieces)
    dist.all_to_all_single(received, pieces.contiguous(), group=group)
    return torch.cat(received.unbind(0), dim=cat_dim)


class _Pair(torch.autograd.Function):
    """A collective along one dim whose backward is its matching partner."""

    @staticmethod
    def forward(ctx, x, dim, group, forward_fn, backward_fn):
        ctx.dim, ctx.group, ctx.backward_fn = dim, group, backward_fn
        return forward_fn(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return ctx.backward_fn(grad, ctx.dim, ctx.group), None, None, None, None


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, split_dim, cat_dim, group):
        ctx.split_dim, ctx.cat_dim, ctx.group = split_dim, cat_dim, group
        return _all_to_all(x, split_dim, cat_dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.cat_dim, ctx.split_dim, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, split_dim: int, cat_dim: int, group: ProcessGroup) -> torch.Tensor:
    """Split x along split_dim, piece r to rank r, concatenate what arrives along cat_dim (rank
    order); backward: the inverse all-to-all (split along cat_dim, concatenate along split_dim)."""
    return _AllToAll.apply(x, split_dim, cat_dim, group)


def gather(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    """All-gather the shards along `dim`; backward: reduce-scatter (sum) of the gradient."""
    return _Pair.apply(x, dim, group, _all_gather, _reduce_scatter)


def gather_replicated(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    """All-gather the shards along `dim` into computation every rank repeats identically;
    backward: this rank's slice of the (identical) gradient."""
    return _Pair.apply(x, dim, group, _all_gather, local_shard)


def scatter(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    """This rank's shard of a replicated x along `dim`; backward: all-gather of the gradient."""
    return _Pair.apply(x, dim, group, local_shard, _all_gather)


def pad_to_multiple(x: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    """Zero-pad x along `dim` to a multiple of `multiple` (masks padded this way are 0)."""
    extra = -x.shape[dim] % multiple
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, extra]
    return F.pad(x, pad)


def all_reduce_gradients(module: nn.Module, group: ProcessGroup) -> None:
    """Sum every parameter's gradient over `group` (one flat buffer per dtype). DTensor gradients
    (FSDP, TP) are summed shard by shard: the group's ranks hold the same shard of each."""
    from torch.distributed.tensor import DTensor  # here: importing it takes most of a second

    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
             for p in module.parameters() if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat, group=group)
        offset = 0
        for g in same:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
