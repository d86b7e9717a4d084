"""Cross-field validation of a composed config: every impossible combination is refused here,
with the keys at fault, before a process starts or a model is built."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from memtrain.config.errors import enum_names, require
from memtrain.distributed.launch import world_size
from memtrain.distributed.mesh import DIMS, ParallelDims
from memtrain.models import get_spec

IMPLEMENTED_PARALLEL = ("single", "ddp", "fsdp", "hsdp", "zero1", "zero2", "zero3", "dap", "spatial")
# which parallel options each offload works with
OFFLOAD_SUPPORT = {
    "none": IMPLEMENTED_PARALLEL,
    "activations_cpu": IMPLEMENTED_PARALLEL,
    "optimizer_cpu": ("zero1", "zero2", "zero3"),
    "params_cpu": ("zero3", "fsdp", "hsdp"),
    "nvme": ("zero3",),
}


def validate(cfg: DictConfig) -> None:
    _validate_keys(cfg)
    _validate_parallel(cfg.parallel)
    _validate_precision(cfg.precision)
    _validate_trainer(cfg.trainer)
    _validate_offload(cfg)
    _validate_launch(cfg)
    ac = cfg.checkpoint
    require(ac.every_k >= 1, "checkpoint.every_k", f"must be at least 1, got {ac.every_k}")
    require(cfg.optimizer.lr > 0, "optimizer.lr", f"must be positive, got {cfg.optimizer.lr}")
    require(cfg.data.seq_len >= 1, "data.seq_len", f"must be at least 1, got {cfg.data.seq_len}")
    spec = get_spec(cfg.model.arch)
    require(cfg.parallel.name != "dap" or spec.parallelize is not None, "parallel",
            f"parallel=dap (Dynamic Axial Parallelism) splits AlphaFold's representations; model.arch={cfg.model.arch} has none")
    require(cfg.parallel.name != "spatial" or spec.spatial, "parallel",
            f"parallel=spatial splits a weather model's latitude grid; model.arch={cfg.model.arch} has none (use model=pangu*)")
    spec.validate(cfg)


def _validate_keys(cfg: DictConfig) -> None:
    """Refuse keys that no schema declares, including those added with Hydra's `+key=value`."""
    nodes = [("", cfg)] + [(f"{k}.", cfg[k]) for k in cfg if isinstance(cfg[k], DictConfig)]
    for prefix, node in nodes:
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            fields = [f.name for f in dataclasses.fields(schema)]
            extra = [k for k in node if k not in fields]
            require(not extra, f"{prefix}{extra[0] if extra else ''}", f"unknown key '{extra[0] if extra else ''}'",
                    allowed=[f for f in fields if not f.startswith("_")], allowed_label="Allowed keys")


def _validate_parallel(p: DictConfig) -> None:
    require(p.name in IMPLEMENTED_PARALLEL, "parallel.name", f"unknown parallel mode {p.name!r}",
            allowed=IMPLEMENTED_PARALLEL)
    if p.name == "single":
        bad = [f"parallel.{k}={p[k]}" for k in DIMS if p[k] != 1]
        require(not bad, bad[0].split("=")[0] if bad else "parallel",
                f"parallel=single runs one process, so every degree must be 1 (got {', '.join(bad)})")
    model_parallel = [f"parallel.{k}={p[k]}" for k in ("tp", "pp", "sp") if p[k] != 1]
    require(not model_parallel, model_parallel[0].split("=")[0] if model_parallel else "parallel",
            f"{', '.join(model_parallel)}: tensor, pipeline, sequence and axial parallelism are not available yet")
    require(p.dap == 1 or p.name == "dap", "parallel.dap", f"dap={p.dap} needs parallel=dap (got parallel={p.name})")
    require(p.name != "dap" or p.dp_shard == 1, "parallel.dp_shard",
            "parallel=dap composes with replicated data parallelism (parallel.dp_replicate), not sharded")
    require(p.spatial == 1 or p.name == "spatial", "parallel.spatial", f"spatial={p.spatial} needs parallel=spatial (got parallel={p.name})")
    require(p.name != "spatial" or (p.dp_shard == 1 and p.dp_replicate == 1), "parallel.dp_replicate",
            "parallel=spatial does not compose with data parallelism yet: parallel.dp_replicate and parallel.dp_shard must be 1")
    if p.name.startswith("zero"):
        require(importlib.util.find_spec("deepspeed") is not None, "parallel",
                f"parallel={p.name} needs DeepSpeed (pip install deepspeed)")


