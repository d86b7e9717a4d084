"""Checks DAP's communication pairs on every rank against the full tensors each rank can compute
alone (same seed everywhere); exits non-zero on the first mismatch."""

from __future__ import annotations

import torch
import torch.distributed as dist

from memtrain.distributed.dap import col_to_row, gather, gather_replicated, pad_to_multiple, row_to_col, scatter

dist.init_process_group("gloo")
group, rank, n = dist.group.WORLD, dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
X, W, V = torch.randn(4, 6, 3), torch.randn(4, 6, 3), torch.randn(4, 6, 3)  # [S, R, C], same on every rank
rows, cols = X.chunk(n, 0)[rank], X.chunk(n, 1)[rank]
exact = dict(rtol=0, atol=0)  # pure data movement: bit-identical

# row_to_col / col_to_row move shards exactly, and their backwards are each other
x = rows.clone().requires_grad_()
y = row_to_col(x, group)
torch.testing.assert_close(y, cols, **exact)
torch.testing.assert_close(col_to_row(y, group), rows, **exact)
(W.chunk(n, 1)[rank] * y).sum().backward()  # the ranks' losses sum to (W * X).sum()
torch.testing.assert_close(x.grad, W.chunk(n, 0)[rank], **exact)

# gather of a replicated computation scaled by 1/n: backward reduce-scatters the gradient
x = rows.clone().requires_grad_()
g = gather(x, 0, group)
torch.testing.assert_close(g, X, **exact)
((V * g).sum() / n).backward()
# fp32 sum of n copies of V / n: round-off of one addition per rank
torch.testing.assert_close(x.grad, V.chunk(n, 0)[rank], rtol=1e-6, atol=1e-7)

# gather into a replicated computation (every rank the same loss): backward keeps the own slice
x = rows.clone().requires_grad_()
(V * gather_replicated(x, 0, group)).sum().backward()
torch.testing.assert_close(x.grad, V.chunk(n, 0)[rank], **exact)

# scatter of a replicated leaf: backward all-gathers the shards' gradients
x = X.clone().requires_grad_()
s = scatter(x, 1, group)
torch.testing.assert_close(s, cols, **exact)
(W.chunk(n, 1)[rank] * s).sum().backward()
torch.testing.assert_close(x.grad, W, **exact)

padded = pad_to_multiple(torch.ones(3, 5), dim=1, multiple=4)
assert padded.shape == (3, 8) and padded[:, 5:].abs().sum() == 0 and padded[:, :5].sum() == 15
print(f"rank {rank}: ok", flush=True)
dist.destroy_process_group()
