"""Dynamic Axial Parallelism (FastFold, Cheng et al. 2022): every rank of the dap group keeps all
parameters; the MSA representation [*, N_seq, N_res, C_m] and the pair representation
[*, N_res, N_res, C_z] are split along one axis, and each Evoformer sub-module runs on its
local shard. The split axis is switched by matched autograd all-to-all pairs (row_to_col /
col_to_row), and the few operands that need a whole axis are all-gathered.

Gradients follow Megatron's convention for regions of replicated and sharded computation:
entering the sharded region (`scatter`) the backward all-gathers the shards' gradients; leaving
it (`gather_replicated`, into computation every rank repeats identically) the backward keeps this
rank's slice; a gather for local use inside the region (`gather`, e.g. the pair bias each rank's
rows attend with) reduce-scatters, since every rank contributes part of the gradient. Parameters
of the sharded region get partial gradients, summed over the dap group by all_reduce_gradients;
those of the replicated region get identical, complete ones.

The collectives themselves (all_to_all, gather, gather_replicated, scatter, all_reduce_gradients)
are generic and live in memtrain.distributed.collectives; this module adds DAP's axis switch. Every
collective takes its process group as an argument; nothing here is global.
"""

from __future__ import annotations

import torch
from torch.distributed import ProcessGroup

from memtrain.distributed.collectives import all_to_all

# -- the DAP axis switch: the MSA's and pair's split axis, rows <-> columns -------------------------


def row_to_col(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """[*, A/n, B, C] (split along A) -> [*, A, B/n, C] (split along B)."""
    return all_to_all(x, -2, -3, group)


def col_to_row(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """[*, A, B/n, C] -> [*, A/n, B, C]; the inverse (and the backward) of row_to_col."""
    return all_to_all(x, -3, -2, group)
