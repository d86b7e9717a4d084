"""AlphaFold's ModelSpec: build, feed, score, checkpoint and parallelise (DAP) the model."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from memtrain.config.errors import as_enum, require
from memtrain.config.parallel import ParallelDims
from memtrain.config.schema import ACMode, DataSource, SelectivePolicy, TemplateSource
from memtrain.distributed.collectives import all_reduce_gradients
from memtrain.models.alphafold import comm
from memtrain.models.alphafold.evaluation import build_evaluator, predict
from memtrain.models.alphafold.family import AttentionBackend
from memtrain.models.alphafold.flops import alphafold_forward_flops
from memtrain.models.alphafold.loss import alphafold_loss, alphafold_loss_terms
from memtrain.models.alphafold.memory import activation_bytes
from memtrain.models.alphafold.model import AlphaFold
from memtrain.models.alphafold.parallelize import apply_dap, reduce_dap_gradients
from memtrain.models.alphafold.parallelize_stacks import (
    apply_dap_stacks,
    dap_stack_blocks,
)
from memtrain.models.alphafold.primitives import set_attention_backend, set_chunk_size
from memtrain.models.reset import reset_module_tree
from memtrain.models.spec import ModelSpec, register_spec

_NOT_MODULE_ARGS = ("arch", "chunk_size", "attention_backend")


def build_model(mcfg: DictConfig) -> AlphaFold:
    model = AlphaFold(**{k: v for k, v in mcfg.items() if k not in _NOT_MODULE_ARGS})
    set_chunk_size(model, mcfg.chunk_size)
    set_attention_backend(model, as_enum(mcfg.attention_backend, AttentionBackend))
    return model


def build_data(cfg: DictConfig):
    from memtrain.data.protein_features import ProteinStructureBatches
    from memtrain.data.sequences import default_protein_root

    root = cfg.data.root or default_protein_root()
    return ProteinStructureBatches(root, cfg.data.crop_size, cfg.data.max_msa, cfg.trainer.seed,
                                   exclude=list(cfg.data.eval_chains), **stack_data_kwargs(cfg))


def stack_data_kwargs(cfg: DictConfig) -> dict:
    """ProteinStructureBatches' extra-MSA and template arguments for the model config: none for a
    stack the model leaves out."""
    m = cfg.model
    return dict(
        max_extra_msa=cfg.data.max_extra_msa if m.n_extra_msa_blocks > 0 else 0,
        max_templates=cfg.data.max_templates if m.templates else 0,
        template_source=as_enum(cfg.data.template_source, TemplateSource),
    )


def loss_fn(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-sample AlphaFold loss (memtrain.models.alphafold.loss) and the number of samples."""
    per_sample = alphafold_loss(outputs, targets)
    return per_sample.sum(), torch.tensor(per_sample.shape[0])


