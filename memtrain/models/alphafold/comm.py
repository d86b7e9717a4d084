"""AlphaFold's model-parallel communication per optimizer step per device: Dynamic Axial
Parallelism (memtrain.models.alphafold.parallelize; Cheng et al. 2022, "FastFold", Section 4),
read by `memtrain estimate` (`comm_bytes`) and the cost model of `memtrain plan` through
ModelSpec.comm_bytes. Conventions: memtrain.models.comm."""

from __future__ import annotations

from omegaconf import DictConfig

from memtrain.config.errors import enum_names
from memtrain.config.parallel import ParallelDims
from memtrain.models.activation_checkpoint import checkpointed_block_ids
from memtrain.models.comm import CommContext, ring


def dap_bytes_per_block(cfg: DictConfig, dap: int, compute_bytes: int) -> tuple[float, float]:
    """(all-gathers, all-to-alls): bytes each rank receives in one Evoformer block's forward under
    DAP: gathers of the row attention's pair bias, the outer product's b, one triangle
    multiplication operand each way and both triangle attentions' biases ((n-1)/n of the full
    tensor), and the all-to-alls m <-> columns (x2) and z <-> columns (x4) ((n-1)/n^2 of it)."""
    m = cfg.model
    b, n, s = cfg.trainer.micro_batch_size, cfg.data.crop_size, cfg.data.max_msa
    gathers = n * n * (m.n_heads_msa + 2 * m.c_hidden_mul + 2 * m.n_heads_pair) + s * n * m.c_hidden_opm
    all_to_all = 2 * s * n * m.c_m + 4 * n * n * m.c_z
    return b * compute_bytes * ring(dap) * gathers, b * compute_bytes * ring(dap) / dap * all_to_all


def comm_bytes(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, dict[str, float]]:
    """{"dap": {all_gather_activations, all_to_all_activations}} when dap > 1: every Evoformer
    block's forward volume (dap_bytes_per_block) times its passes, forward and backward, plus the
    recomputed forward of the blocks activation checkpointing wraps, for each micro-batch."""
    if dims.dap == 1:
        return {}
    ac = cfg.activation_checkpoint
    n_blocks = cfg.model.n_blocks
    passes = 2 + len(checkpointed_block_ids(n_blocks, enum_names(ac.mode), enum_names(ac.policy), ac.every_k)) / n_blocks
    gathers, all_to_all = dap_bytes_per_block(cfg, dims.dap, ctx.compute_bytes)
    scale = ctx.micro_batches * n_blocks * passes
    return {"dap": {"all_gather_activations": scale * gathers, "all_to_all_activations": scale * all_to_all}}
