"""The extra-MSA stack (Supplement 1.7.2, Algorithms 18 and 19).

The sequences of the alignment that were not sampled as cluster centres (up to 1024 during
initial training, 5120 at fine-tuning and inference) are embedded at a small width (C_e = 64) and
run through 4 Evoformer-like blocks that update the pair representation only. Their MSA column
attention is *global* (Algorithm 19): one query per column (the masked mean over sequences) and
one shared key/value head, so its cost is linear in N_extra.

Shapes: `*` batch dims, E = N_extra extra-MSA rows, N_res residues (R when sharded), H heads,
C_e / C_z extra-MSA / pair channels.

Input features (from memtrain.data.protein_features; Supplement 1.2.9, Table 1):

    extra_msa             [*, E, N_res]  long   0..22, the MSA alphabet with the BERT mask token
    extra_has_deletion    [*, E, N_res]  float  min(deletions, 1)
    extra_deletion_value  [*, E, N_res]  float  2/pi * arctan(deletions / 3)
    extra_msa_mask        [*, E, N_res]  float  1 = entry present

The blocks are `EvoformerBlock`s with Algorithm 19 in place of Algorithm 8, so the DAP wrapper,
chunking and activation checkpointing treat them like Evoformer blocks (memtrain.models.
alphafold.parallelize_stacks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memtrain.models.chunking import chunk_layer
from memtrain.models.alphafold.evoformer import EvoformerBlock
from memtrain.models.alphafold.primitives import LayerNorm, Linear, mask_bias

EXTRA_MSA_FEAT_DIM = 25  # 23 MSA classes (one-hot), has_deletion, deletion_value
NUM_MSA_CLASSES = 23


def extra_msa_feat(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Supplement 1.2.9, Table 1 ("extra_msa_feat"): [*, E, N_res, 25] =
    one_hot(extra_msa, 23) | extra_has_deletion | extra_deletion_value (OpenFold's
    `build_extra_msa_feat`, the same channel order as AlphaFold's)."""
    one_hot = F.one_hot(batch["extra_msa"], NUM_MSA_CLASSES).to(batch["extra_deletion_value"].dtype)
    return torch.cat(
        [one_hot, batch["extra_has_deletion"][..., None], batch["extra_deletion_value"][..., None]], dim=-1
    )


