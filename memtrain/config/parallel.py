"""The degrees of the parallel dimensions a config asks for and the world size it runs on: light
tables that validation, the estimator and the launcher read (re-exported by memtrain.distributed.mesh
and memtrain.distributed.launch, which communicate)."""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass

from omegaconf import DictConfig
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from memtrain.config.errors import ConfigError

# Outermost first: pipeline stages span nodes, tensor parallelism stays inside a node.
DIMS = ("pp", "dp_replicate", "dp_shard", "spatial", "cp", "dap", "tp")


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    pp: int
    cp: int
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
                others = ", ".join(f"parallel.{d}={v}" for d, v in degrees.items() if v not in (1, -1)) or "all 1"
                raise ConfigError(f"parallel.{auto[0]}",
                                  f"parallel.{auto[0]}=-1 takes what the world size leaves, but the other degrees "
                                  f"({others}) multiply to {fixed}, which does not divide the world size {world_size} "
                                  "(launcher.nnodes x launcher.nproc_per_node, or WORLD_SIZE)")
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
        context-parallel ranks different positions of them; tensor-parallel (and dap) ranks
        score the same ones."""
        return self.dp * self.cp

    def build_mesh(self, device_type: str) -> DeviceMesh:
        shape = tuple(getattr(self, d) for d in DIMS)
        return init_device_mesh(device_type, shape, mesh_dim_names=DIMS)


def adopt_slurm_env(environ: dict[str, str] = os.environ) -> None:
    """Translate an srun task's SLURM_* variables into torch.distributed's (unless already set).
    Only a task of a job step counts: the batch script itself also has SLURM_PROCID=0 and the
    job's SLURM_NTASKS, but no SLURM_STEP_ID; a step's own task count is SLURM_STEP_NUM_TASKS."""
    if "RANK" in environ or "SLURM_PROCID" not in environ or "SLURM_STEP_ID" not in environ:
        return
    ntasks = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS"))
    if ntasks is None:
        return
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = ntasks
    environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in environ:
        nodelist = environ.get("SLURM_STEP_NODELIST", environ.get("SLURM_JOB_NODELIST", "localhost"))
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        environ["MASTER_ADDR"] = hosts.stdout.split()[0]
    environ.setdefault("MASTER_PORT", str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000))
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE", "").split("(")[0].split(",")[0]  # e.g. "2(x4)"
    if per_node.isdigit():
        environ.setdefault("LOCAL_WORLD_SIZE", per_node)


def launched() -> bool:
    """True inside a worker of a multi-process job (started by torchrun, srun or memtrain)."""
    adopt_slurm_env()
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size(cfg: DictConfig) -> int:
    if launched():
        return int(os.environ["WORLD_SIZE"])
    return cfg.launcher.nnodes * cfg.launcher.nproc_per_node
