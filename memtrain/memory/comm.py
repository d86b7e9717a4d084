"""Analytic communication volume per optimizer step per device, by parallel dimension: what
`memtrain estimate --json` prints as `comm_bytes`.

Bytes *sent* by one device per optimizer step (trainer.grad_accum micro-batches), with the
bandwidth-optimal collectives (memtrain.models.comm). The data-parallel dimensions are modelled
here, one function per dimension in COMM (name -> fn(cfg, dims, ctx) -> {collective: bytes}); the
model-parallel ones (tp and cp of the decoder, AlphaFold's dap) by the family that declares them
(ModelSpec.comm_bytes: memtrain/models/gpt/comm.py, memtrain/models/alphafold/comm.py); pipeline
stages' sends by memtrain.memory.pipeline_memory. A dimension whose degree is 1 sends nothing.
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig

from memtrain.config.parallel_options import Backend, DataParallel, parallel_option
from memtrain.distributed.mesh import ParallelDims
from memtrain.models.comm import FP32, CommContext, ring
from memtrain.models.spec import get_spec
from memtrain.precision.amp import dtype_of


def dp_replicate(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, float]:
    """DDP: one all-reduce of the gradients per step (buckets; no_sync on accumulation steps).
    Under hsdp the replicas all-reduce their fp32 gradient shards."""
    n = dims.dp_replicate
    if parallel_option(cfg).data_parallel is DataParallel.HYBRID:
        return {"all_reduce_grad_shards": 2 * ring(n) * ctx.params / dims.dp_shard * FP32}
    return {"all_reduce_grads": 2 * ring(n) * ctx.params * ctx.param_bytes}


def dp_shard(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, float]:
    """FSDP2 (ZeRO-3): parameters all-gathered in the compute dtype for every micro-batch's forward,
    and again for its backward when reshard_after_forward; fp32 gradients reduce-scattered once
    per step. DeepSpeed ZeRO-1/2: gradients reduce-scattered, updated parameters all-gathered."""
    n, opt = dims.dp_shard, parallel_option(cfg)
    if opt.backend is Backend.DEEPSPEED and not opt.shards_params:
        return {"reduce_scatter_grads": ring(n) * ctx.params * ctx.compute_bytes,
                "all_gather_params": ring(n) * ctx.params * ctx.compute_bytes}
    gathers = (2 if cfg.parallel.reshard_after_forward else 1) * ctx.micro_batches
    return {"all_gather_params": gathers * ring(n) * ctx.params * ctx.compute_bytes,
            "reduce_scatter_grads": ring(n) * ctx.params * (FP32 if opt.fsdp else ctx.compute_bytes)}


COMM: dict[str, Callable[[DictConfig, ParallelDims, CommContext], dict[str, float]]] = {
    "dp_replicate": dp_replicate,
    "dp_shard": dp_shard,
}


def comm_bytes(cfg: DictConfig, dims: ParallelDims, params: int) -> dict[str, dict[str, int]]:
    """{dimension: {collective: bytes sent per device per optimizer step}} for every dimension of
    degree > 1 that COMM or the model's family models; `params`: parameter elements on this device before dp sharding."""
    ctx = CommContext(params=params, param_bytes=dtype_of(cfg.precision.param_dtype).itemsize,
                      compute_bytes=dtype_of(cfg.precision.compute_dtype).itemsize, micro_batches=cfg.trainer.grad_accum)
    terms = {dim: fn(cfg, dims, ctx) for dim, fn in COMM.items() if getattr(dims, dim) > 1}
    family = get_spec(cfg.model.arch).comm_bytes
    if family is not None:
        terms.update(family(cfg, dims, ctx))
    return {dim: {k: int(v) for k, v in c.items()} for dim, c in terms.items()}
