"""The structure module (Supplement 1.8, Algorithms 20-24): Invariant Point Attention, the
backbone update, the torsion-angle ResNet and the all-atom structure.

Shapes: `*` batch dims, N = N_res residues, H heads, P points per head. A frame T = (R, t) maps
local coordinates x to global ones T . x = R x + t (Supplement 1.1).
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from memtrain.protein.all_atom import frames_to_atom14_positions, restype_table, torsion_angles_to_frames
from memtrain.models.alphafold.primitives import LayerNorm, Linear, mask_bias
from memtrain.models.meta import local_tensor
from memtrain.models.reset import GeneratorFor
from memtrain.protein.rigid import Rigid, quat_multiply, quat_to_rot  # noqa: F401 (re-exported)

# Alanine's idealised backbone atoms N, CA, C in the residue frame (Angstrom; residue_constants),
# N-CA 1.460 A, CA-C 1.526 A, N-CA-C 111.1 degrees. The structure module places each residue with
# its own type's geometry (residue_constants.BACKBONE_LITERATURE); this constant stays for tests.
BACKBONE_LOCAL = ((-0.525, 1.363, 0.0), (0.0, 0.0, 0.0), (1.526, 0.0, 0.0))


# -- Invariant Point Attention --------------------------------------------------------------------


class InvariantPointAttention(nn.Module):
    """Algorithm 22. For each head h, residue i attends to residues j with logits

        w_L ( q_i.k_j / sqrt(c) + b_ij - gamma^h w_C / 2 sum_p |T_i . q_ip - T_j . k_jp|^2 )

    w_L = sqrt(1/3), w_C = sqrt(2 / (9 N_query_points)), gamma^h = softplus(head_weights^h); and
    returns Linear(concat(sum_j a_ij z_ij, sum_j a_ij v_j, T_i^-1 . sum_j a_ij T_j . v_jp, their norms)).
    The attention is invariant to a global rigid motion of all frames (Supplement 1.8.2).
    """

    def __init__(
        self,
        c_s: int,
        c_z: int,
        c_hidden: int = 16,
        no_heads: int = 12,
        no_qk_points: int = 4,
        no_v_points: int = 8,
        eps: float = 1e-8,
    ):
        super().__init__()
        self.c_hidden, self.no_heads, self.no_qk_points, self.no_v_points, self.eps = (
            c_hidden, no_heads, no_qk_points, no_v_points, eps,
        )
        hc = no_heads * c_hidden
        # DISCREPANCY: Algorithm 22 writes LinearNoBias for the projections; AlphaFold's and
        # OpenFold's code give them biases (and so does this module).
        self.linear_q = Linear(c_s, hc)
        self.linear_k = Linear(c_s, hc)
        self.linear_v = Linear(c_s, hc)
        self.linear_q_points = Linear(c_s, no_heads * no_qk_points * 3)
        self.linear_k_points = Linear(c_s, no_heads * no_qk_points * 3)
        self.linear_v_points = Linear(c_s, no_heads * no_v_points * 3)
        self.linear_b = Linear(c_z, no_heads)
        self.head_weights = nn.Parameter(torch.empty(no_heads))
        concat_dim = no_heads * (c_z + c_hidden + no_v_points * 4)
        self.linear_out = Linear(concat_dim, c_s, init="final")
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator_for: GeneratorFor | None = None) -> None:
        """head_weights = softplus^-1(1) = 0.5413: every head starts with point weight gamma^h = 1
        (the Linear layers reset themselves)."""
        local_tensor(self.head_weights).fill_(math.log(math.e - 1.0))

    def forward(self, s: torch.Tensor, z: torch.Tensor, frames: Rigid, mask: torch.Tensor) -> torch.Tensor:
        """s [*, N, C_s], z [*, N, N, C_z], frames (batch shape [*, N]), mask [*, N] -> [*, N, C_s]."""
        h, c = self.no_heads, self.c_hidden
        q = self.linear_q(s).unflatten(-1, (h, c))  # [*, N, H, c]
        k = self.linear_k(s).unflatten(-1, (h, c))
        v = self.linear_v(s).unflatten(-1, (h, c))
        local = frames.unsqueeze(-1).unsqueeze(-1)  # broadcasts over [*, N, H, P]
        q_pts = local.apply(self.linear_q_points(s).unflatten(-1, (h, self.no_qk_points, 3)))  # [*, N, H, P, 3] global
        k_pts = local.apply(self.linear_k_points(s).unflatten(-1, (h, self.no_qk_points, 3)))
        v_pts = local.apply(self.linear_v_points(s).unflatten(-1, (h, self.no_v_points, 3)))

        w_l = math.sqrt(1.0 / 3.0)
        w_c = math.sqrt(2.0 / (9.0 * self.no_qk_points))
        logits = torch.einsum("...ihc,...jhc->...hij", q, k) / math.sqrt(c)  # [*, H, N, N]
        logits = logits + self.linear_b(z).movedim(-1, -3)
        # sum_p |q_ip - k_jp|^2 = |q_i|^2 + |k_j|^2 - 2 q_i.k_j over the (p, xyz) axes: a matmul instead
        # of a [*, N, N, H, P, 3] difference tensor (the frames are in nm, so no cancellation trouble in fp32)
        q_flat, k_flat = q_pts.flatten(-2).transpose(-2, -3), k_pts.flatten(-2).transpose(-2, -3)  # [*, H, N, 3P]
        sq_dist = (
            q_flat.square().sum(-1)[..., :, None]
            + k_flat.square().sum(-1)[..., None, :]
            - 2.0 * q_flat @ k_flat.transpose(-1, -2)
        )  # [*, H, N, N]
        gamma = F.softplus(self.head_weights)[:, None, None]  # [H, 1, 1]
        logits = w_l * (logits - gamma * (w_c / 2.0) * sq_dist)
        logits = logits + mask_bias(mask[..., :, None] * mask[..., None, :]).unsqueeze(-3)
        a = torch.softmax(logits, dim=-1)  # [*, H, N, N]

        o = torch.einsum("...hij,...jhc->...ihc", a, v)  # [*, N, H, c]
        o_pair = torch.einsum("...hij,...ijc->...ihc", a, z)  # [*, N, H, C_z]
        o_pts = torch.einsum("...hij,...jhpx->...ihpx", a, v_pts)  # [*, N, H, P_v, 3] global
        o_pts = local.invert_apply(o_pts)  # back into frame i
        o_pts_norm = torch.sqrt(o_pts.square().sum(-1) + self.eps)  # [*, N, H, P_v]
        features = (o_pair.flatten(-2), o.flatten(-2), o_pts.flatten(-3), o_pts_norm.flatten(-2))
        return self.linear_out(torch.cat(features, dim=-1))


class BackboneUpdate(nn.Module):
    """Algorithm 23: (b, c, d, t) = Linear(s_i); the rotation is the unit quaternion (1, b, c, d) / norm.

    Zero-initialised ("final"), so the first update is the identity."""

    def __init__(self, c_s: int):
        super().__init__()
        self.linear = Linear(c_s, 6, init="final")

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s [*, C_s] -> (unit quaternion [*, 4], translation [*, 3])."""
        bcd, t = self.linear(s).split((3, 3), dim=-1)
        quat = torch.cat([torch.ones_like(bcd[..., :1]), bcd], dim=-1)
        return F.normalize(quat, dim=-1), t


