"""Evoformer modules: shapes, numeric checks against explicit loops, the piece-wise API on shards
(what the DAP wrapper relies on), chunked == unchunked, and the block's residual/dropout rules.

Tolerances: fp32 throughout. Values are O(1)-O(10) after the randomised weights; results that
sum the same products in a different order (einsum vs loops, chunks vs whole) agree to a few
ulps, so rtol=1e-5, atol=1e-5 (1e-4 for gradients, which sum over more terms)."""

from __future__ import annotations

import math

import pytest
import torch

from memtrain.models.alphafold.evoformer import (
    EvoformerBlock,
    EvoformerStack,
    MSAColumnAttention,
    MSARowAttentionWithPairBias,
    OuterProductMean,
    Transition,
    TriangleAttention,
    TriangleMultiplication,
)
from memtrain.models.alphafold.primitives import mask_bias
from tests.unit.alphafold.helpers import randomize_

B, S, N, C_M, C_Z = 2, 5, 7, 12, 6
TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture
def inputs():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(B, S, N, C_M, generator=gen)
    z = torch.randn(B, N, N, C_Z, generator=gen)
    msa_mask = (torch.rand(B, S, N, generator=gen) > 0.2).float()
    seq_mask = torch.ones(B, N)
    seq_mask[1, -2:] = 0.0  # padding in the second sample
    pair_mask = seq_mask[:, :, None] * seq_mask[:, None, :]
    return m, z, msa_mask, pair_mask


def modules():
    torch.manual_seed(0)
    return {
        "msa_row": randomize_(MSARowAttentionWithPairBias(C_M, C_Z, c_hidden=4, no_heads=3)),
        "msa_col": randomize_(MSAColumnAttention(C_M, c_hidden=4, no_heads=3)),
        "msa_transition": randomize_(Transition(C_M, n=2)),
        "opm": randomize_(OuterProductMean(C_M, C_Z, c_hidden=3)),
        "tri_mul_out": randomize_(TriangleMultiplication(C_Z, c_hidden=5, outgoing=True)),
        "tri_mul_in": randomize_(TriangleMultiplication(C_Z, c_hidden=5, outgoing=False)),
        "tri_att_start": randomize_(TriangleAttention(C_Z, c_hidden=4, no_heads=2, starting=True)),
        "tri_att_end": randomize_(TriangleAttention(C_Z, c_hidden=4, no_heads=2, starting=False)),
        "pair_transition": randomize_(Transition(C_Z, n=2)),
    }


def run(name, module, m, z, msa_mask, pair_mask):
    if name.startswith("msa_row"):
        return module(m, z, msa_mask)
    if name.startswith(("msa_col", "msa_transition", "opm")):
        return module(m, msa_mask)
    return module(z, pair_mask)


def test_output_shapes(inputs):
    m, z, msa_mask, pair_mask = inputs
    for name, module in modules().items():
        expected = (B, N, N, C_Z) if name == "opm" or not name.startswith("msa") else (B, S, N, C_M)
        assert run(name, module, m, z, msa_mask, pair_mask).shape == expected, name


def test_outer_product_mean_matches_a_loop_over_sequences(inputs):
    m, _, msa_mask, _ = inputs
    opm = modules()["opm"]
    ln = opm.layer_norm(m)
    a = opm.linear_1(ln) * msa_mask[..., None]
    b = opm.linear_2(ln) * msa_mask[..., None]
    outer = torch.zeros(B, N, N, 3, 3)
    count = torch.zeros(B, N, N)
    for s in range(S):
        outer += a[:, s, :, None, :, None] * b[:, s, None, :, None, :]
        count += msa_mask[:, s, :, None] * msa_mask[:, s, None, :]
    expected = opm.linear_out(outer.flatten(-2)) / (count[..., None] + 1e-3)
    torch.testing.assert_close(opm(m, msa_mask), expected, **TOL)


