"""Context parallelism (torchtitan's and Megatron's `cp`) for long inputs: each of the cp ranks
holds a shard of every sequence's positions, and attention, the one operation that mixes
positions, crosses the shards in one of two exact ways. (Megatron's sequence parallelism, the norm
and dropout regions split along the sequence under tensor parallelism, is parallel.tp_sp.)

DeepSpeed-Ulysses (Jacobs et al. 2023, "DeepSpeed Ulysses", Section 3): a rank holds a contiguous
slice of the sequence. Before attention an all-to-all trades the sequence split for a head split,
so every rank attends over all S positions with H / cp of the heads; a second all-to-all trades
back. The pair is one autograd function each way (the backward of one is the other).

    q [B, H, S/cp, Dh] --all-to-all--> [B, H/cp, S, Dh] --attention--> --all-to-all--> [B, H, S/cp, Dh]

Ring Attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers", Section 3): a rank
keeps its queries and passes its K/V block to the next rank of the ring, cp - 1 times; each block's
partial attention is merged into the running result with the log-sum-exp (online softmax, Milakov &
Gimelshein 2018; FlashAttention's rescaling). Causal load balancing follows the zigzag assignment
(as in Megatron's context parallelism and ring-flash-attention): the sequence is cut into
2 cp chunks and rank r holds chunks r and 2 cp - 1 - r, so every rank does the same work and every
block is either fully visible, invisible, or the local causal square:

    step 0 (own K/V):         causal attention of the 2 local chunks on themselves
    K/V from rank s < r:      all local queries on the block's first chunk (s), no mask
    K/V from rank s > r:      the local second chunk (2 cp - 1 - r) on the whole block, no mask

The backward is a custom autograd.Function that runs the ring a second time: the K/V blocks travel
again, each with its dK/dV accumulator, which arrives at its owner after the cp-th hop; scores are
recomputed from the saved log-sum-exp (FlashAttention-2's backward, Dao 2023, Algorithm 2), so
nothing of size S x S is kept between forward and backward.

# DISCREPANCY: each block's scores are formed explicitly ([B, H, S/(2cp), S/(2cp)] transient,
# in float32) rather than by a fused flash kernel; memory per rank is O(block^2) transient,
# O(S/cp) saved.

Every collective takes its process group as an argument; nothing here is global.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from memtrain.config.errors import as_enum
from memtrain.config.schema import ContextParallelImpl

from memtrain.distributed.collectives import all_to_all

# -- which positions a rank holds -----------------------------------------------------------------


def shard_positions(seq_len: int, cp: int, rank: int, impl: ContextParallelImpl | str) -> torch.Tensor:
    """The positions (indices into [0, seq_len)) that context-parallel rank `rank` of `cp` holds,
    in the order it holds them: a contiguous slice for ulysses; chunks rank and 2 cp - 1 - rank
    of 2 cp equal chunks for ring (zigzag). `impl`: a ContextParallelImpl or its name."""
    impl = as_enum(impl, ContextParallelImpl)
    if impl is ContextParallelImpl.ulysses:
        if seq_len % cp:
            raise ValueError(f"sequence length {seq_len} is not divisible by cp={cp}")
        c = seq_len // cp
        return torch.arange(rank * c, (rank + 1) * c)
    if impl is ContextParallelImpl.ring:
        if seq_len % (2 * cp):
            raise ValueError(f"sequence length {seq_len} is not divisible by 2 x cp={2 * cp}")
        c = seq_len // (2 * cp)
        return torch.cat([torch.arange(rank * c, (rank + 1) * c), torch.arange((2 * cp - 1 - rank) * c, (2 * cp - rank) * c)])
    raise ValueError(f"unknown context-parallel implementation {impl.name!r}")


class SequenceShardedBatches:
    """Batches restricted to one context-parallel rank's positions: inputs and targets
    [B, S] -> [B, S/cp] at `positions` (targets stay aligned with their inputs, so the loss on the
    shards sums to the loss on the whole sequence)."""

    def __init__(self, batches, positions: torch.Tensor):
        self.batches, self.positions = batches, positions

    def batch(self, index: int, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.batches.batch(index, micro_batch_size)
        return inputs[:, self.positions].contiguous(), targets[:, self.positions].contiguous()



# -- Ulysses -------------------------------------------------------------------------------------


def _expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Grouped K/V [B, K, L, Dh] -> [B, H, L, Dh], each K/V head repeated for its H / K queries."""
    return x if x.shape[1] == n_heads else x.repeat_interleave(n_heads // x.shape[1], dim=1)


class UlyssesAttention(nn.Module):
    """Wraps an attention core (q [B, H, S, Dh], k, v [B, K, S, Dh] -> [B, H, S, Dh]) so that it
    runs on a contiguous sequence shard: q [B, H, S/cp, Dh], k, v [B, K, S/cp, Dh] ->
    [B, H, S/cp, Dh]. H must be divisible by cp; when K is not, K/V are first repeated to H heads
    (# DISCREPANCY: DeepSpeed requires K divisible by cp; this costs H/K times the K/V traffic)."""

    def __init__(self, core: nn.Module, group: ProcessGroup):
        super().__init__()
        self.core, self.group = core, group

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = dist.get_world_size(self.group)
        if k.shape[1] % n:
            k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
        q, k, v = (all_to_all(t, 1, 2, self.group) for t in (q, k, v))  # heads split, whole sequence
        out = self.core(q, k, v)
        return all_to_all(out, 2, 1, self.group)  # back to a sequence split, all heads


# -- Ring Attention --------------------------------------------------------------------------------


class _RingPass:
    """Send tensors to the next rank of the ring and receive the previous rank's, asynchronously
    (started before a block is computed, waited on after, so the transfer overlaps the compute)."""

    def __init__(self, tensors: list[torch.Tensor], group: ProcessGroup, tag: int = 0):
        n, r = dist.get_world_size(group), dist.get_rank(group)
        nxt, prv = dist.get_global_rank(group, (r + 1) % n), dist.get_global_rank(group, (r - 1) % n)
        self.shapes = [t.shape for t in tensors]
        self.send = torch.cat([t.reshape(-1) for t in tensors])
        self.recv = torch.empty_like(self.send)
        ops = [dist.P2POp(dist.isend, self.send, nxt, group, tag), dist.P2POp(dist.irecv, self.recv, prv, group, tag)]
        self.requests = dist.batch_isend_irecv(ops)

    def wait(self) -> list[torch.Tensor]:
        for req in self.requests:
            req.wait()
        out, offset = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            out.append(self.recv[offset:offset + size].view(shape))
            offset += size
        return out


def _scores(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """q [B, H, Lq, Dh], k [B, H, Lk, Dh] -> scaled scores [B, H, Lq, Lk] in float32, the upper
    triangle -inf when causal (Lq == Lk, same positions)."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return s


def _block_forward(q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [B, H, Lq, Dh] on one K/V block [B, K, Lk, Dh]: (out [B, H, Lq, Dh],
    lse [B, H, Lq]) in float32, out normalised within the block."""
    h = q.shape[1]
    s = _scores(q, _expand_kv(k, h), causal, scale)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse[..., None]), _expand_kv(v, h).float())
    return out, lse


