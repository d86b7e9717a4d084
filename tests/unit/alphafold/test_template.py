"""The template stack (Supplement 1.7.1, Algorithms 16, 17 and the torsion-angle rows): the pair and
angle features against a computation written out per template and residue pair, point-wise
attention against a loop over pairs and heads, the pair block's composition, the embedder's
masking rules, chunked == unchunked.

Tolerances: fp32; values O(1)-O(10). Loops and einsums sum the same products in another order:
rtol=1e-5, atol=1e-5 (1e-4 for gradients); the unit vectors go through two normalisations and a
rotation, 1e-5 as well."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memtrain.models.alphafold.template import (
    TEMPLATE_ANGLE_FEAT_DIM,
    TEMPLATE_PAIR_FEAT_DIM,
    TemplateAngleEmbedder,
    TemplateEmbedder,
    TemplatePairBlock,
    TemplatePairStack,
    TemplatePointwiseAttention,
    template_angle_feat,
    template_pair_feat,
)
from tests.unit.alphafold.helpers import random_batch, randomize_

B, T, N, C_T, C_Z, C_M = 2, 3, 6, 6, 5, 7
TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture
def batch():
    return random_batch(b=B, n_seq=2, n_res=N, n_templ=T, seed=3)


def frame(n, ca, c):
    """Algorithm 21 by hand (numpy, float64): columns e1, e2, e3 and the origin."""
    v1, v2 = c - ca, n - ca
    e1 = v1 / np.linalg.norm(v1)
    u2 = v2 - e1 * (e1 @ v2)
    e2 = u2 / np.linalg.norm(u2)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1), ca


@pytest.mark.parametrize("use_unit_vector", [False, True])
def test_template_pair_feat_written_out(batch, use_unit_vector):
    feat = template_pair_feat(batch, use_unit_vector=use_unit_vector)
    assert feat.shape == (B, T, N, N, TEMPLATE_PAIR_FEAT_DIM)
    lower = np.linspace(3.25, 50.75, 39)
    upper = np.append(lower[1:], np.inf)
    pos = batch["template_all_atom_positions"].double().numpy()
    atom_mask = batch["template_all_atom_mask"].numpy()
    pb, pb_mask = batch["template_pseudo_beta"].double().numpy(), batch["template_pseudo_beta_mask"].numpy()
    aatype = batch["template_aatype"].numpy()
    for b, t in [(0, 0), (1, 2), (0, 1)]:
        bb = atom_mask[b, t, :, 0] * atom_mask[b, t, :, 1] * atom_mask[b, t, :, 2]
        for i in range(N):
            for j in range(N):
                expected = np.zeros(88)
                d = np.linalg.norm(pb[b, t, i] - pb[b, t, j])
                expected[:39] = (d > lower) & (d < upper)  # random positions: never on an edge
                expected[39] = pb_mask[b, t, i] * pb_mask[b, t, j]
                expected[40 + aatype[b, t, j]] = 1.0  # residue j, then residue i
                expected[62 + aatype[b, t, i]] = 1.0
                if use_unit_vector and bb[i] * bb[j]:
                    rot, origin = frame(pos[b, t, i, 0], pos[b, t, i, 1], pos[b, t, i, 2])
                    local = rot.T @ (pos[b, t, j, 1] - origin)  # CA_j in the frame of i
                    expected[84:87] = local / math.sqrt(1e-6 + local @ local)
                expected[87] = bb[i] * bb[j]
                expected *= bb[i] * bb[j]
                torch.testing.assert_close(feat[b, t, i, j].double(), torch.from_numpy(expected), **TOL)


def test_template_angle_feat_layout(batch):
    feat = template_angle_feat(batch)
    assert feat.shape == (B, T, N, TEMPLATE_ANGLE_FEAT_DIM)
    b, t, i = 1, 2, 4
    one_hot = torch.zeros(22)
    one_hot[batch["template_aatype"][b, t, i]] = 1.0
    expected = torch.cat([
        one_hot,
        batch["template_torsion_angles_sin_cos"][b, t, i].reshape(14),  # (sin, cos) of angle 0, then angle 1, ...
        batch["template_alt_torsion_angles_sin_cos"][b, t, i].reshape(14),
        batch["template_torsion_angles_mask"][b, t, i],
    ])
    torch.testing.assert_close(feat[b, t, i], expected, rtol=0, atol=0)
    embedder = randomize_(TemplateAngleEmbedder(c_m=C_M))
    hidden = torch.relu(feat @ embedder.linear_1.weight.T + embedder.linear_1.bias)
    torch.testing.assert_close(embedder(feat), hidden @ embedder.linear_2.weight.T + embedder.linear_2.bias, **TOL)


def pointwise():
    torch.manual_seed(0)
    return randomize_(TemplatePointwiseAttention(C_T, C_Z, c_hidden=4, no_heads=2))


def test_pointwise_attention_matches_algorithm_17():
    """Per pair (i, j) and head h: softmax over the real templates of q . k_t / sqrt(c), no gate."""
    gen = torch.Generator().manual_seed(1)
    t, z = torch.randn(B, T, N, N, C_T, generator=gen), torch.randn(B, N, N, C_Z, generator=gen)
    template_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    mod = pointwise()
    out = mod(t, z, template_mask)
    assert out.shape == (B, N, N, C_Z)
    mha, H, c = mod.mha, 2, 4
    assert mha.linear_g is None
    for b in range(B):
        real = template_mask[b].bool()
        for i, j in [(0, 0), (2, 5), (5, 1)]:
            q = z[b, i, j] @ mha.linear_q.weight.T  # [H c]
            k, v = t[b, real, i, j] @ mha.linear_k.weight.T, t[b, real, i, j] @ mha.linear_v.weight.T  # [T', H c]
            o = torch.cat([torch.softmax(k[:, h * c:(h + 1) * c] @ q[h * c:(h + 1) * c] / math.sqrt(c), 0)
                           @ v[:, h * c:(h + 1) * c] for h in range(H)])
            torch.testing.assert_close(out[b, i, j], o @ mha.linear_o.weight.T + mha.linear_o.bias, **TOL)


def pair_block(dropout=0.25):
    torch.manual_seed(0)
    return randomize_(TemplatePairBlock(C_T, c_hidden_att=4, no_heads=2, c_hidden_mul=5, transition_n=2, dropout=dropout))


def test_pair_block_follows_algorithm_16():
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(B, T, N, N, C_T, generator=gen)
    mask = torch.ones(B, T, N, N)
    mask[1, :, -1, :] = mask[1, :, :, -1] = 0.0
    block = pair_block().eval()
    expected = t
    for mod in (block.tri_att_start, block.tri_att_end, block.tri_mul_out, block.tri_mul_in, block.pair_transition):
        expected = expected + mod(expected, mask)
    torch.testing.assert_close(block(t, mask), expected, rtol=0, atol=0)
    assert block.pair_transition.linear_1.out_features == 2 * C_T
    # training: row-wise dropout for the starting node and the multiplications, column-wise for the ending node
    assert [block.dropout_row.shared_dim, block.dropout_col.shared_dim] == [-3, -2]


def test_published_template_sizes():
    """AlphaFold's template stack (OpenFold's model_1 config): 329,408 parameters."""
    with torch.device("meta"):
        embedder = TemplateEmbedder(256, 128)
    assert sum(p.numel() for p in embedder.parameters()) == 329_408
    assert sum(p.numel() for p in embedder.pair_stack.blocks[0].parameters()) == 109_120


def embedder():
    torch.manual_seed(0)
    return randomize_(TemplateEmbedder(C_M, C_Z, C_T, 2, c_hidden_att=4, no_heads=2, c_hidden_mul=5,
                                       c_hidden_pointwise=4, no_heads_pointwise=2)).eval()


def test_embedder_pair_update_and_msa_rows(batch):
    mod = embedder()
    z = torch.randn(B, N, N, C_Z)
    pair_mask = torch.ones(B, N, N)
    update = mod.pair_update(batch, z, pair_mask)
    feat = template_pair_feat(batch)
    t = mod.pair_stack(feat, pair_mask[:, None].expand(B, T, N, N))
    torch.testing.assert_close(update, mod.pointwise_attention(t, z, batch["template_mask"]), rtol=0, atol=0)
    # a sample without templates gets no update (AlphaFold multiplies by sum(template_mask) > 0)
    none = {**batch, "template_mask": torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])}
    update = mod.pair_update(none, z, pair_mask)
    assert update[1].abs().max() == 0 and update[0].abs().max() > 0
    rows, rows_mask = mod.msa_rows(batch)
    assert rows.shape == (B, T, N, C_M)
    torch.testing.assert_close(rows_mask, batch["template_torsion_angles_mask"][..., 2], rtol=0, atol=0)  # psi


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_chunked_equals_unchunked(batch, chunk_size):
    """The template pair stack and the point-wise attention: values and the gradients of z and of
    every parameter."""
    mod = embedder()
    z = torch.randn(B, N, N, C_Z)
    pair_mask = torch.ones(B, N, N)
    pair_mask[0, -2:, :] = pair_mask[0, :, -2:] = 0.0
    results = []
    for size in (None, chunk_size):
        for sub in mod.modules():
            if hasattr(sub, "chunk_size"):
                sub.chunk_size = size
        z_ = z.clone().requires_grad_()
        out = mod.pair_update(batch, z_, pair_mask)
        results.append((out, torch.autograd.grad(out.square().sum(), [z_, *mod.parameters()], allow_unused=True)))
    assert sum(hasattr(sub, "chunk_size") for sub in mod.modules()) == 2 * 3 + 1  # 2 blocks x (2 attn + transition), pointwise
    (full, g_full), (chunked, g_chunked) = results
    torch.testing.assert_close(chunked, full, **TOL)
    for a, b in zip(g_chunked, g_full):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **GRAD_TOL)


def saved_storages(fn, exclude: list[torch.Tensor]) -> dict[int, int]:
    """{storage address: bytes} of what autograd saves for backward while fn() runs, leaving out
    the storages of `exclude` (inputs and parameters)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b", [1, 2])