@pytest.mark.parametrize("outgoing", [True, False])
def test_triangle_multiplication_matches_a_loop_over_k(inputs, outgoing):
    _, z, _, pair_mask = inputs
    mod = modules()["tri_mul_out" if outgoing else "tri_mul_in"]
    zn = mod.layer_norm_in(z)
    a = pair_mask[..., None] * torch.sigmoid(mod.linear_a_g(zn)) * mod.linear_a_p(zn)
    b = pair_mask[..., None] * torch.sigmoid(mod.linear_b_g(zn)) * mod.linear_b_p(zn)
    p = torch.zeros(B, N, N, 5)
    for k in range(N):
        if outgoing:  # Algorithm 11: sum_k a_ik * b_jk
            p += a[:, :, None, k, :] * b[:, None, :, k, :]
        else:  # Algorithm 12: sum_k a_ki * b_kj
            p += a[:, k, :, None, :] * b[:, k, None, :, :]
    expected = torch.sigmoid(mod.linear_g(zn)) * mod.linear_z(mod.layer_norm_out(p))
    torch.testing.assert_close(mod(z, pair_mask), expected, **TOL)


def explicit_triangle_attention(mod, z, pair_mask, starting):
    """Algorithms 13 / 14 written out with indices: per head h and residues i, j,
    a_ijk = softmax_k(q_ij.k_ik / sqrt(c) + b_jk) (start) or softmax_k(q_ij.k_kj / sqrt(c) + b_ki) (end)."""
    zn = mod.layer_norm(z)
    att = mod.mha
    h, c = att.no_heads, att.c_hidden
    q = (zn @ att.linear_q.weight.T).unflatten(-1, (h, c))  # [B, I, J, H, c]
    k = (zn @ att.linear_k.weight.T).unflatten(-1, (h, c))
    v = (zn @ att.linear_v.weight.T).unflatten(-1, (h, c))
    bias = zn @ mod.linear.weight.T  # [B, J, K, H]
    g = torch.sigmoid(att.linear_g(zn)).unflatten(-1, (h, c))
    out = torch.zeros(B, N, N, h, c)
    for i in range(N):
        for j in range(N):
            if starting:
                logits = torch.einsum("bhc,bkhc->bhk", q[:, i, j], k[:, i]) / math.sqrt(c) + bias[:, j].transpose(1, 2)
                logits = logits + mask_bias(pair_mask[:, i])[:, None, :]
                out[:, i, j] = torch.einsum("bhk,bkhc->bhc", torch.softmax(logits, -1), v[:, i])
            else:
                logits = torch.einsum("bhc,bkhc->bhk", q[:, i, j], k[:, :, j]) / math.sqrt(c) + bias[:, :, i].transpose(1, 2)
                logits = logits + mask_bias(pair_mask[:, :, j])[:, None, :]
                out[:, i, j] = torch.einsum("bhk,bkhc->bhc", torch.softmax(logits, -1), v[:, :, j])
    return att.linear_o((out * g).flatten(-2))


@pytest.mark.parametrize("starting", [True, False])
def test_triangle_attention_matches_the_algorithm(inputs, starting):
    _, z, _, pair_mask = inputs
    mod = modules()["tri_att_start" if starting else "tri_att_end"]
    expected = explicit_triangle_attention(mod, z, pair_mask, starting)
    out = mod(z, pair_mask)
    assert torch.isfinite(out).all()
    # Compared where both residues exist: at padded (i, j) every key of the softmax is masked, the
    # logits are -1e4 + O(1) and carry only fp32's 1e-3 absolute resolution there, so the padding's
    # (meaningless) values depend on the order the biases are added in.
    valid = pair_mask[..., None]
    torch.testing.assert_close(out * valid, expected * valid, **TOL)


