"""Input and recycling embedders (Supplement 1.5 and 1.10).

Shapes: `*` batch dims, N_seq MSA rows, N_res residues.
"""

from __future__ import annotations

import torch
from torch import nn

from memtrain.models.alphafold.primitives import LayerNorm, Linear


def one_hot_nearest(x: torch.Tensor, v_bins: torch.Tensor) -> torch.Tensor:
    """Algorithm 5: one-hot of the bin centre nearest to x. x [*] -> [*, len(v_bins)].

    Values beyond the outermost centres fall in the first or last bin (so relpos is clipped)."""
    index = torch.argmin((x[..., None] - v_bins).abs(), dim=-1)
    return nn.functional.one_hot(index, num_classes=v_bins.shape[0]).to(x.dtype)


def relpos_one_hot(residue_index: torch.Tensor, max_relative: int = 32) -> torch.Tensor:
    """Algorithm 4, lines 1-2: d_ij = r_i - r_j one-hot encoded over the integer bins
    [-max_relative, max_relative] (2 * 32 + 1 = 65 bins), differences beyond clipped.

    residue_index [*, N_res] (long) -> [*, N_res, N_res, 2 * max_relative + 1] float32."""
    d = (residue_index[..., :, None] - residue_index[..., None, :]).float()
    v_bins = torch.arange(-max_relative, max_relative + 1, device=d.device, dtype=d.dtype)
    return one_hot_nearest(d, v_bins)


class InputEmbedder(nn.Module):
    """Algorithm 3 (embeddings for the initial representations) with the relative position
    encoding of Algorithm 4.

        a_i, b_i = Linear(target_feat_i)                 (c_z each)
        z_ij = a_i + b_j + Linear(one_hot(r_i - r_j))    (Algorithm 4)
        m_si = Linear(msa_feat_si) + Linear(target_feat_i)
    """

    def __init__(self, target_feat_dim: int, msa_feat_dim: int, c_m: int, c_z: int, max_relative: int = 32):
        super().__init__()
        self.max_relative = max_relative
        self.linear_tf_z_i = Linear(target_feat_dim, c_z)
        self.linear_tf_z_j = Linear(target_feat_dim, c_z)
        self.linear_tf_m = Linear(target_feat_dim, c_m)
        self.linear_msa_m = Linear(msa_feat_dim, c_m)
        self.linear_relpos = Linear(2 * max_relative + 1, c_z)

    def forward(
        self, target_feat: torch.Tensor, residue_index: torch.Tensor, msa_feat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """target_feat [*, N_res, tf_dim], residue_index [*, N_res], msa_feat [*, N_seq, N_res, msa_dim]
        -> m [*, N_seq, N_res, C_m], z [*, N_res, N_res, C_z]."""
        a = self.linear_tf_z_i(target_feat)  # [*, N_res, C_z]
        b = self.linear_tf_z_j(target_feat)
        relpos = relpos_one_hot(residue_index, self.max_relative).to(a.dtype)
        z = a[..., :, None, :] + b[..., None, :, :] + self.linear_relpos(relpos)
        m = self.linear_msa_m(msa_feat) + self.linear_tf_m(target_feat)[..., None, :, :]
        return m, z


def distance_bins(x: torch.Tensor, min_bin: float, max_bin: float, no_bins: int) -> torch.Tensor:
    """Distogram one-hot of the pairwise distances of x [*, N_res, 3] -> [*, N_res, N_res, no_bins].

    Bin b covers the open interval (lower_b, lower_{b+1}) with lower = linspace(min_bin, max_bin,
    no_bins) and the last bin open-ended, as AlphaFold's dgram_from_positions compares
    (d^2 > lower^2) & (d^2 < upper^2) (3.25, 4.5, ..., 20.75 Angstrom for the defaults): a distance
    up to min_bin, or exactly on an inner edge, falls in no bin (all zeros). Compared on squared
    distances in max(float32, x.dtype), so no sqrt."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    lower = torch.linspace(min_bin, max_bin, no_bins, device=x.device, dtype=dtype) ** 2
    upper = torch.cat([lower[1:], lower.new_full((1,), float("inf"))])
    d2 = (x[..., :, None, :] - x[..., None, :, :]).to(dtype).square().sum(-1, keepdim=True)
    return ((d2 > lower) & (d2 < upper)).to(dtype)


class RecyclingEmbedder(nn.Module):
    """Algorithm 32 (embedding of the previous iteration's outputs), Supplement 1.10.

        m_1i update = LayerNorm(m_1i^prev)
        z_ij update = LayerNorm(z_ij^prev) + Linear(one_hot(d_ij)),   d_ij = |x_i - x_j|

    The caller adds the updates to the first MSA row and to the pair representation.
    """

    def __init__(self, c_m: int, c_z: int, min_bin: float = 3.25, max_bin: float = 20.75, no_bins: int = 15):
        super().__init__()
        self.min_bin, self.max_bin, self.no_bins = min_bin, max_bin, no_bins
        self.layer_norm_m = LayerNorm(c_m)
        self.layer_norm_z = LayerNorm(c_z)
        self.linear = Linear(no_bins, c_z)

    def forward(
        self, m1_prev: torch.Tensor, z_prev: torch.Tensor, x_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """m1_prev [*, N_res, C_m] (first MSA row), z_prev [*, N_res, N_res, C_z], x_prev [*, N_res, 3]
        (the previous iteration's pseudo-beta positions: CB, CA for glycine; Angstrom) -> (m1 update [*, N_res, C_m], z update [*, N_res, N_res, C_z])."""
        d = distance_bins(x_prev, self.min_bin, self.max_bin, self.no_bins).to(z_prev.dtype)
        z_update = self.layer_norm_z(z_prev) + self.linear(d)
        return self.layer_norm_m(m1_prev), z_update
