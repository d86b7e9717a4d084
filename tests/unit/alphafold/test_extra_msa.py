"""The extra-MSA stack (Algorithms 18, 19): shapes, the features, global column attention against
an explicit loop over columns and heads, the block's composition, chunked == unchunked.

Tolerances: fp32; values O(1)-O(10) after the randomised weights. Loops and einsums sum the same
products in another order: rtol=1e-5, atol=1e-5 (1e-4 for gradients, which sum over more terms)."""

from __future__ import annotations

import math

import pytest
import torch

from memtrain.models.alphafold.evoformer import (
    EvoformerBlock,
    MSARowAttentionWithPairBias,
)
from memtrain.models.alphafold.extra_msa import (
    EXTRA_MSA_FEAT_DIM,
    ExtraMSABlock,
    ExtraMSAEmbedder,
    ExtraMSAStack,
    MSAColumnGlobalAttention,
    extra_msa_feat,
)
from tests.unit.alphafold.helpers import random_batch, randomize_

B, E, N, C_E, C_Z = 2, 6, 7, 8, 6
TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture
def inputs():
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(B, E, N, C_E, generator=gen)
    z = torch.randn(B, N, N, C_Z, generator=gen)
    mask = (torch.rand(B, E, N, generator=gen) > 0.3).float()
    mask[1, :, -2:] = 0.0  # padding residues in the second sample: whole columns masked
    pair_mask = torch.ones(B, N, N)
    pair_mask[1, -2:, :] = pair_mask[1, :, -2:] = 0.0
    return e, z, mask, pair_mask


def global_attention():
    torch.manual_seed(0)
    return randomize_(MSAColumnGlobalAttention(C_E, c_hidden=4, no_heads=3))


def stack(n_blocks=2, **kwargs):
    torch.manual_seed(0)
    return randomize_(ExtraMSAStack(n_blocks, C_E, C_Z, c_hidden_msa_att=4, no_heads_msa=2, c_hidden_opm=3,
                                    c_hidden_mul=5, c_hidden_pair_att=4, no_heads_pair=2, transition_n=2, **kwargs))


def test_extra_msa_feat_channels():
    batch = random_batch(b=2, n_seq=3, n_res=5, n_extra=4)
    feat = extra_msa_feat(batch)
    assert feat.shape == (2, 4, 5, EXTRA_MSA_FEAT_DIM)
    for b, s, i in [(0, 0, 0), (1, 3, 4), (0, 2, 1)]:
        expected = torch.zeros(25)
        expected[batch["extra_msa"][b, s, i]] = 1.0
        expected[23] = batch["extra_has_deletion"][b, s, i]
        expected[24] = batch["extra_deletion_value"][b, s, i]
        torch.testing.assert_close(feat[b, s, i], expected, rtol=0, atol=0)
    embedder = ExtraMSAEmbedder(c_e=C_E)
    assert embedder(feat).shape == (2, 4, 5, C_E)


def test_global_column_attention_matches_algorithm_19(inputs):
    """Algorithm 19 written out per column i and head h, with the masked mean of the queries."""
    e, _, mask, _ = inputs
    mod = global_attention()
    out = mod(e, mask)
    assert out.shape == e.shape
    H, c = mod.no_heads, mod.c_hidden
    m = mod.layer_norm_m(e)
    expected = torch.zeros_like(e)
    for b in range(B):
        for i in range(N):
            mi, keep = m[b, :, i], mask[b, :, i]  # [S, C], [S]
            q_all = mi @ mod.linear_q.weight.T  # [S, H c]: q_si = LinearNoBias(m_si)
            q = (q_all * keep[:, None]).sum(0) / (keep.sum() + 1e-10)  # masked mean over s
            k, v = mi @ mod.linear_k.weight.T, mi @ mod.linear_v.weight.T  # [S, c], shared by heads
            o = torch.zeros(E, H * c)
            for h in range(H):
                logits = k @ q[h * c:(h + 1) * c] / math.sqrt(c) + (keep - 1.0) * 1e4
                a = torch.softmax(logits, dim=0)  # over the sequences t
                g = torch.sigmoid(mi @ mod.linear_g.weight[h * c:(h + 1) * c].T + mod.linear_g.bias[h * c:(h + 1) * c])
                o[:, h * c:(h + 1) * c] = g * (a @ v)
            expected[b, :, i] = o @ mod.linear_o.weight.T + mod.linear_o.bias
    torch.testing.assert_close(out, expected, **TOL)


