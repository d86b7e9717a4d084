"""ParallelDims: the validated degrees of every parallel dimension, and the named DeviceMesh
built from them. Passed explicitly to everything that communicates; no module-level groups."""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh

from memtrain.config.parallel import DIMS, ParallelDims  # noqa: F401  (re-exported)


def dp_rank(mesh: DeviceMesh | None) -> int:
    """This rank's index among the data-parallel ranks (replicate-major)."""
    if mesh is None:
        return 0
    return mesh.get_local_rank("dp_replicate") * mesh["dp_shard"].size() + mesh.get_local_rank("dp_shard")
