"""The template stack (Supplement 1.7.1, Algorithms 16 and 17).

Each template's pair features (Table 1 "template_pair_feat": distogram of the pseudo-beta atoms,
masks, residue types, unit vectors between backbone frames) are embedded, run through the template
pair stack (Algorithm 16: triangle attention and multiplication, pair transition, at C_t = 64) and
attended to by the pair representation with the template point-wise attention (Algorithm 17). The
templates' backbone and side-chain torsion angles are embedded as extra MSA rows (1.7.1,
"template_angle_feat").

Shapes: `*` batch dims, T = N_templ templates, N_res residues, C_t / C_z / C_m template-pair / pair /
MSA channels.

Input features (from memtrain.data.templates; Supplement Table 1):

    template_aatype                     [*, T, N_res]         long   0..21 (21 = gap: no residue aligned)
    template_all_atom_positions         [*, T, N_res, 37, 3]  float  atom37, Angstrom
    template_all_atom_mask              [*, T, N_res, 37]     float
    template_pseudo_beta                [*, T, N_res, 3]      float  CB (CA for glycine)
    template_pseudo_beta_mask           [*, T, N_res]         float
    template_torsion_angles_sin_cos     [*, T, N_res, 7, 2]   float  pre-omega, phi, psi, chi1-4
    template_alt_torsion_angles_sin_cos [*, T, N_res, 7, 2]   float  pi-periodic chis rotated by pi
    template_torsion_angles_mask        [*, T, N_res, 7]      float
    template_mask                       [*, T]                float  1 = a real template (0 = padding)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memtrain.models.chunking import chunk_layer
from memtrain.models.alphafold.embedders import distance_bins
from memtrain.models.alphafold.evoformer import (
    Transition,
    TriangleAttention,
    TriangleMultiplication,
)
from memtrain.models.alphafold.primitives import (
    Attention,
    LayerNorm,
    Linear,
    SharedDropout,
    mask_bias,
    residual,
)
from memtrain.models.alphafold.structure import Rigid

NUM_TEMPLATE_AATYPES = 22  # 20 amino acids, unknown, gap
TEMPLATE_PAIR_FEAT_DIM = 88  # 39 distogram bins + 1 + 22 + 22 + 3 + 1
TEMPLATE_ANGLE_FEAT_DIM = 57  # 22 + 14 + 14 + 7
# Supplement Table 1: the pseudo-beta distogram has 39 bins between 3.25 and 50.75 Angstrom
DGRAM_MIN_BIN, DGRAM_MAX_BIN, DGRAM_NO_BINS = 3.25, 50.75, 39
# the backbone atoms in the atom37 layout (memtrain.data.residue_constants.ATOM_TYPES)
_N, _CA, _C = 0, 1, 2


def template_pair_feat(batch: dict[str, torch.Tensor], use_unit_vector: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Supplement 1.7.1 and Table 1 "template_pair_feat" -> [*, T, N_res, N_res, 88], channels

        0-38   one-hot distogram of the pseudo-beta distances (39 bins, 3.25-50.75 Angstrom)
        39     pseudo-beta mask of the pair
        40-61  one-hot residue type (22) of residue j        62-83  the same of residue i
        84-86  unit vector from CA_i to CA_j in the backbone frame of i (Algorithm 21 frames)
        87     backbone (N, CA, C) mask of the pair

    all multiplied by the backbone mask of the pair (AlphaFold's SingleTemplateEmbedding, OpenFold's
    build_template_pair_feat). The unit vectors are zeroed unless `use_unit_vector`: AlphaFold's
    monomer models (and OpenFold's model_1) are trained without them (use_template_unit_vector
    False), though the supplement lists them."""
    pb, pb_mask = batch["template_pseudo_beta"], batch["template_pseudo_beta_mask"]
    dtype = pb.dtype
    # the recycling embedder's binning (AlphaFold's dgram_from_positions: lower^2 < d^2 < upper^2, the
    # last bin open); which bin a distance exactly on an edge falls in follows distance_bins
    dgram = distance_bins(pb, DGRAM_MIN_BIN, DGRAM_MAX_BIN, DGRAM_NO_BINS).to(dtype)
    pb_mask_2d = pb_mask[..., :, None] * pb_mask[..., None, :]
    aatype = F.one_hot(batch["template_aatype"], NUM_TEMPLATE_AATYPES).to(dtype)  # [*, T, N, 22]
    n_res = aatype.shape[-2]
    aatype_j = aatype[..., None, :, :].expand(*aatype.shape[:-2], n_res, n_res, NUM_TEMPLATE_AATYPES)
    aatype_i = aatype[..., :, None, :].expand(*aatype.shape[:-2], n_res, n_res, NUM_TEMPLATE_AATYPES)
    # DISCREPANCY: the supplement (Table 1) lists the unit vectors; AlphaFold's monomer models and
    # OpenFold's model_1 zero them (use_template_unit_vector false), and so do we by default.
    positions, atom_mask = batch["template_all_atom_positions"], batch["template_all_atom_mask"]
    frames = Rigid.from_3_points(positions[..., _N, :], positions[..., _CA, :], positions[..., _C, :])
    backbone_mask = atom_mask[..., _N] * atom_mask[..., _CA] * atom_mask[..., _C]
    backbone_mask_2d = backbone_mask[..., :, None] * backbone_mask[..., None, :]
    vec = frames.unsqueeze(-1).invert_apply(frames.trans[..., None, :, :])  # [*, T, i, j, 3] = R_i^T (t_j - t_i)
    inv_distance = torch.rsqrt(eps + vec.square().sum(-1)) * backbone_mask_2d
    unit_vector = vec * inv_distance[..., None]
    if not use_unit_vector:
        unit_vector = torch.zeros_like(unit_vector)
    feat = torch.cat(
        [dgram, pb_mask_2d[..., None], aatype_j, aatype_i, unit_vector, backbone_mask_2d[..., None]], dim=-1
    )
    return feat * backbone_mask_2d[..., None]