def test_pointwise_attention_saves_one_copy_of_t_chunked_or_not(b, dtype):
    """The key and value projections read one [*, I, J, T, C_t] copy of t (under bf16 autocast, one
    bf16 cast): chunked or not, the saved storages total the same bytes, and among them exactly one
    holds all of t (before, each projection kept its own copy or cast, and an unchunked B = 2 run
    kept one more than the chunked run)."""
    mod = pointwise()
    t = torch.randn(b, T, N, N, C_T, requires_grad=True)
    z = torch.randn(b, N, N, C_Z, requires_grad=True)
    template_mask = torch.ones(b, T)
    t_bytes = t.numel() * dtype.itemsize

    def forward():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return mod(t, z, template_mask)

    totals = []
    for size in (None, 4):
        mod.chunk_size = size
        saved = saved_storages(forward, [t, z, template_mask, *mod.parameters()])
        totals.append(sum(saved.values()))
        # storages of t's size: the copy of t, and the [*, I, J, H, T, c] key/value-shaped tensors
        # differ from it only when H * c == C_t; here 2 * 4 != 6
        assert list(saved.values()).count(t_bytes) == 1
    assert totals[0] == totals[1]


def test_pair_stack_ends_with_a_layer_norm():
    stack = randomize_(TemplatePairStack(1, C_T, c_hidden_att=4, no_heads=2, c_hidden_mul=5)).eval()
    feat = torch.randn(1, 2, N, N, TEMPLATE_PAIR_FEAT_DIM)
    mask = torch.ones(1, 2, N, N)
    expected = stack.layer_norm(stack.blocks[0](stack.embedder(feat), mask))
    torch.testing.assert_close(stack(feat, mask), expected, rtol=0, atol=0)


def test_validation_needs_template_slots_for_the_stack(compose):
    from memtrain.config.errors import ConfigError
    from memtrain.config.validate import validate

    cfg = compose("+recipe=alphafold_tiny", "data.max_templates=0", "trainer.device=cpu", tiny=False)
    with pytest.raises(ConfigError, match="data.max_templates") as err:
        validate(cfg)
    assert "model.templates" in str(err.value)
    validate(compose("+recipe=alphafold_tiny", "data.max_templates=0", "model.templates=false",
                     "trainer.device=cpu", tiny=False))
