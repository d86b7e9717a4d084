"""AlphaFold's declaration (memtrain.models.family): its config schema, and Dynamic Axial Parallelism
of its representations."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from memtrain.config.schema import ModelConfig, checked
from memtrain.models.family import Family


class AttentionBackend(Enum):
    naive = "naive"  # explicit softmax(QK^T + bias)V, softmax in fp32
    sdpa = "sdpa"  # torch scaled_dot_product_attention with the biases as a float mask
    triton = "triton"  # fused Triton kernels (memtrain.kernels): pair-bias attention and layer norm


@dataclass
class AlphaFoldConfig(ModelConfig):
    """AlphaFold 2 (Jumper et al. 2021, Supplement 1.5-1.8): templates, extra-MSA stack, Evoformer
    and structure module."""

    arch: str = "alphafold"
    c_m: int = checked(256, ge=1)
    c_z: int = checked(128, ge=1)
    c_s: int = checked(384, ge=1)
    n_blocks: int = checked(48, ge=1)
    n_heads_msa: int = checked(8, ge=1)
    n_heads_pair: int = checked(4, ge=1)
    c_hidden_msa_att: int = checked(32, ge=1)
    c_hidden_pair_att: int = checked(32, ge=1)
    c_hidden_opm: int = checked(32, ge=1)
    c_hidden_mul: int = checked(128, ge=1)
    transition_n: int = checked(4, ge=1)
    n_structure_layers: int = checked(8, ge=1)
    n_heads_ipa: int = checked(12, ge=1)
    c_hidden_ipa: int = checked(16, ge=1)
    c_resnet: int = checked(128, ge=1)  # torsion-angle ResNet (Algorithm 20 lines 11-14)
    c_hidden_plddt: int = checked(128, ge=1)  # pLDDT head (Algorithm 29)
    num_recycles: int = checked(0, ge=0, le=32)  # extra no-grad iterations (the paper samples 0-3 during training)
    msa_dropout: float = checked(0.15, ge=0, lt=1)
    pair_dropout: float = checked(0.25, ge=0, lt=1)
    structure_dropout: float = checked(0.1, ge=0, lt=1)
    # extra-MSA stack (Algorithm 18): 0 blocks switches it off
    n_extra_msa_blocks: int = checked(4, ge=0)
    c_e: int = checked(64, ge=1)
    c_hidden_extra_msa_att: int = checked(8, ge=1)
    # template stack (Algorithms 16, 17) and template torsion angles into the MSA
    templates: bool = True
    c_t: int = checked(64, ge=1)
    n_template_blocks: int = checked(2, ge=0)
    c_hidden_template_att: int = checked(16, ge=1)
    n_heads_template: int = checked(4, ge=1)
    c_hidden_template_mul: int = checked(64, ge=1)
    template_transition_n: int = checked(2, ge=1)
    c_hidden_template_pointwise: int = checked(16, ge=1)
    n_heads_template_pointwise: int = checked(4, ge=1)
    template_unit_vector: bool = False  # AlphaFold's monomer models zero the template unit vectors
    chunk_size: Optional[int] = checked(None, ge=1)  # OpenFold-style chunking of attention, outer product mean, transitions
    attention_backend: AttentionBackend = AttentionBackend.naive


FAMILIES = (Family("alphafold", "memtrain.models.alphafold.spec", model_parallel=("dap",), schema=AlphaFoldConfig),)