def test_msa_row_and_column_attention_match_the_attention_module(inputs):
    """Row attention = gated attention over residues with the pair bias; column attention = the
    same over sequences on the transposed MSA, with no pair bias."""
    m, z, msa_mask, _ = inputs
    mods = modules()
    row, col = mods["msa_row"], mods["msa_col"]
    bias = (row.layer_norm_z(z) @ row.linear_z.weight.T).permute(0, 3, 1, 2)  # [B, H, I, J]
    mn = row.layer_norm_m(m)
    expected = torch.stack([
        row.mha(mn[:, s], mn[:, s], [bias, mask_bias(msa_mask[:, s])[:, None, None, :]]) for s in range(S)
    ], dim=1)
    torch.testing.assert_close(row(m, z, msa_mask), expected, **TOL)
    mn = col.layer_norm_m(m)
    expected = torch.stack([
        col.mha(mn[:, :, r], mn[:, :, r], [mask_bias(msa_mask[:, :, r])[:, None, None, :]]) for r in range(N)
    ], dim=2)
    torch.testing.assert_close(col(m, msa_mask), expected, **TOL)


# -- the piece-wise API on shards (odd split: 3 of 7 residues, 2 of 5 sequences) ---------------------

I_SHARD = slice(0, 3)
S_SHARD = slice(2, 4)


def test_msa_row_attention_pieces_on_shards(inputs):
    m, z, msa_mask, _ = inputs
    mod = modules()["msa_row"]
    full_bias = mod.pair_bias(z)
    assert full_bias.shape == (B, 3, N, N)
    # a shard of z's rows gives those rows of the bias (what DAP all-gathers)
    torch.testing.assert_close(mod.pair_bias(z[:, I_SHARD]), full_bias[:, :, I_SHARD], rtol=0, atol=0)
    full = mod(m, z, msa_mask)
    torch.testing.assert_close(mod.attend(m, full_bias, msa_mask), full, rtol=0, atol=0)
    torch.testing.assert_close(mod.attend(m[:, S_SHARD], full_bias, msa_mask[:, S_SHARD]), full[:, S_SHARD], **TOL)


def test_msa_column_attention_and_transitions_on_shards(inputs):
    m, z, msa_mask, pair_mask = inputs
    mods = modules()
    col = mods["msa_col"]
    torch.testing.assert_close(
        col(m[:, :, I_SHARD], msa_mask[:, :, I_SHARD]), col(m, msa_mask)[:, :, I_SHARD], **TOL
    )
    tr = mods["pair_transition"]
    torch.testing.assert_close(tr(z[:, I_SHARD], pair_mask[:, I_SHARD]), tr(z, pair_mask)[:, I_SHARD], **TOL)


def test_outer_product_mean_pieces_on_shards(inputs):
    m, _, msa_mask, _ = inputs
    opm = modules()["opm"]
    a, b = opm.project(m, msa_mask)
    assert a.shape == b.shape == (B, S, N, 3)
    a_shard, _ = opm.project(m[:, :, I_SHARD], msa_mask[:, :, I_SHARD])
    torch.testing.assert_close(a_shard, a[:, :, I_SHARD], rtol=0, atol=0)
    full = opm(m, msa_mask)
    out = opm.combine(a_shard, b, msa_mask[:, :, I_SHARD], msa_mask)
    assert out.shape == (B, 3, N, C_Z)
    torch.testing.assert_close(out, full[:, I_SHARD], **TOL)


def test_triangle_multiplication_pieces_on_shards(inputs):
    _, z, _, pair_mask = inputs
    mods = modules()
    out_mod, in_mod = mods["tri_mul_out"], mods["tri_mul_in"]
    # outgoing: rows i sharded for a and g, b over all rows j
    a_rows, _, g_rows = out_mod.project(z[:, I_SHARD], pair_mask[:, I_SHARD])
    _, b_all, _ = out_mod.project(z, pair_mask)
    torch.testing.assert_close(out_mod.combine(a_rows, b_all, g_rows), out_mod(z, pair_mask)[:, I_SHARD], **TOL)
    # incoming: columns j sharded for b and g, a over all columns i
    a_all, _, _ = in_mod.project(z, pair_mask)
    _, b_cols, g_cols = in_mod.project(z[:, :, I_SHARD], pair_mask[:, :, I_SHARD])
    torch.testing.assert_close(in_mod.combine(a_all, b_cols, g_cols), in_mod(z, pair_mask)[:, :, I_SHARD], **TOL)


