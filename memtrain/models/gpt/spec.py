"""The GPT family's ModelSpec: how to build, feed, score, checkpoint and size the decoder."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import as_enum, require
from memtrain.config.parallel import ParallelDims
from memtrain.config.parallel_options import parallel_option
from memtrain.config.schema import ContextParallelImpl, DataSource
from memtrain.data.lm import build_lm_data
from memtrain.models.gpt import comm
from memtrain.models.gpt.attention import (ATTENTION_KEYS, LinformerCore, PerformerCore, core_activation_bytes,
                                           set_attention_cores)
from memtrain.models.gpt.family import GPTAttention
from memtrain.models.gpt.loss import LinearCrossEntropyHead, default_chunk, loss_fn
from memtrain.models.gpt.model import GPT, ffn_hidden_size
from memtrain.models.gpt.pipeline import pipeline_stages
from memtrain.models.spec import ModelSpec, register_spec

PROTEIN_VOCAB = 30  # memtrain.data.sequences.ProteinTokenizer().vocab_size


def fused_loss_refused(cfg: DictConfig) -> bool:
    """The fused loss cannot run where the parallel option partitions a module's parameters again
    once its forward returns (DeepSpeed ZeRO-3): the loss uses the head's weight after the model
    returns."""
    return parallel_option(cfg).params_released_after_module_forward


def build_model(mcfg: DictConfig) -> GPT:
    kwargs = {k: v for k, v in mcfg.items() if k not in ("arch", "loss_chunk") and k not in ATTENTION_KEYS}
    model = GPT(**kwargs)
    set_attention_cores(model, blocks(model), mcfg, SPEC.attention_core)
    return model


def init_weights(model: GPT, generator_for) -> None:
    """The GPT's initialisation in place (GPT.init_weights), then the approximate attention cores'
    projections and random features (memtrain.engine.init_device materialises on the meta device)."""
    model.init_weights(generator_for)
    for name, module in model.named_modules():
        if isinstance(module, (LinformerCore, PerformerCore)):
            module.init_weights(generator_for, name)


def loss_chunk(cfg: DictConfig) -> int:
    """Tokens per chunk of the fused output projection + cross entropy, 0 for the plain loss on full
    logits: model.loss_chunk, with -1 resolved (plain under ZeRO-3, which partitions the head's weight
    again once its forward returns, before the loss could use it)."""
    chunk = cfg.model.get("loss_chunk", -1)
    if chunk == -1:
        return 0 if fused_loss_refused(cfg) else default_chunk(cfg.model.vocab_size)
    return chunk


def apply_loss_head(model: nn.Module, cfg: DictConfig) -> None:
    """The ModelSpec's loss_head: the output layer becomes a LinearCrossEntropyHead (same weight)
    unless the resolved model.loss_chunk is 0."""
    chunk = loss_chunk(cfg)
    if chunk:
        model.output = LinearCrossEntropyHead.replacing(model.output, chunk)


def num_targets(targets: torch.Tensor) -> torch.Tensor:
    return (targets != -100).sum()


def blocks(model: nn.Module) -> nn.ModuleList:
    if isinstance(model.layers, nn.ModuleDict):  # a pipeline stage (memtrain.models.gpt.pipeline)
        return nn.ModuleList(model.layers.values())
    return model.layers


def flops_per_token(mcfg: DictConfig, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12 L D S (PaLM appendix B; N excludes the input embedding)."""
    d, layers, heads = mcfg.dim, mcfg.n_layers, mcfg.n_heads
    kv = mcfg.n_kv_heads or heads
    hidden = ffn_hidden_size(d, mcfg.ffn_hidden, mcfg.multiple_of)
    per_layer = d * d * (2 + 2 * kv / heads) + 3 * d * hidden + 2 * d
    n = layers * per_layer + d + mcfg.vocab_size * d
    return 6 * n + 12 * layers * d * seq_len