class ExtraMSAEmbedder(nn.Module):
    """Supplement 1.7.2: e_si = Linear(extra_msa_feat_si), 25 -> C_e channels (the input of Algorithm 18)."""

    def __init__(self, c_in: int = EXTRA_MSA_FEAT_DIM, c_e: int = 64):
        super().__init__()
        self.linear = Linear(c_in, c_e)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat [*, E, N_res, 25] -> e [*, E, N_res, C_e]."""
        return self.linear(feat)


class MSAColumnGlobalAttention(nn.Module):
    """Algorithm 19: gated self-attention along each MSA column with one averaged query per head.

        m_si = LayerNorm(m_si)
        q_i^h = mean_s LinearNoBias(m_si)              (masked mean over the sequences s)
        k_si, v_si = LinearNoBias(m_si)                 (c channels, shared by all heads)
        g_si^h = sigmoid(Linear(m_si))
        a_ti^h = softmax_t(q_i^h . k_ti / sqrt(c) + mask bias_ti)
        o_si^h = g_si^h * sum_t a_ti^h v_ti
        m_si = Linear(concat_h o_si^h)

    The masked mean is taken of m before the query projection (as AlphaFold's and OpenFold's code
    do: the same thing, the projection has no bias), with AlphaFold's eps 1e-10 in the divisor.
    The softmax runs in fp32 (as the naive attention backend does). Column-local: any subset of
    the columns gives the matching slice (DAP runs it on a column shard). Chunked (chunk_size)
    over the columns.
    """

    def __init__(self, c_in: int, c_hidden: int = 8, no_heads: int = 8, eps: float = 1e-10):
        super().__init__()
        self.c_hidden, self.no_heads, self.eps = c_hidden, no_heads, eps
        self.layer_norm_m = LayerNorm(c_in)
        self.linear_q = Linear(c_in, c_hidden * no_heads, bias=False, init="glorot")
        self.linear_k = Linear(c_in, c_hidden, bias=False, init="glorot")
        self.linear_v = Linear(c_in, c_hidden, bias=False, init="glorot")
        self.linear_g = Linear(c_in, c_hidden * no_heads, init="gating")
        self.linear_o = Linear(c_hidden * no_heads, c_in, init="final")
        self.chunk_size: int | None = None

    def _attend(self, m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """m [*, S, C] (normed; `*` includes the column dim), mask [*, S] -> [*, S, C]."""
        mask_c = mask.to(m.dtype)
        q_avg = (m * mask_c[..., None]).sum(-2) / (mask_c.sum(-1)[..., None] + self.eps)  # [*, C]
        q = self.linear_q(q_avg) * self.c_hidden**-0.5
        q = q.unflatten(-1, (self.no_heads, self.c_hidden))  # [*, H, c]
        k, v = self.linear_k(m), self.linear_v(m)  # [*, S, c]
        logits = torch.matmul(q, k.transpose(-1, -2)) + mask_bias(mask)[..., None, :]  # [*, H, S]
        weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)
        o = torch.matmul(weights, v)  # [*, H, c]
        g = torch.sigmoid(self.linear_g(m)).unflatten(-1, (self.no_heads, self.c_hidden))  # [*, S, H, c]
        return self.linear_o((o.unsqueeze(-3) * g).flatten(-2))

    def forward(self, m: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """m [*, S, N_res, C], msa_mask [*, S, N_res] -> update [*, S, N_res, C]."""
        m_t = self.layer_norm_m(m.transpose(-2, -3))  # [*, N_res, S, C]
        mask_t = msa_mask.transpose(-1, -2)  # [*, N_res, S]
        if self.chunk_size is None:
            out = self._attend(m_t, mask_t)
        else:
            out = chunk_layer(self._attend, {"m": m_t, "mask": mask_t}, self.chunk_size, no_batch_dims=m_t.dim() - 2)
        return out.transpose(-2, -3)


class ExtraMSABlock(EvoformerBlock):
    """Algorithm 18, lines 2-11 (one block): an Evoformer block (Algorithm 6) on the extra MSA
    e [*, E, N_res, C_e], with MSAColumnGlobalAttention (Algorithm 19) in place of the MSA column
    attention. Published sizes (AlphaFold's and OpenFold's config): row attention 8 heads of 8,
    global column attention 8 heads of 8, the outer product mean, triangle and pair-transition
    sizes of the Evoformer."""

    def __init__(self, c_e: int, c_z: int, c_hidden_msa_att: int = 8, no_heads_msa: int = 8, **kwargs):
        super().__init__(c_e, c_z, c_hidden_msa_att=c_hidden_msa_att, no_heads_msa=no_heads_msa, **kwargs)

    def column_attention(self, c_m: int, c_hidden: int, no_heads: int) -> nn.Module:
        return MSAColumnGlobalAttention(c_m, c_hidden, no_heads)


class ExtraMSAStack(nn.Module):
    """Algorithm 18: N_block (4) ExtraMSABlocks; returns the pair representation only.

    The blocks are in `blocks` (activation checkpointing wraps each one)."""

    def __init__(self, n_blocks: int, c_e: int, c_z: int, **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(ExtraMSABlock(c_e, c_z, **block_kwargs) for _ in range(n_blocks))

    def forward(
        self, e: torch.Tensor, z: torch.Tensor, extra_msa_mask: torch.Tensor, pair_mask: torch.Tensor
    ) -> torch.Tensor:
        """e [*, E, N_res, C_e], z [*, N_res, N_res, C_z], extra_msa_mask [*, E, N_res],
        pair_mask [*, N_res, N_res] -> z [*, N_res, N_res, C_z]."""
        for block in self.blocks:
            e, z = block(e, z, extra_msa_mask, pair_mask)
        return z