@pytest.mark.parametrize("name", ["tri_att_start", "tri_att_end"])
def test_triangle_attention_pieces_on_shards(inputs, name):
    _, z, _, pair_mask = inputs
    mod = modules()[name]
    zo, mo = mod.orient(z), mod.orient_mask(pair_mask)
    if name == "tri_att_end":
        torch.testing.assert_close(zo, z.transpose(1, 2), rtol=0, atol=0)
    full_bias = mod.triangle_bias(zo)
    assert full_bias.shape == (B, 2, N, N)
    torch.testing.assert_close(mod.triangle_bias(zo[:, I_SHARD]), full_bias[:, :, I_SHARD], rtol=0, atol=0)
    full = mod(z, pair_mask)
    torch.testing.assert_close(mod.orient(mod.attend(zo, full_bias, mo)), full, rtol=0, atol=0)
    shard = mod.attend(zo[:, I_SHARD], full_bias, mo[:, I_SHARD])
    torch.testing.assert_close(shard, mod.orient(full)[:, I_SHARD], **TOL)


# -- chunking ------------------------------------------------------------------------------------------

CHUNKED = ["msa_row", "msa_col", "msa_transition", "opm", "tri_att_start", "tri_att_end", "pair_transition"]


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_chunked_equals_unchunked_values_and_gradients(inputs, chunk_size):
    m, z, msa_mask, pair_mask = inputs
    for name, module in modules().items():
        if name not in CHUNKED:
            assert not hasattr(module, "chunk_size")
            continue
        m_, z_ = m.clone().requires_grad_(), z.clone().requires_grad_()
        module.chunk_size = None
        full = run(name, module, m_, z_, msa_mask, pair_mask)
        grads_full = torch.autograd.grad(full.square().sum(), [m_, z_, *module.parameters()], allow_unused=True)
        module.chunk_size = chunk_size
        chunked = run(name, module, m_, z_, msa_mask, pair_mask)
        grads_chunked = torch.autograd.grad(chunked.square().sum(), [m_, z_, *module.parameters()], allow_unused=True)
        torch.testing.assert_close(chunked, full, **TOL, msg=lambda s, name=name: f"{name}: {s}")
        for gc, gf in zip(grads_chunked, grads_full):
            if gf is None:
                assert gc is None
            else:
                torch.testing.assert_close(gc, gf, **GRAD_TOL, msg=lambda s, name=name: f"{name} grad: {s}")


def test_chunks_are_whole_rows_as_openfold_chunk_layer():
    """Transitions chunk over the leading batch dims (rows of positions), not over every position:
    the pair transition of [2, 7, 7, C] at chunk_size 4 runs ceil(2 * 7 / 4) = 4 chunks of whole rows
    (over positions it would be ceil(98 / 4) = 25). The outer product mean chunks over i per batch
    element and reads its shared b whole in every chunk: 2 * ceil(7 / 4) = 4 chunks."""
    m, z, msa_mask, pair_mask = (t for t in (torch.randn(B, S, N, C_M), torch.randn(B, N, N, C_Z),
                                             torch.ones(B, S, N), torch.ones(B, N, N)))
    mods = modules()
    calls = []
    mods["pair_transition"].linear_1.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    mods["pair_transition"].chunk_size = 4
    mods["pair_transition"](z, pair_mask)
    assert calls == [(4, N, C_Z)] * 3 + [(2, N, C_Z)]
    calls.clear()
    mods["opm"].linear_out.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    mods["opm"].chunk_size = 4
    mods["opm"](m, msa_mask)
    assert calls == [(4, N, 9), (3, N, 9)] * 2