def metrics(cfg: DictConfig):
    """Every unweighted loss term (loss_<name>, averaged over the micro-batch's samples), logged
    with the loss."""

    def terms(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # 0-dim float32 tensors, read by the trainer on logged steps only
            return {f"loss_{k}": v.float().mean() for k, v in alphafold_loss_terms(outputs, targets).items()}

    return terms


def num_targets(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.tensor(targets["seq_mask"].shape[0])


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.evoformer.blocks


def block_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The extra-MSA and template pair stacks' blocks, checkpointed like the Evoformer's."""
    stacks = []
    if model.extra_msa_stack is not None:
        stacks.append(model.extra_msa_stack.blocks)
    if model.template_embedder is not None:
        stacks.append(model.template_embedder.pair_stack.blocks)
    return stacks


def parallelize(model: nn.Module, mesh: DeviceMesh, cfg: DictConfig) -> None:
    if mesh["dap"].size() > 1:
        apply_dap(model, mesh["dap"].get_group())
        apply_dap_stacks(model, mesh["dap"].get_group())


def reduce_gradients(model: nn.Module, mesh: DeviceMesh) -> None:
    if mesh["dap"].size() > 1:
        reduce_dap_gradients(model, mesh["dap"].get_group())
        for stack in dap_stack_blocks(model):
            all_reduce_gradients(stack, mesh["dap"].get_group())


def validate(cfg: DictConfig, dims: ParallelDims) -> None:
    m = cfg.model
    source = as_enum(cfg.data.source, DataSource)
    require(source is DataSource.structure, "data", f"the AlphaFold model trains on data=structure, got data={source.name}",
            allowed=["structure"])
    for key in ("c_m", "c_z", "c_s", "n_blocks", "n_heads_msa", "n_heads_pair", "n_structure_layers", "n_heads_ipa"):
        require(m[key] >= 1, f"model.{key}", f"must be at least 1, got {m[key]}")
    require(m.chunk_size is None or m.chunk_size >= 1, "model.chunk_size", f"must be null or at least 1, got {m.chunk_size}")
    require(m.num_recycles >= 0, "model.num_recycles", f"must be 0 or more, got {m.num_recycles}")
    for key in ("msa_dropout", "pair_dropout", "structure_dropout"):
        require(0 <= m[key] < 1, f"model.{key}", f"must be in [0, 1), got {m[key]}")
    require(cfg.data.crop_size >= 1 and cfg.data.max_msa >= 1, "data.crop_size",
            f"crop_size and max_msa must be at least 1, got {cfg.data.crop_size}, {cfg.data.max_msa}")
    for key in ("n_extra_msa_blocks", "n_template_blocks"):
        require(m[key] >= 0, f"model.{key}", f"must be 0 or more, got {m[key]}")
    require(m.n_extra_msa_blocks == 0 or cfg.data.max_extra_msa >= 1, "data.max_extra_msa",
            f"the extra-MSA stack (model.n_extra_msa_blocks={m.n_extra_msa_blocks}) needs at least one "
            f"extra-MSA row, got data.max_extra_msa={cfg.data.max_extra_msa}; or set model.n_extra_msa_blocks=0")
    require(not m.templates or cfg.data.max_templates >= 1, "data.max_templates",
            f"the template stack (model.templates=true) needs at least one template slot, got "
            f"data.max_templates={cfg.data.max_templates}; or set model.templates=false")
    require(not (as_enum(cfg.activation_checkpoint.mode, ACMode) is ACMode.selective
                 and as_enum(cfg.activation_checkpoint.policy, SelectivePolicy) is SelectivePolicy.attention),
            "activation_checkpoint.policy", "the Evoformer has no single attention core; checkpoint whole blocks",
            allowed=["every_k"])
    require(cfg.trainer.eval_every == 0 or len(cfg.data.eval_chains) > 0, "data.eval_chains",
            f"trainer.eval_every={cfg.trainer.eval_every} evaluates held-out chains: name them, e.g. data.eval_chains=[4zey_A]")


SPEC = register_spec(
    ModelSpec(
        arch="alphafold",
        build_model=build_model,
        build_data=build_data,
        loss_fn=loss_fn,
        num_targets=num_targets,
        blocks=blocks,
        block_stacks=block_stacks,
        attention_core="",
        flops_per_token=lambda mcfg, seq_len: None,
        forward_flops=alphafold_forward_flops,
        comm_bytes=comm.comm_bytes,
        activation_bytes=lambda cfg, compute, residual: activation_bytes(
            cfg.model, cfg.trainer.micro_batch_size, cfg.data.seq_len, compute, residual, cfg=cfg),
        num_blocks=lambda mcfg: mcfg.n_blocks,
        validate=validate,
        target_unit="samples",
        parallelize=parallelize,
        reduce_gradients=reduce_gradients,
        metrics=metrics,
        build_evaluator=build_evaluator,
        predict=predict,
        init_weights=reset_module_tree,  # each module's reset_parameters (Linear's init kinds), LayerNorm ones/zeros
    )
)