def compose_quat_update(
    quat: torch.Tensor, trans: torch.Tensor, quat_update: torch.Tensor, trans_update: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """T . T_update with T = (quat [*, 4], trans [*, 3]) (Algorithm 20 line 12). The rotations are
    composed as quaternions and renormalised, so 8 updates do not drift off SO(3)."""
    new_quat = F.normalize(quat_multiply(quat, quat_update), dim=-1)
    new_trans = (quat_to_rot(quat) @ trans_update.unsqueeze(-1)).squeeze(-1) + trans
    return new_quat, new_trans


class StructureModuleTransition(nn.Module):
    """Algorithm 20, lines 9-10: s <- LayerNorm(Dropout(s + Linear(relu(Linear(relu(Linear(s)))))))."""

    def __init__(self, c_s: int, dropout: float):
        super().__init__()
        self.linear_1 = Linear(c_s, c_s, init="relu")
        self.linear_2 = Linear(c_s, c_s, init="relu")
        self.linear_3 = Linear(c_s, c_s, init="final")
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = LayerNorm(c_s)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        s = s + self.linear_3(torch.relu(self.linear_2(torch.relu(self.linear_1(s)))))
        return self.layer_norm(self.dropout(s))


class AngleResnet(nn.Module):
    """Algorithm 20, lines 11-14: the torsion angles of every residue from the current and the
    initial single representation,

        a = Linear(relu(s_initial)) + Linear(relu(s))
        a += Linear(relu(Linear(relu(a))))                     x no_blocks (2)
        alpha = Linear(relu(a))                                 7 unnormalised (sin, cos) pairs

    C = c_resnet (128) channels. Returns the pairs normalised to the unit circle (Algorithm 24
    reads them as rotations) and unnormalised (the angle-norm loss, 1.9.1).
    """

    # DISCREPANCY: Algorithm 20 line 11 writes Linear(s_initial) + Linear(s); AlphaFold's and
    # OpenFold's code apply a ReLU to both inputs first (the published weights were trained so).

    def __init__(self, c_s: int, c_resnet: int = 128, no_blocks: int = 2, no_angles: int = 7, eps: float = 1e-8):
        super().__init__()
        self.no_angles, self.eps = no_angles, eps
        self.linear_in = Linear(c_s, c_resnet)
        self.linear_initial = Linear(c_s, c_resnet)
        self.blocks = nn.ModuleList(
            nn.ModuleList((Linear(c_resnet, c_resnet, init="relu"), Linear(c_resnet, c_resnet, init="final")))
            for _ in range(no_blocks)
        )
        self.linear_out = Linear(c_resnet, 2 * no_angles)

    def forward(self, s: torch.Tensor, s_initial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s, s_initial [*, N_res, C_s] -> (angles, unnormalised angles), each [*, N_res, 7, 2] (sin, cos)."""
        a = self.linear_in(torch.relu(s)) + self.linear_initial(torch.relu(s_initial))
        for linear_1, linear_2 in self.blocks:
            a = a + linear_2(torch.relu(linear_1(torch.relu(a))))
        unnormalised = self.linear_out(torch.relu(a)).unflatten(-1, (self.no_angles, 2))
        norm = torch.sqrt(unnormalised.square().sum(-1, keepdim=True).clamp(min=self.eps))
        return unnormalised / norm, unnormalised


# DISCREPANCY: the nm scale of the frames inside the structure module is AlphaFold's and
# OpenFold's code (position_scale / trans_scale_factor = 10); Algorithm 20 does not spell it out.
class StructureModule(nn.Module):
    """Algorithm 20: `no_blocks` layers sharing one set of weights of

        s += IPA(s, z, T);  s = LayerNorm(Dropout(s));  s = Transition(s);  T = T . BackboneUpdate(s)
        alpha = AngleResnet(s, s_initial)                                       (lines 11-14)

    with the rotations' gradient stopped between layers (line 20); then, from the last layer's
    backbone frames and torsion angles, the frames of all 8 rigid groups and every heavy atom in
    the atom14 layout (Algorithm 24, memtrain.protein.all_atom), each residue placed with
    its own type's idealised geometry (residue_constants).

    Frames are kept internally in nm (translations divided by `trans_scale_factor` = 10) and
    returned in Angstrom.

    The module runs in its parameters' dtype with autocast off: the frame arithmetic over
    `no_blocks` compositions is precision-sensitive (OpenFold also keeps it in fp32).
    """

    def __init__(
        self,
        c_s: int,
        c_z: int,
        c_hidden_ipa: int = 16,
        no_heads_ipa: int = 12,
        no_qk_points: int = 4,
        no_v_points: int = 8,
        no_blocks: int = 8,
        dropout: float = 0.1,
        trans_scale_factor: float = 10.0,
        c_resnet: int = 128,
        no_resnet_blocks: int = 2,
    ):
        super().__init__()
        self.no_blocks, self.trans_scale_factor = no_blocks, trans_scale_factor
        self.layer_norm_s = LayerNorm(c_s)
        self.layer_norm_z = LayerNorm(c_z)
        self.linear_in = Linear(c_s, c_s)
        self.ipa = InvariantPointAttention(c_s, c_z, c_hidden_ipa, no_heads_ipa, no_qk_points, no_v_points)
        self.ipa_dropout = nn.Dropout(dropout)
        self.layer_norm_ipa = LayerNorm(c_s)
        self.transition = StructureModuleTransition(c_s, dropout)
        self.backbone_update = BackboneUpdate(c_s)
        self.angle_resnet = AngleResnet(c_s, c_resnet, no_resnet_blocks)

    def forward(
        self, s: torch.Tensor, z: torch.Tensor, seq_mask: torch.Tensor, aatype: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """s [*, N, C_s], z [*, N, N, C_z], seq_mask [*, N], aatype [*, N] (long, 0..20) -> dict of

            frames_rot [L, *, N, 3, 3], frames_trans [L, *, N, 3]   backbone frames per layer (Angstrom;
                                                                   the translations are the CA positions)
            angles, unnormalized_angles [L, *, N, 7, 2]            torsion angles per layer (sin, cos)
            all_frames_rot [*, N, 8, 3, 3], all_frames_trans [*, N, 8, 3]   the last layer's rigid groups
            atom14_positions [*, N, 14, 3]                          every heavy atom (0 where absent)
            backbone_positions [*, N, 3, 3]                         N, CA, C (unknown residues: alanine's geometry)
            single [*, N, C_s]                                      the final s
        """
        dtype = self.linear_in.weight.dtype
        with torch.autocast(device_type=s.device.type, enabled=False):
            s, z, seq_mask = s.to(dtype), z.to(dtype), seq_mask.to(dtype)
            s_initial = self.layer_norm_s(s)
            s = self.linear_in(s_initial)
            z = self.layer_norm_z(z)
            quat = s.new_zeros(*s.shape[:-1], 4)
            quat[..., 0] = 1.0  # identity frames (line 4)
            trans = s.new_zeros(*s.shape[:-1], 3)
            rots, transs, angles, unnormalized = [], [], [], []
            for layer in range(self.no_blocks):
                frames = Rigid(quat_to_rot(quat), trans)
                s = s + self.ipa(s, z, frames, seq_mask)
                s = self.layer_norm_ipa(self.ipa_dropout(s))
                s = self.transition(s)
                quat, trans = compose_quat_update(quat, trans, *self.backbone_update(s))
                alpha, alpha_raw = self.angle_resnet(s, s_initial)
                rots.append(quat_to_rot(quat))
                transs.append(trans * self.trans_scale_factor)
                angles.append(alpha)
                unnormalized.append(alpha_raw)
                if layer < self.no_blocks - 1:
                    quat = quat.detach()  # line 20: stop the rotation gradient between layers
            backbone = Rigid(rots[-1], transs[-1])
            all_frames = torsion_angles_to_frames(backbone, angles[-1], aatype)
            literature = restype_table("BACKBONE_LITERATURE", aatype, dtype)  # [*, N, 3 atoms, 3]
            return {
                "frames_rot": torch.stack(rots),
                "frames_trans": torch.stack(transs),
                "angles": torch.stack(angles),
                "unnormalized_angles": torch.stack(unnormalized),
                "all_frames_rot": all_frames.rot,
                "all_frames_trans": all_frames.trans,
                "atom14_positions": frames_to_atom14_positions(all_frames, aatype),
                "backbone_positions": backbone.unsqueeze(-1).apply(literature),
                "single": s,
            }