# -- the block -----------------------------------------------------------------------------------------


def tiny_block(**kwargs):
    torch.manual_seed(0)
    return randomize_(
        EvoformerBlock(C_M, C_Z, c_hidden_msa_att=4, no_heads_msa=2, c_hidden_opm=3, c_hidden_mul=5,
                       c_hidden_pair_att=4, no_heads_pair=2, transition_n=2, **kwargs)
    )


def test_block_composes_the_modules_in_openfold_order(inputs):
    m, z, msa_mask, pair_mask = inputs
    block = tiny_block().eval()
    em, ez = m, z
    em = em + block.msa_att_row(em, ez, msa_mask)
    em = em + block.msa_att_col(em, msa_mask)
    em = em + block.msa_transition(em, msa_mask)
    ez = ez + block.outer_product_mean(em, msa_mask)
    for mod in (block.tri_mul_out, block.tri_mul_in, block.tri_att_start, block.tri_att_end, block.pair_transition):
        ez = ez + mod(ez, pair_mask)
    out_m, out_z = block(m, z, msa_mask, pair_mask)
    torch.testing.assert_close(out_m, em, rtol=0, atol=0)
    torch.testing.assert_close(out_z, ez, rtol=0, atol=0)


def test_block_adds_in_place_only_without_autograd(inputs):
    m, z, msa_mask, pair_mask = inputs
    block = tiny_block().eval()
    expected_m, expected_z = block(m, z, msa_mask, pair_mask)
    m_in, z_in = m.clone(), z.clone()
    with torch.no_grad():
        out_m, out_z = block(m_in, z_in, msa_mask, pair_mask)
    # x += u and x + u round identically
    torch.testing.assert_close(out_m, expected_m, rtol=0, atol=0)
    torch.testing.assert_close(out_z, expected_z, rtol=0, atol=0)
    assert out_m.data_ptr() == m_in.data_ptr() and out_z.data_ptr() == z_in.data_ptr()  # updated in place
    assert torch.equal(m, inputs[0])  # under autograd the inputs are untouched


def test_block_dropout_is_seeded_and_shared_across_rows(inputs):
    m, z, msa_mask, pair_mask = inputs
    block = tiny_block(msa_dropout=0.5, pair_dropout=0.5).train()
    torch.manual_seed(3)
    a = block(m, z, msa_mask, pair_mask)
    torch.manual_seed(3)
    b = block(m, z, msa_mask, pair_mask)
    torch.manual_seed(4)
    c = block(m, z, msa_mask, pair_mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    eval_out = block.eval()(m, z, msa_mask, pair_mask)
    assert not torch.equal(a[1], eval_out[1])
    # the row-wise dropout of the MSA row attention: the same entries zeroed in every MSA row
    update = torch.ones(B, S, N, C_M)
    torch.manual_seed(5)
    dropped = block.train().msa_dropout_row(update)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped)) and (dropped == 0).any()


def test_stack_shapes_and_single_representation(inputs):
    m, z, msa_mask, pair_mask = inputs
    torch.manual_seed(0)
    stack = randomize_(EvoformerStack(2, C_M, C_Z, 9, c_hidden_msa_att=4, no_heads_msa=2, c_hidden_opm=3,
                                      c_hidden_mul=5, c_hidden_pair_att=4, no_heads_pair=2, transition_n=2))
    out_m, out_z, s = stack(m, z, msa_mask, pair_mask)
    assert out_m.shape == m.shape and out_z.shape == z.shape and s.shape == (B, N, 9)
    assert isinstance(stack.blocks, torch.nn.ModuleList) and len(stack.blocks) == 2
    torch.testing.assert_close(s, stack.linear_s(out_m[:, 0]), rtol=0, atol=0)