def test_global_column_attention_is_column_local(inputs):
    """Any subset of the columns gives the matching slice (DAP runs it on a column shard)."""
    e, _, mask, _ = inputs
    mod = global_attention()
    torch.testing.assert_close(mod(e[:, :, 2:5], mask[:, :, 2:5]), mod(e, mask)[:, :, 2:5], **TOL)


def test_block_is_an_evoformer_block_with_global_column_attention(inputs):
    e, z, mask, pair_mask = inputs
    block = stack(1).blocks[0].eval()
    assert isinstance(block, EvoformerBlock) and isinstance(block.msa_att_col, MSAColumnGlobalAttention)
    assert isinstance(block.msa_att_row, MSARowAttentionWithPairBias) and block.msa_att_row.mha.c_hidden == 4
    # Algorithm 18 lines 3-11, written out
    em, ez = e, z
    em = em + block.msa_att_row(em, ez, mask)
    em = em + block.msa_att_col(em, mask)
    em = em + block.msa_transition(em, mask)
    ez = ez + block.outer_product_mean(em, mask)
    for mod in (block.tri_mul_out, block.tri_mul_in, block.tri_att_start, block.tri_att_end, block.pair_transition):
        ez = ez + mod(ez, pair_mask)
    out_e, out_z = block(e, z, mask, pair_mask)
    torch.testing.assert_close(out_e, em, rtol=0, atol=0)
    torch.testing.assert_close(out_z, ez, rtol=0, atol=0)


def test_stack_returns_the_pair_after_every_block(inputs):
    e, z, mask, pair_mask = inputs
    mod = stack(2).eval()
    e1, z1 = mod.blocks[0](e, z, mask, pair_mask)
    _, z2 = mod.blocks[1](e1, z1, mask, pair_mask)
    out = mod(e, z, mask, pair_mask)
    assert out.shape == (B, N, N, C_Z)
    torch.testing.assert_close(out, z2, rtol=0, atol=0)


def test_published_block_size():
    """AlphaFold's extra-MSA block: C_e 64, row and global column attention 8 heads of 8, the
    Evoformer's pair sizes: 701,312 parameters (OpenFold's model_1 config gives the same)."""
    with torch.device("meta"):
        block = ExtraMSABlock(64, 128, c_hidden_msa_att=8, no_heads_msa=8)
    assert sum(p.numel() for p in block.parameters()) == 701_312
    assert sum(p.numel() for p in block.msa_att_col.parameters()) == 13_568


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_chunked_equals_unchunked(inputs, chunk_size):
    """Global column attention and the whole stack (row attention, transitions, outer product mean,
    triangle modules): values and gradients of the inputs and every parameter."""
    e, z, mask, pair_mask = inputs
    for mod, args in ((global_attention(), lambda e_, z_: (e_, mask)), (stack(2).eval(), lambda e_, z_: (e_, z_, mask, pair_mask))):
        results = []
        for size in (None, chunk_size):
            mod.chunk_size = size
            for sub in mod.modules():
                if hasattr(sub, "chunk_size"):
                    sub.chunk_size = size
            e_, z_ = e.clone().requires_grad_(), z.clone().requires_grad_()
            out = mod(*args(e_, z_))
            params = list(mod.parameters())
            grads = torch.autograd.grad(out.square().sum(), [e_, z_, *params], allow_unused=True)
            results.append((out, grads))
        (full, g_full), (chunked, g_chunked) = results
        torch.testing.assert_close(chunked, full, **TOL)
        for a, b in zip(g_chunked, g_full):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, **GRAD_TOL)


def test_validation_needs_extra_rows_for_the_stack(compose):
    from memtrain.config.errors import ConfigError
    from memtrain.config.validate import validate

    cfg = compose("+recipe=alphafold_tiny", "data.max_extra_msa=0", "trainer.device=cpu", tiny=False)
    with pytest.raises(ConfigError, match="data.max_extra_msa") as err:
        validate(cfg)
    assert "model.n_extra_msa_blocks" in str(err.value)
    validate(compose("+recipe=alphafold_tiny", "data.max_extra_msa=0", "model.n_extra_msa_blocks=0",
                     "trainer.device=cpu", tiny=False))