def activation_bytes(cfg: DictConfig, compute_bytes: int, residual_bytes: int) -> dict[str, float]:
    """Bytes saved for the backward pass, per block and outside the blocks, for one micro-batch
    of trainer.micro_batch_size x data.seq_len tokens. Outside the blocks, the loss: with the fused
    head (model.loss_chunk) the gradients it computed in its forward, else the fp32 log-softmax of
    the full logits; the fused loss's transient chunk of logits (at most model.loss_chunk x V x 6
    bytes while the loss runs) is not saved and not counted.

    Counted tensor by tensor for this implementation (B S D units; kvr = K / H; F = SwiGLU width):
      attention: norm input (r) + its rstd, norm output and normalized product (2r: nn.RMSNorm's
        composite backward keeps both), the matmul inputs (one copy per q/k/v projection under
        autocast, since casts of activations are not cached), rotated q and k and v (p (1 + 2 kvr)),
        the attention output (p) and its log-sum-exp (fp32, B H S);
      feed-forward: norm as above, w1/w3 inputs (per projection under autocast), w1 and w3
        outputs, silu output and the product (4 p F/D).
      under autocast, the low-precision copy of every matmul weight (autocast's weight cache).
    Attention is memory-efficient (SDPA flash / efficient kernels): no S x S matrix is kept. With
    model.attention=linformer|performer the core's own saved tensors (attention.core_activation_bytes)
    take the place of the log-sum-exp.
    """
    mcfg = cfg.model
    b, s, d = cfg.trainer.micro_batch_size, cfg.data.seq_len, mcfg.dim
    heads = mcfg.n_heads
    kvr = (mcfg.n_kv_heads or heads) / heads
    hidden = ffn_hidden_size(d, mcfg.ffn_hidden, mcfg.multiple_of)
    autocast = compute_bytes != residual_bytes
    bsd = b * s * d
    norm = 3 * residual_bytes * bsd + 4 * b * s  # input, normalized product, output (+ rstd)
    if autocast:
        norm_attn = norm - residual_bytes * bsd + 3 * compute_bytes * bsd  # output consumed as 3 casts
        norm_ffn = norm - residual_bytes * bsd + 2 * compute_bytes * bsd
    else:
        norm_attn = norm_ffn = norm
    lse = 4 * b * heads * s
    if as_enum(mcfg.get("attention", "softmax"), GPTAttention) is not GPTAttention.softmax:  # approximate core: its own saved tensors
        lse = core_activation_bytes(mcfg, b, s, compute_bytes)
    core = compute_bytes * bsd * (2 + 2 * kvr) + lse  # q, k, v, out, logsumexp
    attn = norm_attn + core
    ffn = norm_ffn + 4 * compute_bytes * b * s * hidden
    # Under autocast each matmul keeps the low-precision copy of its weight for the backward pass.
    cast_block = compute_bytes * d * (d * (2 + 2 * kvr) + 3 * hidden) if autocast else 0
    v = mcfg.vocab_size
    if loss_chunk(cfg):
        # fused loss: the final norm's tensors but its output (nothing saves it), the gradients the
        # loss computed in its forward: dh [B, S, D] in the hidden states' dtype and dW [V, D] in
        # fp32 (split over tp ranks: the vocabulary-parallel head); no logits, no weight copy
        loss = norm - residual_bytes * bsd + residual_bytes * bsd + 4 * v * d
        vocab_parallel = 4 * v * d
    else:
        head = norm - residual_bytes * bsd + compute_bytes * bsd if autocast else norm  # final norm, output proj input
        logits = 4 * b * s * v  # log-softmax output, fp32, kept by the cross entropy
        cast_head = compute_bytes * d * v if autocast else 0
        loss, vocab_parallel = head + logits + cast_head, 0
    return {
        "block": attn + ffn + cast_block,
        "block_input": residual_bytes * bsd,
        # Recomputing the attention core frees only what SDPA alone keeps: its inputs stay saved as
        # the checkpoint's inputs and its output as the output projection's input.
        "attention_core_freed": lse,
        "outside_blocks": loss + 8 * b * s,  # + token ids
        # of "outside_blocks": what a vocabulary-parallel head splits over the tp ranks
        "vocab_parallel": vocab_parallel,
        # of "block": the norms' tensors, outside the tensor-parallel regions (replicated over tp
        # ranks unless parallel.tp_sp shards them along the sequence)
        "tp_replicated": norm_attn + norm_ffn,
    }


# Tensor and context parallelism live in memtrain.models.gpt.parallelize (DTensor plans), imported
# when a run applies them: validation and `memtrain estimate` do not need torch.distributed.tensor.
def parallelize(model: nn.Module, mesh, cfg: DictConfig) -> None:
    from memtrain.models.gpt import parallelize as plans

    plans.parallelize(model, mesh, cfg)


def reduce_gradients(model: nn.Module, mesh) -> None:
    from memtrain.models.gpt import parallelize as plans

    plans.reduce_gradients(model, mesh)


def shard_batches(batches, mesh, cfg: DictConfig):
    from memtrain.models.gpt import parallelize as plans

    return plans.shard_batches(batches, mesh, cfg)