def _merge(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """Fold a block's (out, lse) into the running (out, lse) in place (online softmax)."""
    new = torch.logaddexp(lse, block_lse)
    out.mul_(torch.exp(lse - new)[..., None]).add_(block_out * torch.exp(block_lse - new)[..., None])
    lse.copy_(new)


def _block_backward(do, q, k, v, lse, delta, causal: bool, scale: float):
    """Gradients of one block's share of the attention, from the final lse [B, H, Lq] and
    delta = rowsum(dO * O) [B, H, Lq]: (dq [B, H, Lq, Dh], dk, dv [B, K, Lk, Dh]) in float32."""
    h, kv = q.shape[1], k.shape[1]
    ke, ve = _expand_kv(k, h).float(), _expand_kv(v, h).float()
    p = torch.exp(_scores(q, ke, causal, scale) - lse[..., None])  # this block's softmax weights
    do = do.float()
    dv = torch.matmul(p.transpose(-1, -2), do)
    ds = p * (torch.matmul(do, ve.transpose(-1, -2)) - delta[..., None])
    dq = torch.matmul(ds, ke) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.float()) * scale
    if kv != h:  # sum over the queries sharing each K/V head
        b, _, lk, dh = dk.shape
        dk, dv = dk.view(b, kv, h // kv, lk, dh).sum(2), dv.view(b, kv, h // kv, lk, dh).sum(2)
    return dq, dk, dv


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group):
        n, r = dist.get_world_size(group), dist.get_rank(group)
        c = q.shape[2] // 2
        scale = 1.0 / math.sqrt(q.shape[-1])
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        kb, vb = k, v
        for step in range(n):
            src = (r - step) % n
            pending = _RingPass([kb, vb], group) if step < n - 1 else None
            if step == 0:
                _merge(out, lse, *_block_forward(q, kb, vb, True, scale))
            elif src < r:
                _merge(out, lse, *_block_forward(q, kb[:, :, :c], vb[:, :, :c], False, scale))
            else:
                _merge(out[:, :, c:], lse[:, :, c:], *_block_forward(q[:, :, c:], kb, vb, False, scale))
            if pending is not None:
                kb, vb = pending.wait()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group = group
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        group = ctx.group
        n, r = dist.get_world_size(group), dist.get_rank(group)
        c = q.shape[2] // 2
        scale = 1.0 / math.sqrt(q.shape[-1])
        delta = (grad_out.float() * out).sum(-1)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kb, vb = k, v
        dkb = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dvb = torch.zeros_like(dkb)
        for step in range(n):
            src = (r - step) % n
            pending = _RingPass([kb, vb], group) if step < n - 1 else None
            if step == 0:
                gq, gk, gv = _block_backward(grad_out, q, kb, vb, lse, delta, True, scale)
                dq += gq
                dkb += gk
                dvb += gv
            elif src < r:
                gq, gk, gv = _block_backward(grad_out, q, kb[:, :, :c], vb[:, :, :c], lse, delta, False, scale)
                dq += gq
                dkb[:, :, :c] += gk
                dvb[:, :, :c] += gv
            else:
                gq, gk, gv = _block_backward(grad_out[:, :, c:], q[:, :, c:], kb, vb, lse[:, :, c:], delta[:, :, c:], False, scale)
                dq[:, :, c:] += gq
                dkb += gk
                dvb += gv
            # the accumulators travel with their K/V block; the n-th hop returns them to its owner
            # (tag 1: in flight beside the K/V pass, tag 0)
            dkb, dvb = _RingPass([dkb, dvb], group, tag=1).wait() if n > 1 else (dkb, dvb)
            if pending is not None:
                kb, vb = pending.wait()
        return dq.to(q.dtype), dkb.to(k.dtype), dvb.to(v.dtype), None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Causal attention over a zigzag-sharded sequence (see shard_positions): q [B, H, 2c, Dh],
    k, v [B, K, 2c, Dh] (this rank's two chunks, c = S / (2 cp)) -> [B, H, 2c, Dh], exactly
    softmax(Q K^T / sqrt(Dh) + causal mask) V of the whole sequence at this rank's positions."""
    return _RingAttention.apply(q, k, v, group)


class RingAttention(nn.Module):
    """Attention core (q [B, H, S/cp, Dh], k, v [B, K, S/cp, Dh] -> [B, H, S/cp, Dh]) over the ring."""

    def __init__(self, group: ProcessGroup):
        super().__init__()
        self.group = group

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ring_attention(q, k, v, self.group)
