"""Process launch. A process started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
or by srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST) joins the job from its
environment; otherwise, with launcher.nproc_per_node x launcher.nnodes > 1, memtrain starts its
workers through torch's elastic agent (torchrun semantics)."""

from __future__ import annotations

import datetime
import logging
import os
import sys
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from memtrain.config.parallel import adopt_slurm_env, launched, world_size  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    owns_group: bool = False  # this process made the group (a lone process's one-rank group)
    set_env: tuple[str, ...] = ()  # environment variables it set for that group, removed with it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def needs_launch(cfg: DictConfig) -> bool:
    return not launched() and world_size(cfg) > 1


def init_distributed(backend: str | None, device: torch.device, local_rank_env: bool = False) -> DistEnv:
    """Join the process group of a launched job (torchrun, srun, memtrain's launcher), or make
    one for a lone process: rank 0 of a one-rank group over an in-memory store (torch's
    HashStore: no port, no rendezvous, nothing in the environment), so that every run has a
    process group and a DeviceMesh of the same dimension names. A process that already holds a
    group (a caller that made it) joins that one. `local_rank_env`: the lone process (or one
    joining a caller's group) also sets LOCAL_RANK=0 for the trainer's life (DeepSpeed reads the
    device index from the environment, in its engine and in ZeRO-3's partitioning); `shutdown`
    removes it. `device`: the training device; a launched rank on a GPU trains on
    cuda:LOCAL_RANK, which it makes current."""
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    timeout = datetime.timedelta(minutes=10)
    if launched():
        env = DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]),
                      owns_group=not dist.is_initialized())
        if env.owns_group:
            if device.type == "cuda":
                torch.cuda.set_device(env.local_rank)
            dist.init_process_group(backend, timeout=timeout)  # env://: RANK, WORLD_SIZE, MASTER_ADDR/PORT
        return env
    set_env = ("LOCAL_RANK",) if local_rank_env and "LOCAL_RANK" not in os.environ else ()
    if dist.is_initialized():  # the caller's group (a script's own, or an open trainer's): joined, left to its maker
        env = DistEnv(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size(), set_env=set_env)
        os.environ.update({key: str(env.local_rank) for key in env.set_env})
        return env
    env = DistEnv(0, 0, 1, owns_group=True, set_env=set_env)
    if device.type == "cuda" and device.index is not None:  # "cuda" alone: the current device, as it is
        torch.cuda.set_device(device)  # the device the one-rank mesh runs on
    os.environ.update({key: "0" for key in env.set_env})
    try:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    except BaseException:
        _forget(env.set_env)
        raise
    return env


def shutdown(env: DistEnv) -> None:
    """Destroy the process group this process made (a gloo job may abort at exit otherwise), and
    the environment it set for it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _forget(env.set_env)


def _forget(keys: tuple[str, ...]) -> None:
    for key in keys:
        os.environ.pop(key, None)


def launch_workers(cfg: DictConfig, overrides: list[str], run_dir: str) -> int:
    """Run `memtrain train OVERRIDES` in launcher.nproc_per_node workers on this node, all writing
    to run_dir, and wait for them (torch.distributed.launcher: the agent torchrun uses). Returns 0
    when every worker succeeded, else an exit code: 2 when every failed worker refused bad input
    (each printed its own paragraph), 128 + N when a signal N stopped the job, else 1."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    lc = cfg.launcher
    single_node = lc.nnodes == 1 and lc.rdzv_endpoint.endswith(":0")
    config = LaunchConfig(
        min_nodes=lc.nnodes,
        max_nodes=lc.nnodes,
        nproc_per_node=lc.nproc_per_node,
        run_id=str(uuid.uuid4()) if single_node else lc.rdzv_id,
        rdzv_backend=lc.rdzv_backend,
        rdzv_endpoint=lc.rdzv_endpoint,
        rdzv_configs={"rank": lc.node_rank} if not single_node else {},
        max_restarts=lc.max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
    )
    # as torchrun does: one thread per worker unless told otherwise, so workers do not oversubscribe
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // lc.nproc_per_node)))
    args = ["-m", "memtrain.cli", "train", *overrides, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    # the agent logs each step of a shutdown (signal received, signal forwarded); the workers and
    # this function report what happened in one line each
    elastic_logs = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                    if name.startswith("torch.distributed.elastic")]
    levels = [log.level for log in elastic_logs]
    for log in elastic_logs:
        log.setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*args)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        own = [c for c in codes if c > 0]  # negative: killed by a signal, e.g. the agent stopping the others
        if own and all(c == 2 for c in own):
            code = 2  # bad input: every worker that failed by itself said why
        elif not own or all(c > 128 for c in own):
            code = own[0] if own else 128 - codes[0]  # a signal stopped the job
        else:
            code = 1
        print(f"memtrain: the job stopped: {len(exc.failures)} of {lc.nproc_per_node * lc.nnodes} workers exited with "
              f"code(s) {', '.join(map(str, codes))} (negative: ended by that signal once another failed); their "
              "messages are above", file=sys.stderr)
        return code
    except SignalException as exc:  # this launcher got SIGINT/SIGTERM: the workers were stopped at a step boundary
        return 128 + int(exc.sigval)
    finally:
        for log, level in zip(elastic_logs, levels):
            log.setLevel(level)
    return 0
