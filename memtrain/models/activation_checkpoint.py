"""Activation checkpointing applied from outside the model: wrap the chosen modules with
torch's checkpoint_wrapper (non-reentrant), so their activations are recomputed in the backward
pass instead of kept. State-dict keys are unchanged by the wrapper."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from memtrain.config.errors import as_enum
from memtrain.config.schema import ACMode, SelectivePolicy
from memtrain.models.spec import ModelSpec


def checkpointed_block_ids(n_blocks: int, mode: ACMode | str, policy: SelectivePolicy | str, every_k: int) -> list[int]:
    """Indices of the blocks recomputed whole: all for full, every k-th (k-1, 2k-1, ...) for
    selective every_k, none otherwise. `mode` and `policy`: members or their names."""
    mode, policy = as_enum(mode, ACMode), as_enum(policy, SelectivePolicy)
    if mode is ACMode.full:
        return list(range(n_blocks))
    if mode is ACMode.selective and policy is SelectivePolicy.every_k:
        return [i for i in range(n_blocks) if (i + 1) % every_k == 0]
    return []


def apply_activation_checkpointing(model: nn.Module, ac: DictConfig, spec: ModelSpec) -> None:
    mode, policy = as_enum(ac.mode, ACMode), as_enum(ac.policy, SelectivePolicy)
    blocks = spec.blocks(model)
    for stack in [blocks, *(spec.block_stacks(model) if spec.block_stacks is not None else [])]:
        for i in checkpointed_block_ids(len(stack), mode, policy, ac.every_k):
            stack[i] = checkpoint_wrapper(stack[i], preserve_rng_state=True)
    if mode is ACMode.selective and policy is SelectivePolicy.attention:
        parent_path, _, name = spec.attention_core.rpartition(".")
        for block in blocks:
            parent = block.get_submodule(parent_path) if parent_path else block
            setattr(parent, name, checkpoint_wrapper(getattr(parent, name), preserve_rng_state=True))
