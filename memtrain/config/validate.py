"""Cross-field validation of a composed config: every impossible combination is refused here,
with the keys at fault, before a process starts or a model is built."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from memtrain.config.errors import as_enum, require
from memtrain.config.init_device import meta_refusal
from memtrain.config.families import check_model_parallel, get_spec
from memtrain.config.optimizer_compat import validate_optimizer
from memtrain.config.parallel import DIMS, ParallelDims, world_size
from memtrain.config.parallel_options import (OFFLOAD_OPTIONS, Backend, offload_option, parallel_option,
                                               parallel_options_for, parallel_options_with)
from memtrain.config.pipeline_schedules import validate_pipeline
from memtrain.config.quantization import validate_quantization
from memtrain.config.schema import Check, DataSource, Device, DType, InitDevice

# which parallel options each offload works with (memtrain.config.parallel_options, by offload)
OFFLOAD_SUPPORT = {offload: parallel_options_for(offload) for offload in OFFLOAD_OPTIONS}


MAX_BLOCKS = 1024  # blocks per model (the largest published transformers have under 200)


def validate(cfg: DictConfig) -> None:
    _validate_keys(cfg)
    check_values(cfg)
    _validate_parallel(cfg.parallel)
    _validate_precision(cfg.precision)
    validate_quantization(cfg)
    _validate_trainer(cfg.trainer)
    _validate_offload(cfg)
    _validate_paths(cfg)
    dims = _validate_launch(cfg)  # the degrees, resolved once for the checks below
    validate_hardware(cfg.hardware)
    require(not (cfg.trainer.compile and not parallel_option(cfg).compiles), "trainer.compile",
            f"regional compilation is applied by the torch strategies, not DeepSpeed's (parallel={cfg.parallel.name})")
    require(not (cfg.trainer.compile and cfg.parallel.pp != 1), "trainer.compile",
            f"regional compilation is not applied to pipeline stages (parallel.pp={cfg.parallel.pp}); use trainer.compile=false")
    ac = cfg.activation_checkpoint
    require(ac.every_k >= 1, "activation_checkpoint.every_k", f"must be at least 1, got {ac.every_k}")
    require(cfg.optimizer.lr > 0, "optimizer.lr", f"must be positive, got {cfg.optimizer.lr}")
    require(cfg.data.seq_len >= 1, "data.seq_len", f"must be at least 1, got {cfg.data.seq_len}")
    check_model_parallel(cfg.model.arch, vars(dims))  # before the family's own checks of those degrees
    validate_optimizer(cfg)
    spec = get_spec(cfg.model.arch)
    blocks = spec.num_blocks(cfg.model)
    require(blocks <= MAX_BLOCKS, "model", f"the model has {blocks} blocks; memtrain builds at most {MAX_BLOCKS} (its "
                                           "tools build every block's shapes, and the largest published transformers "
                                           "have under 200)")
    require(cfg.trainer.eval_every == 0 or spec.build_evaluator is not None, "trainer.eval_every",
            f"model.arch={cfg.model.arch} has no evaluation step; use trainer.eval_every=0")
    require(cfg.trainer.eval_every == 0 or cfg.parallel.pp == 1, "trainer.eval_every",
            f"the evaluation step runs the whole model, not pipeline stages (parallel.pp={cfg.parallel.pp})")
    if as_enum(cfg.trainer.init_device, InitDevice) is InitDevice.meta:
        reason = meta_refusal(cfg, spec.init_weights is not None)
        require(reason is None, "trainer.init_device", reason or "")
    spec.validate(cfg, dims)
    validate_pipeline(cfg, dims.pp, blocks)


def check_values(node: DictConfig, prefix: str = "") -> None:
    """Every value against the check its schema field declares (memtrain.config.schema.checked),
    and every float finite, at any depth."""
    schema = OmegaConf.get_type(node)
    checks = {f.name: f.metadata["check"] for f in dataclasses.fields(schema) if "check" in f.metadata} \
        if dataclasses.is_dataclass(schema) else {}
    for key in node:
        value, full = node[key], f"{prefix}{key}"
        if isinstance(value, DictConfig):
            check_values(value, f"{full}.")
            continue
        items = list(value) if isinstance(value, ListConfig) else [value]
        for item in items:
            require(not isinstance(item, float) or math.isfinite(item), full, f"must be a finite number, got {value}")
        if key in checks and value is not None:
            _check_value(checks[key], full, value, items)


def _check_value(check: Check, key: str, value: object, items: list) -> None:
    if check.length is not None:
        require(isinstance(value, ListConfig) and len(items) == check.length, key,
                f"must be a list of {check.length} values, got {value}")
    for item in items:
        if item is None:
            continue
        if check.choices is not None:
            require(item in check.choices, key, f"unknown value {item!r}", allowed=check.choices)
            continue
        ok = all(bound is None or cmp(item, bound) for bound, cmp in (
            (check.ge, lambda a, b: a >= b), (check.gt, lambda a, b: a > b),
            (check.le, lambda a, b: a <= b), (check.lt, lambda a, b: a < b)))
        require(ok, key, f"must be {check.describe()}" + (" (each value)" if len(items) > 1 else "") + f", got {value}")


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
    opt = parallel_option(p)  # a ConfigError at parallel.name for an unknown option
    if not opt.needs_process_group:
        bad = [f"parallel.{k}={p[k]}" for k in DIMS if p[k] != 1]
        require(not bad, bad[0].split("=")[0] if bad else "parallel",
                f"parallel={p.name} runs one process, so every degree must be 1 (got {', '.join(bad)})")
    _validate_model_parallel(p)
    _require_composes(p, "dap")
    _require_composes(p, "spatial")
    _require_data_parallel(p)
    if opt.backend is Backend.DEEPSPEED:
        require(importlib.util.find_spec("deepspeed") is not None, "parallel",
                f"parallel={p.name} needs DeepSpeed (pip install deepspeed)")


def _require_data_parallel(p: DictConfig) -> None:
    """parallel.dp_replicate / dp_shard other than 1 only under an option that takes that
    data-parallel dimension (ParallelOption.dp_dims)."""
    opt = parallel_option(p)
    if not opt.needs_process_group:
        return  # checked with every other degree
    bad = [f"parallel.{k}={p[k]}" for k in ("dp_replicate", "dp_shard") if p[k] != 1 and k not in opt.dp_dims]
    if not bad:
        return
    key = bad[0].split("=")[0]
    if opt.dp_dims:
        takes = " and ".join(f"parallel.{d}" for d in opt.dp_dims)
        require(False, key, f"parallel={p.name} composes with data parallelism over {takes} only (got {', '.join(bad)})")
    own = [d for d in opt.model_dims if d == p.name]
    hosts = [o for o in parallel_options_with(own[0]) if o != p.name and parallel_option(o).dp_dims] if own else []
    hint = f"; use parallel={' or '.join(hosts)} with parallel.{own[0]}" if hosts else ""
    require(False, key, f"parallel={p.name} has no data parallelism (got {', '.join(bad)}){hint}")


def _require_composes(p: DictConfig, dim: str) -> None:
    """parallel.<dim> other than 1 only under a parallel option that composes with it
    (ParallelOption.model_dims in memtrain.config.parallel_options)."""
    options = parallel_options_with(dim)
    listed = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]
    require(p[dim] == 1 or dim in parallel_option(p).model_dims, f"parallel.{dim}",
            f"parallel.{dim}={p[dim]} composes with parallel={listed}, not parallel={p.name}", allowed=options)


def _validate_model_parallel(p: DictConfig) -> None:
    """Which parallel options tensor (tp) and context (cp) parallelism compose with."""
    tp, cp = p.tp != 1, p.cp != 1
    require(not p.tp_sp or tp, "parallel.tp_sp", "sequence parallelism of the norms needs parallel.tp > 1")
    require(not (tp and cp), "parallel.cp", f"parallel.tp={p.tp} with parallel.cp={p.cp}: tensor and context "
                                            "parallelism together are not supported; choose one")
    require(not ((tp or cp) and p.pp != 1), "parallel.pp",
            f"parallel.pp={p.pp} with parallel.tp={p.tp}, parallel.cp={p.cp}: pipeline stages do not take a "
            "tensor- or context-parallel plan yet; use pipeline parallelism with data parallelism only")
    _require_composes(p, "tp")
    _require_composes(p, "cp")


def _path_kind(key: str, path: Path) -> str:
    """'file', 'dir', 'missing' or 'other' for `path`; a path the system cannot even look up (a
    component too long, a loop of links) is a ConfigError naming `key`."""
    try:
        if path.is_dir():
            return "dir"
        if path.is_file():
            return "file"
        return "other" if path.exists() else "missing"
    except OSError as exc:
        require(False, key, f"{str(path)[:120]}{'...' if len(str(path)) > 120 else ''}: {exc.strerror or exc}")
        raise  # unreachable: require raised


def _validate_paths(cfg: DictConfig) -> None:
    """Folders and files named in the config exist and are usable, before anything starts."""
    root = cfg.data.get("root")
    if root is not None and as_enum(cfg.data.source, DataSource) is not DataSource.synthetic:  # random tokens read no files
        kind = _path_kind("data.root", Path(root))
        require(kind != "missing", "data.root", f"{root} does not exist")
        data_file = as_enum(cfg.data.source, DataSource) is DataSource.era5 and Path(root).suffix in (".nc", ".zarr")  # one ERA5 file
        require(kind == "dir" or data_file, "data.root",
                f"{root} is not a folder (data.root names the folder that holds the data files)")
        require(os.access(root, os.R_OK | os.X_OK), "data.root", f"{root}: permission denied (this user cannot list it)")
    stats = cfg.data.get("stats")
    if stats is not None:
        require(_path_kind("data.stats", Path(stats)) in ("file", "dir"), "data.stats", f"{stats} does not exist")
    if offload_option(cfg).uses_nvme:
        path = str(cfg.offload.nvme_path).strip()
        require(path != "", "offload.nvme_path", "offload=nvme needs a folder on a fast local disk for its swap files, "
                                                 "got an empty path")
        target = Path(path).expanduser().absolute()
        existing = next(p for p in (target, *target.parents) if _path_kind("offload.nvme_path", p) != "missing")
        require(existing.is_dir(), "offload.nvme_path", f"{existing} is not a folder")
        require(os.access(existing, os.W_OK | os.X_OK), "offload.nvme_path", f"{existing}: permission denied (not writable)")


def _validate_offload(cfg: DictConfig) -> None:
    name, parallel = offload_option(cfg).name, cfg.parallel.name  # a ConfigError for an unknown offload
    require(name in parallel_option(cfg).offloads, "offload.name",
            f"offload={name} does not work with parallel={parallel}", allowed_label="It works with parallel",
            allowed=OFFLOAD_SUPPORT[name])


def _validate_launch(cfg: DictConfig) -> ParallelDims:
    lc = cfg.launcher
    for key in ("nproc_per_node", "nnodes"):
        require(lc[key] >= 1, f"launcher.{key}", f"must be at least 1, got {lc[key]}")
    require(0 <= lc.node_rank < lc.nnodes, "launcher.node_rank", f"must be in [0, nnodes={lc.nnodes}), got {lc.node_rank}")
    # the rendezvous a multi-node run needs is checked where it starts (memtrain.prereq), not for estimate or plan
    dims = ParallelDims.from_config(cfg.parallel, world_size(cfg))
    device = as_enum(cfg.trainer.device, Device)
    if device is Device.cuda or (device is Device.auto and torch.cuda.is_available()):
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", lc.nproc_per_node))
        require(per_node <= max(1, torch.cuda.device_count()), "launcher.nproc_per_node",
                f"{per_node} processes per node but {torch.cuda.device_count()} CUDA devices are visible")
    return dims


def _validate_precision(p: DictConfig) -> None:
    param, compute = as_enum(p.param_dtype, DType), as_enum(p.compute_dtype, DType)
    require(param is not DType.float16, "precision.param_dtype",
            "float16 parameters need fp32 master weights; use param_dtype=float32 with compute_dtype=float16",
            allowed=["float32", "bfloat16"])
    require(not (param is DType.bfloat16 and compute is not DType.bfloat16), "precision.compute_dtype",
            f"bfloat16 parameters compute in bfloat16, got compute_dtype={compute.name}")
    require(not (compute is DType.float16 and not p.loss_scaling), "precision.loss_scaling",
            "compute_dtype=float16 needs loss_scaling=true: fp16 gradients underflow without it")
    require(not (p.loss_scaling and compute is DType.float32), "precision.loss_scaling",
            "loss scaling only applies to reduced-precision compute (float16 or bfloat16)")
    require(p.init_scale > 0 and p.growth_factor > 1 and 0 < p.backoff_factor < 1 and p.growth_interval >= 1,
            "precision.init_scale", "loss scaler needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1")


def _validate_trainer(t: DictConfig) -> None:
    for key in ("max_steps", "micro_batch_size", "grad_accum", "log_every"):
        require(t[key] >= 1, f"trainer.{key}", f"must be at least 1, got {t[key]}")
    for key in ("save_every", "keep_last", "warmup_steps", "eval_every"):
        require(t[key] >= 0, f"trainer.{key}", f"must be 0 or more, got {t[key]}")
    require(t.grad_clip >= 0, "trainer.grad_clip", f"must be 0 (off) or positive, got {t.grad_clip}")
    require(0 <= t.min_lr_ratio <= 1, "trainer.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
    require(t.resume in ("none", "auto") or _path_kind("trainer.resume", Path(t.resume) / "meta.json") == "file",
            "trainer.resume", f"{t.resume!r} is not a checkpoint folder (step_<N>/ with meta.json)",
            allowed=["none", "auto", "<path>"])
    device = as_enum(t.device, Device)
    require(device is not Device.cuda or torch.cuda.is_available(), "trainer.device", "cuda requested but no CUDA device is visible",
            allowed=["auto", "cpu"])
    require(not t.tensorboard or importlib.util.find_spec("tensorboard") is not None, "trainer.tensorboard",
            "the tensorboard package is not installed (pip install tensorboard)")


def validate_hardware(h: DictConfig) -> None:
    """The machine `memtrain plan` plans for: counts at least 1, sizes and rates positive."""
    for key in ("gpus", "nodes"):
        require(h[key] >= 1, f"hardware.{key}", f"must be at least 1, got {h[key]}")
    for key in ("gpu_mem_gb", "host_mem_gb", "peak_tflops_bf16", "peak_tflops_fp16", "peak_tflops_fp32", "hbm_gbps",
                "intra_node_gbps", "inter_node_gbps", "pcie_gbps", "cpu_optimizer_gparams_per_s"):
        require(h[key] > 0, f"hardware.{key}", f"must be positive, got {h[key]}")
    for key in ("mfu", "mem_usable"):
        require(0 < h[key] <= 1, f"hardware.{key}", f"must be in (0, 1], got {h[key]}")
    require(h.block_latency_us >= 0, "hardware.block_latency_us", f"must be 0 or more, got {h.block_latency_us}")
