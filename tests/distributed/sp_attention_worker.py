"""Worker for the sequence-parallel attention tests (2+ gloo ranks): Ulysses and Ring Attention on
each rank's shard of q, k, v against causal SDPA on the whole sequence, forward and backward.
Prints '<rank>: ok' when every check passed (an assertion fails the process otherwise)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from memtrain.distributed.sequence_parallel import RingAttention, UlyssesAttention, shard_positions
from memtrain.models.gpt.model import CoreAttention


def reference(q, k, v, w):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
    (out * w).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def check(name, attention, impl, heads, kv_heads, seq, group):
    n, r = dist.get_world_size(group), dist.get_rank(group)
    g = torch.Generator().manual_seed(seq * 100 + heads * 10 + kv_heads)  # the same tensors on every rank
    b, dh = 2, 8
    q = torch.randn(b, heads, seq, dh, generator=g)
    k, v = torch.randn(b, kv_heads, seq, dh, generator=g), torch.randn(b, kv_heads, seq, dh, generator=g)
    w = torch.randn(b, heads, seq, dh, generator=g)
    out, dq, dk, dv = reference(q, k, v, w)
    pos = shard_positions(seq, n, r, impl)
    ql, kl, vl = (t[:, :, pos].clone().requires_grad_() for t in (q, k, v))
    outl = attention(ql, kl, vl)
    (outl * w[:, :, pos]).sum().backward()
    # fp32: the same softmax sums, blockwise (log-sum-exp merges) or after all-to-alls, in another
    # order than SDPA's; differences are round-off of O(1e-6) relative to values of O(1)
    tol = dict(rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(outl, out[:, :, pos], **tol, msg=f"{name}: output")
    for got, want, what in ((ql.grad, dq, "dq"), (kl.grad, dk, "dk"), (vl.grad, dv, "dv")):
        torch.testing.assert_close(got, want[:, :, pos], **tol, msg=f"{name}: {what}")


def main() -> None:
    dist.init_process_group("gloo")
    group = dist.new_group(list(range(dist.get_world_size())))
    n = dist.get_world_size()
    ring, ulysses = RingAttention(group), UlyssesAttention(CoreAttention(), group)
    for heads, kv_heads in ((4, 4), (4, 2), (4, 1)):
        check(f"ring h{heads} kv{kv_heads}", ring, "ring", heads, kv_heads, 8 * n, group)
        check(f"ulysses h{heads} kv{kv_heads}", ulysses, "ulysses", heads, kv_heads, 6 * n, group)
    print(f"{dist.get_rank()}: ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