def validate_parallel(cfg: DictConfig, dims: ParallelDims) -> None:
    """Degrees the decoder can be split by (the plans of memtrain.models.gpt.parallelize), each
    refused with the keys at fault."""
    m, p = cfg.model, cfg.parallel
    kv, seq = m.n_kv_heads or m.n_heads, cfg.data.seq_len
    if dims.tp > 1:
        require(m.n_heads % dims.tp == 0, "parallel.tp", f"model.n_heads={m.n_heads} must be divisible by parallel.tp={dims.tp}")
        require(kv % dims.tp == 0, "parallel.tp", f"model.n_kv_heads={kv} must be divisible by parallel.tp={dims.tp}")
        hidden = ffn_hidden_size(m.dim, m.ffn_hidden, m.multiple_of)
        require(hidden % dims.tp == 0, "parallel.tp", f"the feed-forward width {hidden} (model.ffn_hidden) must be divisible by parallel.tp={dims.tp}")
        require(m.vocab_size % dims.tp == 0, "parallel.tp", f"model.vocab_size={m.vocab_size} must be divisible by parallel.tp={dims.tp}")
        require(not m.tie_embeddings, "model.tie_embeddings", "tied embeddings are not supported with parallel.tp > 1")
        require(not p.tp_sp or seq % dims.tp == 0, "data.seq_len",
                f"seq_len={seq} must be divisible by parallel.tp={dims.tp} with parallel.tp_sp=true")
    if dims.cp > 1:
        if as_enum(p.cp_impl, ContextParallelImpl) is ContextParallelImpl.ulysses:
            require(m.n_heads % dims.cp == 0, "parallel.cp",
                    f"model.n_heads={m.n_heads} must be divisible by parallel.cp={dims.cp} for parallel.cp_impl=ulysses")
            require(seq % dims.cp == 0, "data.seq_len", f"seq_len={seq} must be divisible by parallel.cp={dims.cp}")
        else:
            require(seq % (2 * dims.cp) == 0, "data.seq_len",
                    f"seq_len={seq} must be divisible by 2 x parallel.cp={2 * dims.cp} for parallel.cp_impl=ring "
                    "(two chunks per rank for causal load balance)")


def validate(cfg: DictConfig, dims: ParallelDims) -> None:
    m = cfg.model
    for key in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len", "multiple_of"):
        require(m[key] >= 1, f"model.{key}", f"must be at least 1, got {m[key]}")
    require(m.dim % m.n_heads == 0, "model.dim", f"dim={m.dim} must be divisible by n_heads={m.n_heads}")
    require((m.dim // m.n_heads) % 2 == 0, "model.dim", f"head dim {m.dim // m.n_heads} must be even for rotary embeddings")
    kv = m.n_kv_heads or m.n_heads
    require(kv >= 1 and m.n_heads % kv == 0, "model.n_kv_heads", f"n_kv_heads={kv} must divide n_heads={m.n_heads}")
    require(cfg.data.seq_len <= m.max_seq_len, "data.seq_len",
            f"seq_len={cfg.data.seq_len} exceeds model.max_seq_len={m.max_seq_len}")
    require(not (m.tie_embeddings and cfg.parallel.pp != 1), "model.tie_embeddings",
            "tied embeddings would live on the first and the last pipeline stage; use tie_embeddings=false with parallel.pp")
    require(m.loss_chunk >= -1, "model.loss_chunk",
            f"must be -1 (fused, chunk chosen from the vocabulary), 0 (plain logits) or a token count, got {m.loss_chunk}")
    require(m.loss_chunk <= 0 or not fused_loss_refused(cfg), "model.loss_chunk",
            f"model.loss_chunk={m.loss_chunk} fuses the output layer with the loss, which uses the head's weight after "
            f"the model's forward has returned; parallel={cfg.parallel.name} (DeepSpeed ZeRO-3) partitions that weight "
            "again as soon as its module's forward ends. Use model.loss_chunk=0 or -1 (both give the plain loss there), "
            "or parallel=fsdp, which shards parameters and keeps the fused loss")
    validate_parallel(cfg, dims)
    attention = as_enum(m.get("attention", "softmax"), GPTAttention)
    require(attention is GPTAttention.softmax or cfg.parallel.cp == 1, "model.attention",
            f"model.attention={attention.name} replaces the attention core that parallel.cp={cfg.parallel.cp} "
            "distributes; context parallelism needs model.attention=softmax")
    if attention is not GPTAttention.softmax:
        for key in ("linformer_k", "performer_features", "attention_chunk"):
            require(m[key] >= 1, f"model.{key}", f"must be at least 1, got {m[key]}")
        require(m.performer_redraw >= 0, "model.performer_redraw", f"must be 0 (never) or positive, got {m.performer_redraw}")
    source = as_enum(cfg.data.source, DataSource)
    require(source in (DataSource.protein, DataSource.synthetic), "data",
            f"a language model trains on token streams, got data={source.name}", allowed=["protein", "synthetic"])
    if source is DataSource.protein:
        require(m.vocab_size >= PROTEIN_VOCAB, "model.vocab_size",
                f"vocab_size={m.vocab_size} is smaller than the protein tokenizer's {PROTEIN_VOCAB} tokens")


SPEC = register_spec(
    ModelSpec(
        arch="gpt",
        build_model=build_model,
        build_data=build_lm_data,
        loss_fn=loss_fn,
        num_targets=num_targets,
        blocks=blocks,
        attention_core="attention.core",
        flops_per_token=flops_per_token,
        comm_bytes=comm.comm_bytes,
        activation_bytes=activation_bytes,
        num_blocks=lambda mcfg: mcfg.n_layers,
        validate=validate,
        pipeline_fn=pipeline_stages,
        parallelize=parallelize,
        reduce_gradients=reduce_gradients,
        shard_batches=shard_batches,
        loss_head=apply_loss_head,
        init_weights=init_weights,
    )
)
