"""The GPT decoder's declaration (memtrain.models.family): its config schema, and tensor, context and
pipeline parallelism."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from memtrain.config.schema import ModelConfig, checked
from memtrain.models.family import Family


class GPTAttention(Enum):
    softmax = "softmax"  # exact causal softmax attention (SDPA)
    linformer = "linformer"  # learned sequence projections of K and V (Wang et al. 2020), causal prefix variant
    performer = "performer"  # FAVOR+ positive orthogonal random features (Choromanski et al. 2021), causal


@dataclass
class GPTConfig(ModelConfig):
    """Decoder-only transformer: RMSNorm, SwiGLU, RoPE, grouped-query attention through SDPA."""

    arch: str = "gpt"
    vocab_size: int = checked(64, ge=1)
    dim: int = checked(128, ge=1)
    n_layers: int = checked(4, ge=1)
    n_heads: int = checked(4, ge=1)
    n_kv_heads: Optional[int] = checked(None, ge=1)  # None: as many as n_heads (multi-head attention)
    ffn_hidden: Optional[int] = checked(None, ge=1)  # None: 8/3 * dim rounded up to `multiple_of`
    multiple_of: int = checked(64, ge=1)
    max_seq_len: int = checked(2048, ge=1)
    rope_theta: float = checked(10000.0, gt=0)
    norm_eps: float = checked(1e-5, gt=0)
    tie_embeddings: bool = False
    init_std: float = checked(0.02, ge=0)
    attention: GPTAttention = GPTAttention.softmax  # the attention core of every block
    linformer_k: int = checked(64, ge=1)  # linformer: projected length k of K and V
    performer_features: int = checked(128, ge=1)  # performer: random features m per head
    performer_redraw: int = checked(1000, ge=0)  # performer: redraw the features every this many training forwards (0: never)
    attention_chunk: int = checked(64, ge=1)  # linformer/performer: block size of the causal prefix-sum scan
    # output projection fused with the cross entropy, computed over chunks of this many tokens so
    # the [B, S, V] logits never exist; -1: on, chunk chosen from the vocabulary (plain under
    # parallel=zero3, which frees the head's weight after its forward); 0: plain full logits
    loss_chunk: int = checked(-1, ge=-1)


FAMILIES = (Family("gpt", "memtrain.models.gpt.spec", model_parallel=("tp", "cp", "pp"), schema=GPTConfig),)
