"""ModelSpec: everything the engine needs to know about a model family, so that it never
branches on a model's name. Specs register themselves by `arch` (the model config's key) when
their module is imported; `get_spec` imports only the module of the family asked for
(memtrain.models.family, which also holds what each family supports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union

import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.config.families import _REGISTRY, get_spec, register_spec  # noqa: F401  (re-exported)


Batch = Union[torch.Tensor, dict[str, torch.Tensor]]


class Batches(Protocol):
    """A deterministic source of micro-batches: batch(i) is the i-th micro-batch of the run, as
    (model inputs, loss targets); each a tensor or a dict of feature tensors."""

    def batch(self, index: int, micro_batch_size: int) -> tuple[Batch, Batch]: ...


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    build_model: Callable[[DictConfig], nn.Module]  # model config -> module (on the current default device)
    build_data: Callable[[DictConfig], Batches]  # full config -> batches
    # (model outputs, targets) -> (loss summed over what num_targets counts, that count)
    loss_fn: Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor]]
    num_targets: Callable[[Batch], torch.Tensor]  # the loss normaliser of a micro-batch (tokens, samples)
    blocks: Callable[[nn.Module], nn.ModuleList]  # the repeated blocks (units of activation checkpointing)
    attention_core: str  # attribute path of the attention core inside a block, e.g. "attention.core"
    flops_per_token: Callable[[DictConfig, int], float | None]  # (model config, seq_len) -> training FLOPs per target
    # (config, compute dtype bytes, residual-stream dtype bytes) -> bytes saved for backward per
    # micro-batch: "block", "block_input", "attention_core_freed", "outside_blocks"
    activation_bytes: Callable[[DictConfig, int, int], dict[str, float]]
    num_blocks: Callable[[DictConfig], int]  # model config -> number of blocks
    # (config, its degrees resolved once by validation: memtrain.config.parallel.ParallelDims) -> None:
    # the family's cross-field checks; raises memtrain.config.errors.ConfigError
    validate: Callable[[DictConfig, Any], None]
    target_unit: str = "tokens"  # what num_targets counts, for throughput ("tokens_per_s")
    # model-specific parallelism: (model, mesh, config) -> None, in place (e.g. AlphaFold's DAP);
    # its gradient reduction after backward: (model, mesh) -> None
    # (which mesh dimensions it implements is declared by the family: `model_parallel` below)
    parallelize: Callable[..., None] | None = None
    reduce_gradients: Callable[..., None] | None = None
    # extra logged metrics: config -> ((model outputs, targets) -> {name: value}) per micro-batch,
    # averaged over the micro-batches of each logging interval (e.g. per-variable RMSE)
    metrics: Callable[[DictConfig], Callable[[Any, Batch], dict[str, float]]] | None = None
    # pipeline parallelism: (model, stage ids, number of stages) -> one module per stage id, each
    # taking the previous stage's output (the first the model inputs, the last giving the model
    # outputs), sharing the model's modules and parameter names; None: no pipeline split. Stages
    # return tensors (torch.distributed.pipelining passes nothing else); a last stage whose model
    # output is not a tensor (a fused loss head's) has `loss_outputs(tensors)` giving it to loss_fn
    pipeline_fn: Callable[[nn.Module, list[int], int], list[nn.Module]] | None = None
    # (batches, mesh, config) -> this rank's batches (e.g. its sequence shard under parallel.cp)
    shard_batches: Callable[..., Batches] | None = None
    # held-out evaluation every trainer.eval_every steps: config -> evaluate(model, step, out_dir or
    # None, device) -> {metric: value}, called on every rank (the model may be sharded); out_dir (the
    # run directory, main rank only) is where it may write predictions
    build_evaluator: Callable[[DictConfig], Callable[..., dict[str, float]]] | None = None
    # `memtrain predict`: (model with its trained weights, the run's config, input file, output file,
    # msa=..., chain=...) -> {"output": path, ...}; None: the family has no predict
    predict: Callable[..., dict[str, Any]] | None = None
    # (model, config) -> None, in place: the output layer fused with the loss for training (e.g. the
    # GPT's chunked linear cross entropy; loss_fn then takes what the fused head returns); applied
    # after the precision swaps, before model parallelism
    loss_head: Callable[[nn.Module, DictConfig], None] | None = None
    # (model, generator_for) -> None, in place: the family's initialisation of a model materialised
    # from the meta device (trainer.init_device=meta: memtrain.engine.init_device), every parameter
    # and buffer written; a sharded parameter's local shard drawn from generator_for(name, param)
    # (a torch.Generator, or None for the global RNG); None: the family builds eagerly only
    init_weights: Callable[[nn.Module, Callable[[str, torch.Tensor], torch.Generator | None]], None] | None = None
    # further stacks of blocks that activation checkpointing wraps by the same policy as `blocks`,
    # each counted from its own first block (AlphaFold's extra-MSA and template pair stacks); their
    # saved bytes come from activation_bytes' "stacks"
    block_stacks: Callable[[nn.Module], list[nn.ModuleList]] | None = None
    # config -> (one block, outside the blocks, one block's attention core) forward FLOPs per
    # micro-batch, for the cost model; None: flops_per_token (a decoder's count)
    forward_flops: Callable[[DictConfig], tuple[float, float, float]] | None = None
    # (config, ParallelDims, memtrain.models.comm.CommContext) -> {mesh dimension: {collective: bytes
    # sent per device per optimizer step}} for the model-parallel dimensions the family declares
    # (degree > 1), read by `memtrain estimate` (comm_bytes) and the plan's cost model; None: the
    # family declares none
    comm_bytes: Callable[..., dict[str, dict[str, float]]] | None = None

    @property
    def model_parallel(self) -> tuple[str, ...]:
        """The model-parallel mesh dimensions this family implements ("tp", "cp", "dap", "spatial",
        "pp"), as its family.py declares them (memtrain.models.family)."""
        from memtrain.models.family import family

        return family(self.arch).model_parallel
