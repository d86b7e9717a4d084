"""ParallelDims: the validated degrees of every parallel dimension, and the named DeviceMesh
built from them. Passed explicitly to everything that communicates; no module-level groups."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from memtrain.config.errors import ConfigError

# Outermost first: pipeline stages span nodes, tensor parallelism stays inside a node.
DIMS = ("pp", "dp_replicate", "dp_shard", "spatial", "sp", "dap", "tp")


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    pp: int
    sp: int
    dap: int
    world_size: int
    spatial: int = 1  # one sample's grid split in slabs (weather models)

    @classmethod
    def from_config(cls, p: DictConfig, world_size: int) -> "ParallelDims":
        """Resolve a -1 degree from the world size and check that the degrees multiply to it."""
        degrees = {d: int(p[d]) for d in DIMS}
        auto = [d for d, v in degrees.items() if v == -1]
        shown = ", ".join(f"parallel.{d}={v}" for d, v in degrees.items() if v != 1)
        if len(auto) > 1:
            raise ConfigError(f"parallel.{auto[1]}", f"only one degree may be -1 (got {shown})")
        bad = [d for d, v in degrees.items() if v < 1 and v != -1]
        if bad:
            raise ConfigError(f"parallel.{bad[0]}", f"degrees are -1 (fill the world) or at least 1, got {degrees[bad[0]]}")
        fixed = math.prod(v for v in degrees.values() if v != -1)
        if auto:
            if world_size % fixed:
                raise ConfigError(f"parallel.{auto[0]}",
                                  f"the other degrees ({shown}) multiply to {fixed}, which does not divide the world size {world_size}")
            degrees[auto[0]] = world_size // fixed
        elif fixed != world_size:
            raise ConfigError("parallel", f"the degrees ({shown or 'all 1'}) multiply to {fixed}, but the world size "
                                          f"(launcher.nnodes x launcher.nproc_per_node, or WORLD_SIZE) is {world_size}")
        return cls(world_size=world_size, **degrees)

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def batch_shards(self) -> int:
        """Ranks that score disjoint targets: data-parallel ranks take different samples and
        sequence-parallel ranks different positions of them; tensor-parallel (and dap) ranks
        score the same ones."""
        return self.dp * self.sp

    def build_mesh(self, device_type: str) -> DeviceMesh:
        shape = tuple(getattr(self, d) for d in DIMS)
        return init_device_mesh(device_type, shape, mesh_dim_names=DIMS)


def dp_rank(mesh: DeviceMesh | None) -> int:
    """This rank's index among the data-parallel ranks (replicate-major)."""
    if mesh is None:
        return 0
    return mesh.get_local_rank("dp_replicate") * mesh["dp_shard"].size() + mesh.get_local_rank("dp_shard")