def template_angle_feat(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Table 1 "template_angle_feat" -> [*, T, N_res, 57]: one-hot residue type (22), sin/cos of
    the 7 torsion angles (14), of their alternatives (14), and the torsion masks (7)."""
    sin_cos = batch["template_torsion_angles_sin_cos"]
    return torch.cat(
        [
            F.one_hot(batch["template_aatype"], NUM_TEMPLATE_AATYPES).to(sin_cos.dtype),
            sin_cos.flatten(-2),
            batch["template_alt_torsion_angles_sin_cos"].flatten(-2),
            batch["template_torsion_angles_mask"],
        ],
        dim=-1,
    )


class TemplatePairBlock(nn.Module):
    """Algorithm 16, lines 2-7 (one block of the template pair stack), on t [*, N_res, N_res, C_t]:

        t += DropoutRowwise_0.25(TriangleAttentionStartingNode(t))
        t += DropoutColumnwise_0.25(TriangleAttentionEndingNode(t))
        t += DropoutRowwise_0.25(TriangleMultiplicationOutgoing(t))
        t += DropoutRowwise_0.25(TriangleMultiplicationIncoming(t))
        t += PairTransition(t)                                          n = 2

    Published sizes (AlphaFold's config, OpenFold's model_1): triangle attention 4 heads of 16,
    triangle multiplication 64 channels, transition factor 2. The same sub-modules as the
    Evoformer's pair stack, so chunking and the DAP wrapper apply unchanged."""

    def __init__(
        self,
        c_t: int,
        c_hidden_att: int = 16,
        no_heads: int = 4,
        c_hidden_mul: int = 64,
        transition_n: int = 2,
        dropout: float = 0.25,
    ):
        super().__init__()
        self.tri_att_start = TriangleAttention(c_t, c_hidden_att, no_heads, starting=True)
        self.tri_att_end = TriangleAttention(c_t, c_hidden_att, no_heads, starting=False)
        self.tri_mul_out = TriangleMultiplication(c_t, c_hidden_mul, outgoing=True)
        self.tri_mul_in = TriangleMultiplication(c_t, c_hidden_mul, outgoing=False)
        self.pair_transition = Transition(c_t, transition_n)
        self.dropout_row = SharedDropout(dropout, shared_dim=-3)
        self.dropout_col = SharedDropout(dropout, shared_dim=-2)

    def forward(self, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """t [*, N_res, N_res, C_t], mask [*, N_res, N_res] -> [*, N_res, N_res, C_t] (`*` includes T)."""
        t = residual(t, self.dropout_row(self.tri_att_start(t, mask)))
        t = residual(t, self.dropout_col(self.tri_att_end(t, mask)))
        t = residual(t, self.dropout_row(self.tri_mul_out(t, mask)))
        t = residual(t, self.dropout_row(self.tri_mul_in(t, mask)))
        return residual(t, self.pair_transition(t, mask))


class TemplatePairStack(nn.Module):
    """Algorithm 16: t = Linear(template_pair_feat) (line 1, `embedder`, relu init as in AlphaFold's
    code), N_block (2) TemplatePairBlocks (`blocks`), then LayerNorm (line 9)."""

    def __init__(self, n_blocks: int, c_t: int, c_in: int = TEMPLATE_PAIR_FEAT_DIM, **block_kwargs):
        super().__init__()
        self.embedder = Linear(c_in, c_t, init="relu")
        self.blocks = nn.ModuleList(TemplatePairBlock(c_t, **block_kwargs) for _ in range(n_blocks))
        self.layer_norm = LayerNorm(c_t)

    def forward(self, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feat [*, T, N_res, N_res, 88], mask [*, T, N_res, N_res] -> t [*, T, N_res, N_res, C_t]."""
        t = self.embedder(feat)
        for block in self.blocks:
            t = block(t, mask)
        return self.layer_norm(t)


class TemplatePointwiseAttention(nn.Module):
    """Algorithm 17: each pair z_ij attends over the templates' t_tij (no gating):

        q = LinearNoBias(z_ij), k_t, v_t = LinearNoBias(t_tij)          4 heads of 16
        a_t = softmax_t(q . k_t / sqrt(c) + mask bias_t)
        z_ij update = Linear(concat_h sum_t a_t v_t)

    Padding templates (template_mask 0) are masked out. Chunked (chunk_size) over the rows i.

    t is copied once into the [*, I, J, T, C_t] layout (under autocast, in the autocast dtype) before
    the key and value projections read it: on the strided view (templates moved behind the residues)
    each projection would save its own contiguous copy (or cast), and chunking (which flattens the
    batch dims, copying where B > 1) would save a different number of copies than the unchunked path."""

    def __init__(self, c_t: int, c_z: int, c_hidden: int = 16, no_heads: int = 4):
        super().__init__()
        self.mha = Attention(c_z, c_t, c_t, c_hidden, no_heads, gating=False)
        self.chunk_size: int | None = None

    def _attend(self, z: torch.Tensor, t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """z [*, J, 1, C_z], t [*, J, T, C_t], bias [*, 1, 1, 1, T] (`*` includes i) -> [*, J, C_z]."""
        return self.mha(z, t, [bias]).squeeze(-2)

    def forward(self, t: torch.Tensor, z: torch.Tensor, template_mask: torch.Tensor) -> torch.Tensor:
        """t [*, T, N_res, N_res, C_t], z [*, N_res, N_res, C_z], template_mask [*, T]
        -> update [*, N_res, N_res, C_z]."""
        t = t.movedim(-4, -2)  # [*, I, J, T, C_t], strided
        if torch.is_autocast_enabled(t.device.type) and t.dtype == torch.float32:
            # cast once (linear_k and linear_v would each cast and keep their own), into a contiguous layout
            t = t.to(torch.get_autocast_dtype(t.device.type), memory_format=torch.contiguous_format)
        inputs = {
            "z": z.unsqueeze(-2),  # [*, I, J, 1, C_z]
            "t": t.contiguous(),  # one copy, read by both linear_k and linear_v
            "bias": mask_bias(template_mask)[..., None, None, None, None, :],  # [*, 1, 1, 1, 1, T]
        }
        if self.chunk_size is None:
            return self._attend(**inputs)
        return chunk_layer(self._attend, inputs, self.chunk_size, no_batch_dims=z.dim() - 2)


class TemplateAngleEmbedder(nn.Module):
    """Supplement 1.7.1: a_ti = Linear(relu(Linear(template_angle_feat_ti))), 57 -> C_m -> C_m
    (relu init on both, as AlphaFold's template_single_embedding and template_projection). The rows
    a_t are concatenated to the MSA representation."""

    def __init__(self, c_in: int = TEMPLATE_ANGLE_FEAT_DIM, c_m: int = 256):
        super().__init__()
        self.linear_1 = Linear(c_in, c_m, init="relu")
        self.linear_2 = Linear(c_m, c_m, init="relu")

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """feat [*, T, N_res, 57] -> [*, T, N_res, C_m]."""
        return self.linear_2(torch.relu(self.linear_1(feat)))


class TemplateEmbedder(nn.Module):
    """Supplement 1.7.1: the template pair stack and point-wise attention (pair update) and the
    torsion-angle embedding (MSA rows). `pair_stack.blocks` are the units of activation
    checkpointing and DAP."""

    def __init__(
        self,
        c_m: int,
        c_z: int,
        c_t: int = 64,
        n_blocks: int = 2,
        c_hidden_att: int = 16,
        no_heads: int = 4,
        c_hidden_mul: int = 64,
        transition_n: int = 2,
        c_hidden_pointwise: int = 16,
        no_heads_pointwise: int = 4,
        dropout: float = 0.25,
        use_unit_vector: bool = False,
    ):
        super().__init__()
        self.use_unit_vector = use_unit_vector
        self.pair_stack = TemplatePairStack(
            n_blocks, c_t, c_hidden_att=c_hidden_att, no_heads=no_heads, c_hidden_mul=c_hidden_mul,
            transition_n=transition_n, dropout=dropout,
        )
        self.pointwise_attention = TemplatePointwiseAttention(c_t, c_z, c_hidden_pointwise, no_heads_pointwise)
        self.angle_embedder = TemplateAngleEmbedder(TEMPLATE_ANGLE_FEAT_DIM, c_m)

    def pair_update(self, batch: dict[str, torch.Tensor], z: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """z [*, N_res, N_res, C_z], pair_mask [*, N_res, N_res] (the target's residues) -> the
        template update of z, zero for a sample without templates (AlphaFold multiplies by
        sum(template_mask) > 0). The pair stack runs under the target's pair mask, the same for
        every template (AlphaFold's TemplateEmbedding passes its mask_2d; unaligned template
        residues are zeroed in the features instead)."""
        feat = template_pair_feat(batch, self.use_unit_vector).to(z.dtype)
        t = self.pair_stack(feat, pair_mask.to(z.dtype).unsqueeze(-3).expand(*feat.shape[:-1]))
        template_mask = batch["template_mask"].to(z.dtype)
        update = self.pointwise_attention(t, z, template_mask)
        return update * (template_mask.sum(-1) > 0).to(update.dtype)[..., None, None, None]

    def msa_rows(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (rows [*, T, N_res, C_m] to concatenate to the MSA, their mask [*, T, N_res]: the psi
        torsion mask, as in AlphaFold)."""
        feat = template_angle_feat(batch)
        return self.angle_embedder(feat), batch["template_torsion_angles_mask"][..., 2]
