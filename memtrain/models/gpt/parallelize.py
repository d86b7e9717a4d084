"""Model parallelism for the GPT decoder, applied from outside the model (in place):

Tensor parallelism (Shoeybi et al. 2019, "Megatron-LM", Section 3): DTensor `parallelize_module`
plans. q/k/v and w1/w3 are column-parallel (each rank holds H/tp heads and F/tp hidden units), wo
and w2 row-parallel (partial sums all-reduced), the embedding row-parallel over the vocabulary and
the output projection column-parallel over it. With the fused loss (model.loss_chunk, the default)
the head's cross entropy is vocabulary-parallel as Megatron's (memtrain.models.gpt.loss): no rank
holds more than a chunk of [C, V/tp] logits.
# DISCREPANCY: with model.loss_chunk=0 (plain logits) the cross entropy runs on all-gathered
# logits [B, S, V] on every tp rank, not on Megatron's [B, S, V/tp] shards.

With parallel.tp_sp (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", Section 4.2.2) the residual stream and the norms are sharded along the
sequence between the tensor-parallel regions: all-gather before q/k/v and w1/w3, reduce-scatter
after wo and w2.

Context parallelism (memtrain.distributed.context_parallel): the attention core is replaced by
Ulysses' or the ring's, and each attention's rotary tables are those of the rank's positions.

The degrees these plans accept are checked at config time by memtrain.models.gpt.spec.validate_parallel.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from memtrain.config.errors import as_enum
from memtrain.config.schema import ContextParallelImpl
from memtrain.distributed.collectives import all_reduce_gradients
from memtrain.distributed.context_parallel import (
    RingAttention,
    SequenceShardedBatches,
    UlyssesAttention,
    shard_positions,
)
from memtrain.models.gpt.loss import LinearCrossEntropyHead, shard_vocabulary
from memtrain.models.gpt.model import rotary_tables


class ReplicateParallel(ParallelStyle):
    """Parameters replicated over the tp mesh as DTensors (so every parameter is a DTensor on it,
    as clipping and the optimizer need), computing on replicated plain-tensor inputs."""

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        def inputs(mod, args, mesh):
            return tuple(DTensor.from_local(a, mesh, [Replicate()], run_check=False) for a in args)

        def outputs(mod, out, mesh):
            return out.to_local()

        return distribute_module(module, mesh, input_fn=inputs, output_fn=outputs)


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard `model` (a memtrain.models.gpt.model.GPT) over `tp_mesh`. tokens [B, S] stay whole on
    every tp rank; the residual stream is [B, S, D] (replicated) or [B, S/tp, D] (tp_sp)."""
    tp = tp_mesh.size()
    seq = Shard(1) if sequence_parallel else Replicate()
    norm = SequenceParallel() if sequence_parallel else ReplicateParallel()
    plan = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
        "norm": norm,
        "output": ColwiseParallel(input_layouts=seq, output_layouts=Replicate()),
    }
    if isinstance(model.output, LinearCrossEntropyHead):  # the fused loss: vocabulary-parallel, no logits gathered
        del plan["output"]
        shard_vocabulary(model.output, tp_mesh, sequence_sharded=sequence_parallel)
    parallelize_module(model, tp_mesh, plan)
    for block in model.layers:
        plan = {
            "attention_norm": norm,
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
            "ffn_norm": norm,
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=seq),
        }
        if sequence_parallel:  # gather the sequence before the column-parallel projections
            plan["attention"] = PrepareModuleInput(input_layouts=(seq, None, None), desired_input_layouts=(Replicate(), None, None))
            plan["feed_forward"] = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),))
        parallelize_module(block, tp_mesh, plan)
        attention = block.attention
        attention.n_heads, attention.n_kv_heads = attention.n_heads // tp, attention.n_kv_heads // tp  # local heads


def _rotary_hook(positions: torch.Tensor, head_dim: int, theta: float):
    """A forward pre-hook on an Attention module: its (x, cos, sin) get the rotary tables of this
    rank's positions instead of those of 0..S/cp-1."""
    cache: dict = {}

    def hook(module, args):
        x, cos, sin = args
        key = x.device
        if key not in cache:
            full_cos, full_sin = rotary_tables(int(positions.max()) + 1, head_dim, theta, x.device)
            idx = positions.to(x.device)
            cache[key] = (full_cos[idx], full_sin[idx])
        return (x, *cache[key])

    return hook


def apply_cp(model: nn.Module, cp_mesh: DeviceMesh, impl: ContextParallelImpl | str, seq_len: int) -> None:
    impl = as_enum(impl, ContextParallelImpl)
    group, n, r = cp_mesh.get_group(), cp_mesh.size(), cp_mesh.get_local_rank()
    positions = shard_positions(seq_len, n, r, impl)
    for block in model.layers:
        attention = block.attention
        attention.core = UlyssesAttention(attention.core, group) if impl is ContextParallelImpl.ulysses else RingAttention(group)
        attention.register_forward_pre_hook(_rotary_hook(positions, model.head_dim, model.rope_theta))


def parallelize(model: nn.Module, mesh: DeviceMesh, cfg: DictConfig) -> None:
    if mesh["tp"].size() > 1:
        apply_tp(model, mesh["tp"], cfg.parallel.tp_sp)
    if mesh["cp"].size() > 1:
        apply_cp(model, mesh["cp"], as_enum(cfg.parallel.cp_impl, ContextParallelImpl), cfg.data.seq_len)


def reduce_gradients(model: nn.Module, mesh: DeviceMesh) -> None:
    """Context-parallel ranks scored different positions: sum their gradients."""
    if mesh["cp"].size() > 1:
        all_reduce_gradients(model, mesh["cp"].get_group())


def shard_batches(batches, mesh: DeviceMesh, cfg: DictConfig):
    """Each context-parallel rank reads its own positions of every sequence."""
    if mesh["cp"].size() == 1:
        return batches
    positions = shard_positions(cfg.data.seq_len, mesh["cp"].size(), mesh["cp"].get_local_rank(), as_enum(cfg.parallel.cp_impl, ContextParallelImpl))
    return SequenceShardedBatches(batches, positions)
