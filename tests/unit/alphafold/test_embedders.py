from __future__ import annotations

import torch

from memtrain.models.alphafold.embedders import (
    InputEmbedder,
    RecyclingEmbedder,
    distance_bins,
    one_hot_nearest,
    relpos_one_hot,
)
from tests.unit.alphafold.helpers import randomize_


def test_one_hot_picks_the_nearest_bin():
    """Algorithm 5 with uneven bins: argmin |x - v_b|, values outside go to the end bins."""
    v_bins = torch.tensor([0.0, 1.0, 5.0])
    x = torch.tensor([-3.0, 0.4, 0.6, 2.9, 3.1, 40.0])
    assert one_hot_nearest(x, v_bins).argmax(-1).tolist() == [0, 0, 1, 1, 2, 2]
    assert one_hot_nearest(x, v_bins).sum(-1).tolist() == [1.0] * 6


def test_relative_positions_are_clipped_to_65_bins():
    residue_index = torch.tensor([[0, 1, 5, 40, 200]])
    onehot = relpos_one_hot(residue_index)
    assert onehot.shape == (1, 5, 5, 65)
    bins = onehot.argmax(-1)[0]
    # bin = clip(r_i - r_j, -32, 32) + 32
    assert bins[0].tolist() == [32, 31, 27, 0, 0]
    assert bins[:, 0].tolist() == [32, 33, 37, 64, 64]


def test_input_embedder_shapes_and_outer_sum():
    torch.manual_seed(0)
    emb = randomize_(InputEmbedder(target_feat_dim=22, msa_feat_dim=49, c_m=16, c_z=8))
    tf, msa = torch.randn(2, 6, 22), torch.randn(2, 3, 6, 49)
    ri = torch.arange(6).expand(2, 6)
    m, z = emb(tf, ri, msa)
    assert m.shape == (2, 3, 6, 16) and z.shape == (2, 6, 6, 8)
    i, j = 1, 4  # z_ij = a_i + b_j + Linear(onehot(r_i - r_j)) (Algorithm 3 lines 1-3, Algorithm 4)
    expected = emb.linear_tf_z_i(tf[:, i]) + emb.linear_tf_z_j(tf[:, j]) + emb.linear_relpos.bias
    expected = expected + emb.linear_relpos.weight[:, (i - j) + 32]
    # fp32, three O(1) sums in a different order
    torch.testing.assert_close(z[:, i, j], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m[:, 2, i], emb.linear_msa_m(msa[:, 2, i]) + emb.linear_tf_m(tf[:, i]), rtol=1e-5, atol=1e-6)


def test_recycling_distance_bins():
    """15 bins with lower edges 3.25, 4.5, ..., 20.75 A; the last open, below 3.25 A none."""
    x = torch.zeros(5, 3)
    x[1:, 0] = torch.tensor([3.0, 4.0, 5.0, 25.0])
    d = distance_bins(x, 3.25, 20.75, 15)
    assert d.shape == (5, 5, 15)
    assert d[0, 1].sum() == 0  # 3.0 A: below the first edge
    assert d[0, 2].argmax() == 0 and d[0, 2].sum() == 1  # 4.0 A in (3.25, 4.5)
    assert d[0, 3].argmax() == 1  # 5.0 A in (4.5, 5.75)
    assert d[0, 4].argmax() == 14 and d[0, 4].sum() == 1  # 25 A: the open last bin
    assert torch.equal(d, d.transpose(0, 1))


def test_recycling_distance_on_a_bin_edge_falls_in_no_bin():
    """AlphaFold's dgram_from_positions bins (d^2 > lower^2) & (d^2 < upper^2): a distance exactly on
    an inner edge (4.5 A, 5.75 A: exact in binary) is in neither neighbouring bin; just inside it is."""
    x = torch.zeros(5, 3, dtype=torch.float64)
    x[1:, 0] = torch.tensor([4.5, 5.75, 4.5 - 1e-9, 4.5 + 1e-9], dtype=torch.float64)
    d = distance_bins(x, 3.25, 20.75, 15)
    assert d.dtype == torch.float64  # computed in fp64 for fp64 positions, so the 1e-9 offsets survive
    assert d[0, 1].sum() == 0 and d[0, 2].sum() == 0
    assert d[0, 3].argmax() == 0 and d[0, 3].sum() == 1
    assert d[0, 4].argmax() == 1 and d[0, 4].sum() == 1


def test_recycling_embedder_shapes_and_layer_norms():
    torch.manual_seed(0)
    emb = randomize_(RecyclingEmbedder(c_m=16, c_z=8))
    m1, z, x = torch.randn(2, 6, 16), torch.randn(2, 6, 6, 8), 10.0 * torch.randn(2, 6, 3)
    m_up, z_up = emb(m1, z, x)
    assert m_up.shape == (2, 6, 16) and z_up.shape == (2, 6, 6, 8)
    torch.testing.assert_close(m_up, emb.layer_norm_m(m1), rtol=0, atol=0)
    expected = emb.layer_norm_z(z) + emb.linear(distance_bins(x, 3.25, 20.75, 15))
    torch.testing.assert_close(z_up, expected, rtol=0, atol=0)
