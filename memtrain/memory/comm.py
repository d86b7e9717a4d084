"""Analytic communication volume per optimizer step per device, by parallel dimension: what
`memtrain estimate --json` prints as `comm_bytes`.

Bytes *sent* by one device per optimizer step (trainer.grad_accum micro-batches), with the
bandwidth-optimal collectives: a ring all-reduce of N bytes over n ranks sends 2 (n-1)/n N, an
all-gather or reduce-scatter of N (the whole tensor) sends (n-1)/n N, an all-to-all of a local
tensor of N bytes sends (n-1)/n N, a point-to-point pass sends N.

One function per mesh dimension in COMM (name -> fn(cfg, dims, ctx) -> {collective: bytes});
a dimension whose degree is 1 sends nothing. Another dimension (e.g. pipeline stages, "pp") is
added by registering its function in COMM. The tp and cp entries read the decoder's shape
(model.dim, n_heads, n_kv_heads, n_layers, vocab_size): only the GPT family supports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from omegaconf import DictConfig

from memtrain.config.parallel_options import Backend, DataParallel, parallel_option
from memtrain.distributed.mesh import ParallelDims
from memtrain.precision.amp import dtype_of

FP32 = 4


@dataclass
class CommContext:
    params: int  # parameter elements held by this device before data-parallel sharding (after tp)
    param_bytes: int  # bytes of a parameter / gradient element as kept (param_dtype)
    compute_bytes: int  # bytes of an activation element (compute dtype)
    micro_batches: int  # micro-batches per optimizer step (trainer.grad_accum)


def _ring(n: int) -> float:
    return (n - 1) / n


def dp_replicate(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, float]:
    """DDP: one all-reduce of the gradients per step (buckets; no_sync on accumulation steps).
    Under hsdp the replicas all-reduce their fp32 gradient shards."""
    n = dims.dp_replicate
    if parallel_option(cfg).data_parallel is DataParallel.HYBRID:
        return {"all_reduce_grad_shards": 2 * _ring(n) * ctx.params / dims.dp_shard * FP32}
    return {"all_reduce_grads": 2 * _ring(n) * ctx.params * ctx.param_bytes}


def dp_shard(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, float]:
    """FSDP2 (ZeRO-3): parameters all-gathered in the compute dtype for every micro-batch's forward,
    and again for its backward when reshard_after_forward; fp32 gradients reduce-scattered once
    per step. DeepSpeed ZeRO-1/2: gradients reduce-scattered, updated parameters all-gathered."""
    n, opt = dims.dp_shard, parallel_option(cfg)
    if opt.backend is Backend.DEEPSPEED and not opt.shards_params:
        return {"reduce_scatter_grads": _ring(n) * ctx.params * ctx.compute_bytes,
                "all_gather_params": _ring(n) * ctx.params * ctx.compute_bytes}
    gathers = (2 if cfg.parallel.reshard_after_forward else 1) * ctx.micro_batches
    return {"all_gather_params": gathers * _ring(n) * ctx.params * ctx.compute_bytes,
            "reduce_scatter_grads": _ring(n) * ctx.params * (FP32 if opt.fsdp else ctx.compute_bytes)}


def _tokens(cfg: DictConfig, dims: ParallelDims) -> int:
    """Tokens of one micro-batch on this device (its sequence shard under cp)."""
    return cfg.trainer.micro_batch_size * cfg.data.seq_len // dims.cp


def tp(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, float]:
    """Megatron TP per layer and micro-batch: two all-reduces of [B, S, D] in the forward (after wo
    and w2) and two in the backward (the inputs' gradients of q/k/v and w1/w3), plus the
    embedding's forward all-reduce and the output projection's backward one (the fused loss's
    all-reduce of the hidden states' gradient), and for the loss either the all-gather of the
    logits [B, S, V] (plain loss) or, with the fused vocabulary-parallel loss (model.loss_chunk),
    the all-reduces of three fp32 numbers per token (row max, sum of exponentials, target logit).
    With tp_sp every all-reduce becomes an all-gather plus a reduce-scatter: the same bytes
    (Korthikanti et al. 2022, Section 4.2.2)."""
    from memtrain.models.gpt.spec import loss_chunk

    n, m = dims.tp, cfg.model
    tokens = _tokens(cfg, dims)
    bsd = tokens * m.dim * ctx.compute_bytes
    count = (4 * m.n_layers + 2) * ctx.micro_batches
    key = "all_gather_reduce_scatter_activations" if cfg.parallel.tp_sp else "all_reduce_activations"
    if loss_chunk(cfg):
        return {key: count * 2 * _ring(n) * bsd, "all_reduce_loss_statistics": ctx.micro_batches * 2 * _ring(n) * tokens * 3 * 4}
    return {key: count * 2 * _ring(n) * bsd,
            "all_gather_logits": ctx.micro_batches * _ring(n) * tokens * m.vocab_size * ctx.compute_bytes}


def cp(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, float]:
    """Ulysses per layer and micro-batch: all-to-alls of q, k, v, out in the forward and of their
    gradients in the backward (K/V repeated to H heads when n_kv_heads is not divisible by cp).
    Ring per layer and micro-batch: cp - 1 passes of the local K/V in the forward and again in the
    backward, plus cp passes of their fp32 gradients. Both: the fp32 gradients summed over cp."""
    from memtrain.config.errors import as_enum
    from memtrain.config.schema import ContextParallelImpl

    n, m = dims.cp, cfg.model
    dh = m.dim // m.n_heads
    kv = m.n_kv_heads or m.n_heads
    tokens = _tokens(cfg, dims)
    per_layer: dict[str, float]
    if as_enum(cfg.parallel.cp_impl, ContextParallelImpl) is ContextParallelImpl.ulysses:
        kv_heads = kv if kv % n == 0 else m.n_heads
        per_layer = {"all_to_all_attention": 2 * _ring(n) * tokens * dh * (2 * m.n_heads + 2 * kv_heads) * ctx.compute_bytes}
    else:
        kv_block = 2 * tokens * kv * dh
        per_layer = {"p2p_kv": 2 * (n - 1) * kv_block * ctx.compute_bytes, "p2p_dkv": n * kv_block * FP32}
    out = {k: v * m.n_layers * ctx.micro_batches for k, v in per_layer.items()}
    out["all_reduce_grads"] = 2 * _ring(n) * ctx.params / dims.dp_shard * FP32
    return out


COMM: dict[str, Callable[[DictConfig, ParallelDims, CommContext], dict[str, float]]] = {
    "dp_replicate": dp_replicate,
    "dp_shard": dp_shard,
    "tp": tp,
    "cp": cp,
}


def comm_bytes(cfg: DictConfig, dims: ParallelDims, params: int) -> dict[str, dict[str, int]]:
    """{dimension: {collective: bytes sent per device per optimizer step}} for every dimension of
    degree > 1 that COMM models; `params`: parameter elements on this device before dp sharding."""
    ctx = CommContext(params=params, param_bytes=dtype_of(cfg.precision.param_dtype).itemsize,
                      compute_bytes=dtype_of(cfg.precision.compute_dtype).itemsize, micro_batches=cfg.trainer.grad_accum)
    out = {}
    for dim, fn in COMM.items():
        if getattr(dims, dim) > 1:
            out[dim] = {k: int(v) for k, v in fn(cfg, dims, ctx).items()}
    return out