def _validate_offload(cfg: DictConfig) -> None:
    name, parallel = cfg.offload.name, cfg.parallel.name
    require(name in OFFLOAD_SUPPORT, "offload.name", f"unknown offload {name!r}", allowed=OFFLOAD_SUPPORT)
    require(parallel in OFFLOAD_SUPPORT[name], "offload.name",
            f"offload={name} does not work with parallel={parallel}", allowed_label="It works with parallel",
            allowed=OFFLOAD_SUPPORT[name])


def _validate_launch(cfg: DictConfig) -> None:
    lc = cfg.launcher
    for key in ("nproc_per_node", "nnodes"):
        require(lc[key] >= 1, f"launcher.{key}", f"must be at least 1, got {lc[key]}")
    require(0 <= lc.node_rank < lc.nnodes, "launcher.node_rank", f"must be in [0, nnodes={lc.nnodes}), got {lc.node_rank}")
    require(lc.nnodes == 1 or not lc.rdzv_endpoint.endswith(":0"), "launcher.rdzv_endpoint",
            "a multi-node job needs a reachable rendezvous host:port, the same on every node")
    world = world_size(cfg)
    ParallelDims.from_config(cfg.parallel, world)
    device = enum_names(cfg.trainer.device)
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", lc.nproc_per_node))
        require(per_node <= max(1, torch.cuda.device_count()), "launcher.nproc_per_node",
                f"{per_node} processes per node but {torch.cuda.device_count()} CUDA devices are visible")


def _validate_precision(p: DictConfig) -> None:
    param, compute = enum_names(p.param_dtype), enum_names(p.compute_dtype)
    require(param != "float16", "precision.param_dtype",
            "float16 parameters need fp32 master weights; use param_dtype=float32 with compute_dtype=float16",
            allowed=["float32", "bfloat16"])
    require(not (param == "bfloat16" and compute != "bfloat16"), "precision.compute_dtype",
            f"bfloat16 parameters compute in bfloat16, got compute_dtype={compute}")
    require(not (compute == "float16" and not p.loss_scaling), "precision.loss_scaling",
            "compute_dtype=float16 needs loss_scaling=true: fp16 gradients underflow without it")
    require(not (p.loss_scaling and compute == "float32"), "precision.loss_scaling",
            "loss scaling only applies to reduced-precision compute (float16 or bfloat16)")
    require(p.init_scale > 0 and p.growth_factor > 1 and 0 < p.backoff_factor < 1 and p.growth_interval >= 1,
            "precision.init_scale", "loss scaler needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1")


def _validate_trainer(t: DictConfig) -> None:
    for key in ("max_steps", "micro_batch_size", "grad_accum", "log_every"):
        require(t[key] >= 1, f"trainer.{key}", f"must be at least 1, got {t[key]}")
    for key in ("save_every", "keep_last", "warmup_steps"):
        require(t[key] >= 0, f"trainer.{key}", f"must be 0 or more, got {t[key]}")
    require(t.grad_clip >= 0, "trainer.grad_clip", f"must be 0 (off) or positive, got {t.grad_clip}")
    require(0 <= t.min_lr_ratio <= 1, "trainer.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
    require(t.resume in ("none", "auto") or (Path(t.resume) / "meta.json").is_file(), "trainer.resume",
            f"{t.resume!r} is not a checkpoint folder (step_<N>/ with meta.json)", allowed=["none", "auto", "<path>"])
    device = enum_names(t.device)
    require(device != "cuda" or torch.cuda.is_available(), "trainer.device", "cuda requested but no CUDA device is visible",
            allowed=["auto", "cpu"])
    require(not t.tensorboard or importlib.util.find_spec("tensorboard") is not None, "trainer.tensorboard",
            "the tensorboard package is not installed (pip install tensorboard)")
