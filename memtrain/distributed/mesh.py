"""ParallelDims: the validated degrees of every parallel dimension, and the named DeviceMesh
built from them. Passed explicitly to everything that communicates; no module-level groups.

Every run has a mesh, a one-rank run too (all degrees 1, the same dimension names). Sums over
ranks go over 1-D meshes flattened from it (torchtitan's `dp_cp` and `dp`), so a rank never
counts what another rank of its sub-mesh also holds, and nothing is rescaled by the world size:

* `batch_mesh`: (dp_replicate, dp_shard, cp) flattened: the ranks that score disjoint targets
  (data-parallel ranks take different samples, context-parallel ranks different positions);
  tensor-parallel, DAP, spatial and pipeline ranks share theirs;
* `data_parallel_mesh`: (dp_replicate, dp_shard) flattened: the ranks that take different samples.

Both are made (a collective over every rank) on first use and kept by the root mesh, so every
rank must ask for them in the same order, as the Trainer does while it builds."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from memtrain.config.parallel import DIMS, ParallelDims  # noqa: F401  (re-exported)

BATCH_DIMS = ("dp_replicate", "dp_shard", "cp")  # ranks scoring disjoint targets (ParallelDims.batch_shards)
DATA_PARALLEL_DIMS = ("dp_replicate", "dp_shard")  # ranks taking different samples (ParallelDims.dp)


def batch_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D mesh of the ranks holding disjoint targets (size ParallelDims.batch_shards), the
    one this rank belongs to: `mesh`'s (dp_replicate, dp_shard, cp) flattened as "dp_cp"."""
    return mesh[BATCH_DIMS]._flatten("dp_cp")


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D mesh of the data-parallel ranks (size ParallelDims.dp), replicate-major: `mesh`'s
    (dp_replicate, dp_shard) flattened as "dp"."""
    return mesh[DATA_PARALLEL_DIMS]._flatten("dp")


def dp_rank(mesh: DeviceMesh) -> int:
    """This rank's index among the data-parallel ranks (replicate-major)."""
    return data_parallel_mesh(mesh).get_local_rank()


def sum_over(value: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """`value` summed in place over the ranks of the 1-D `mesh` (all-reduce, no host read). On a
    one-rank mesh nothing is called: the sum is the value, and no communicator is created for it
    (NCCL would allocate one on the GPU for a one-rank group at its first collective)."""
    if mesh.size() > 1:
        dist.all_reduce(value, group=mesh.get_group())
    return value
