"""Spatial parallelism: one sample's grid split into contiguous slabs along one axis (latitude for
the weather models) over the ranks of a spatial group, each rank running the model on its slab.

Windowed attention needs no communication when the slabs are made of whole windows; the shifted
windows (a cyclic roll of the grid by half a window) need a halo exchange: rolling by -s moves the
first s rows of every slab to the end of the previous rank's slab (cyclically, as the roll wraps),
and the backward of a roll by k is the roll by -k. `cyclic_shift` is that pair.

Every rank keeps all parameters; each computes the part of their gradients that its slab
contributes, so the gradients are summed over the group after backward (`all_reduce_gradients`
of memtrain.distributed.collectives). Every collective takes its process group as an argument.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup


def _roll(x: torch.Tensor, shift: int, dim: int, group: ProcessGroup) -> torch.Tensor:
    """The local slab of torch.roll(x_global, shift, dim), x_global the concatenation of the slabs
    along `dim` in group-rank order; |shift| at most a slab."""
    n, r = dist.get_world_size(group), dist.get_rank(group)
    if shift == 0:
        return x
    if n == 1:
        return torch.roll(x, shift, dim)
    s = abs(shift)
    if shift < 0:  # out = [x[s:], next rank's x[:s]]: send x[:s] to the previous rank
        send, keep, to, frm = x.narrow(dim, 0, s), x.narrow(dim, s, x.shape[dim] - s), (r - 1) % n, (r + 1) % n
    else:  # out = [previous rank's x[-s:], x[:-s]]: send x[-s:] to the next rank
        send, keep, to, frm = x.narrow(dim, x.shape[dim] - s, s), x.narrow(dim, 0, x.shape[dim] - s), (r + 1) % n, (r - 1) % n
    send = send.contiguous()
    recv = torch.empty_like(send)
    ops = [dist.P2POp(dist.isend, send, dist.get_global_rank(group, to), group),
           dist.P2POp(dist.irecv, recv, dist.get_global_rank(group, frm), group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return torch.cat([keep, recv] if shift < 0 else [recv, keep], dim=dim)


class _CyclicShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, dim, group):
        ctx.shift, ctx.dim, ctx.group = shift, dim, group
        return _roll(x, shift, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _roll(grad, -ctx.shift, ctx.dim, ctx.group), None, None, None


def cyclic_shift(x: torch.Tensor, shift: int, dim: int, group: ProcessGroup) -> torch.Tensor:
    """torch.roll(x, shift, dim) of the grid split along `dim` over `group`, on this rank's slab;
    backward: the opposite shift of the gradient."""
    return _CyclicShift.apply(x, shift, dim, group)


def slab(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    """This rank's slab of a replicated x along `dim` (equal slabs)."""
    n, r = dist.get_world_size(group), dist.get_rank(group)
    size = x.shape[dim] // n
    return x.narrow(dim, r * size, size)
