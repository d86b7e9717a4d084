"""The decoder's model-parallel communication per optimizer step per device: Megatron tensor
parallelism (tp, tp_sp) and context parallelism (cp: Ulysses or Ring), read by `memtrain estimate`
(`comm_bytes`) and the cost model of `memtrain plan` through ModelSpec.comm_bytes. Conventions:
memtrain.models.comm."""

from __future__ import annotations

from omegaconf import DictConfig

from memtrain.config.errors import as_enum
from memtrain.config.parallel import ParallelDims
from memtrain.config.schema import ContextParallelImpl
from memtrain.models.comm import FP32, CommContext, ring


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
        return {key: count * 2 * ring(n) * bsd, "all_reduce_loss_statistics": ctx.micro_batches * 2 * ring(n) * tokens * 3 * 4}
    return {key: count * 2 * ring(n) * bsd,
            "all_gather_logits": ctx.micro_batches * ring(n) * tokens * m.vocab_size * ctx.compute_bytes}


def cp(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, float]:
    """Ulysses per layer and micro-batch: all-to-alls of q, k, v, out in the forward and of their
    gradients in the backward (K/V repeated to H heads when n_kv_heads is not divisible by cp).
    Ring per layer and micro-batch: cp - 1 passes of the local K/V in the forward and again in the
    backward, plus cp passes of their fp32 gradients. Both: the fp32 gradients summed over cp."""
    n, m = dims.cp, cfg.model
    dh = m.dim // m.n_heads
    kv = m.n_kv_heads or m.n_heads
    tokens = _tokens(cfg, dims)
    per_layer: dict[str, float]
    if as_enum(cfg.parallel.cp_impl, ContextParallelImpl) is ContextParallelImpl.ulysses:
        kv_heads = kv if kv % n == 0 else m.n_heads
        per_layer = {"all_to_all_attention": 2 * ring(n) * tokens * dh * (2 * m.n_heads + 2 * kv_heads) * ctx.compute_bytes}
    else:
        kv_block = 2 * tokens * kv * dh
        per_layer = {"p2p_kv": 2 * (n - 1) * kv_block * ctx.compute_bytes, "p2p_dkv": n * kv_block * FP32}
    out = {k: v * m.n_layers * ctx.micro_batches for k, v in per_layer.items()}
    out["all_reduce_grads"] = 2 * ring(n) * ctx.params / dims.dp_shard * FP32
    return out


def comm_bytes(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, dict[str, float]]:
    """{"tp": ..., "cp": ...} for the dimensions of degree > 1 (ModelSpec.comm_bytes)."""
    return {dim: fn(cfg, dims, ctx) for dim, fn in (("tp", tp), ("cp", cp)) if getattr(dims, dim) > 1}
