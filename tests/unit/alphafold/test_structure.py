"""Rigid frames, IPA and the structure module.

Tolerances: fp32; rotations of O(10) A coordinates and a few compositions accumulate a few ulps
(1e-6 relative) per product, so 1e-5 relative / 1e-4 absolute for coordinates."""

from __future__ import annotations

import torch

from memtrain.models.alphafold import residue_constants as rc
from memtrain.models.alphafold.structure import (
    BACKBONE_LOCAL,
    BackboneUpdate,
    InvariantPointAttention,
    Rigid,
    StructureModule,
    compose_quat_update,
    quat_multiply,
    quat_to_rot,
)
from tests.unit.alphafold.helpers import random_rigid, randomize_

TOL = {"rtol": 1e-5, "atol": 1e-4}


def unit_quats(*shape, seed=0):
    q = torch.randn(*shape, 4, generator=torch.Generator().manual_seed(seed))
    return q / q.norm(dim=-1, keepdim=True)


def test_quaternions_give_rotations_and_compose_like_matrices():
    q1, q2 = unit_quats(6, seed=0), unit_quats(6, seed=1)
    r1 = quat_to_rot(q1)
    torch.testing.assert_close(r1 @ r1.transpose(-1, -2), torch.eye(3).expand(6, 3, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.linalg.det(r1), torch.ones(6), rtol=0, atol=1e-6)
    torch.testing.assert_close(quat_to_rot(quat_multiply(q1, q2)), r1 @ quat_to_rot(q2), rtol=0, atol=1e-6)
    assert torch.equal(quat_to_rot(torch.tensor([1.0, 0, 0, 0])), torch.eye(3))


def test_rigid_compose_apply_invert_round_trips():
    gen = torch.Generator().manual_seed(0)
    t1, t2 = random_rigid((4, 5), gen), random_rigid((4, 5), gen)
    x = 10.0 * torch.randn(4, 5, 3, generator=gen)
    assert torch.equal(Rigid.identity((4, 5)).apply(x), x)
    torch.testing.assert_close(t1.compose(t2).apply(x), t1.apply(t2.apply(x)), **TOL)
    torch.testing.assert_close(t1.invert_apply(t1.apply(x)), x, **TOL)
    torch.testing.assert_close(t1.invert().apply(x), t1.invert_apply(x), **TOL)
    ident = t1.compose(t1.invert())
    torch.testing.assert_close(ident.rot, torch.eye(3).expand(4, 5, 3, 3), rtol=0, atol=1e-5)
    torch.testing.assert_close(ident.trans, torch.zeros(4, 5, 3), rtol=0, atol=1e-4)
    # broadcasting: one frame per residue applied to several points per residue
    pts = torch.randn(4, 5, 7, 3, generator=gen)
    torch.testing.assert_close(t1.unsqueeze(-1).apply(pts)[:, :, 2], t1.apply(pts[:, :, 2]), **TOL)


def test_frames_from_three_points_recover_the_residue_frame():
    """Algorithm 21 on the idealised backbone placed by a random frame gives back that frame, and
    the atoms' local coordinates are the literature values."""
    frames = random_rigid((3, 6), torch.Generator().manual_seed(2))
    local = torch.tensor(BACKBONE_LOCAL)
    atoms = frames.unsqueeze(-1).apply(local)  # [3, 6, 3 atoms, 3]
    rebuilt = Rigid.from_3_points(atoms[..., 0, :], atoms[..., 1, :], atoms[..., 2, :])
    torch.testing.assert_close(rebuilt.rot, frames.rot, rtol=0, atol=1e-5)
    torch.testing.assert_close(rebuilt.trans, frames.trans, **TOL)
    torch.testing.assert_close(rebuilt.unsqueeze(-1).invert_apply(atoms), local.expand_as(atoms), **TOL)


def test_backbone_update_starts_at_identity_and_composes_like_rigids():
    update = BackboneUpdate(8)
    quat, trans = update(torch.randn(5, 8))
    assert torch.equal(quat, torch.tensor([1.0, 0, 0, 0]).expand(5, 4)) and torch.equal(trans, torch.zeros(5, 3))
    randomize_(update)
    s = torch.randn(5, 8)
    q_u, t_u = update(s)
    torch.testing.assert_close(q_u.norm(dim=-1), torch.ones(5), rtol=0, atol=1e-6)
    bcd = update.linear(s)[:, :3]  # (1, b, c, d) / norm (Algorithm 23 lines 1-2)
    torch.testing.assert_close(q_u[:, 1:] / q_u[:, :1], bcd, rtol=1e-5, atol=1e-6)
    q0, t0 = unit_quats(5, seed=3), torch.randn(5, 3)
    new_q, new_t = compose_quat_update(q0, t0, q_u, t_u)
    expected = Rigid(quat_to_rot(q0), t0).compose(Rigid(quat_to_rot(q_u), t_u))
    torch.testing.assert_close(quat_to_rot(new_q), expected.rot, rtol=0, atol=1e-5)
    torch.testing.assert_close(new_t, expected.trans, **TOL)


def test_ipa_is_invariant_to_a_global_rigid_motion():
    """Supplement 1.8.2: moving every frame by the same rotation and translation leaves the IPA
    output unchanged (it only sees distances between points and points in local frames)."""
    torch.manual_seed(0)
    ipa = randomize_(InvariantPointAttention(c_s=12, c_z=6, c_hidden=4, no_heads=3, no_qk_points=2, no_v_points=3))
    gen = torch.Generator().manual_seed(1)
    s, z = torch.randn(2, 9, 12, generator=gen), torch.randn(2, 9, 9, 6, generator=gen)
    mask = torch.ones(2, 9)
    mask[1, -3:] = 0
    frames = random_rigid((2, 9), gen, scale=1.0)  # nm, as inside the structure module
    out = ipa(s, z, frames, mask)
    assert out.shape == (2, 9, 12) and torch.isfinite(out).all()
    motion = random_rigid((), gen, scale=3.0)
    moved = Rigid(motion.rot.expand(2, 9, 3, 3), motion.trans.expand(2, 9, 3)).compose(frames)
    # fp32: coordinates up to ~5 nm rotated, squared, summed; 1e-4 is a few ulps of the logits
    torch.testing.assert_close(ipa(s, z, moved, mask), out, rtol=1e-4, atol=1e-4)
    # ... while moving a single residue's frame does change the output (the check is not vacuous)
    one = Rigid(frames.rot.clone(), frames.trans.clone())
    one.trans[:, 0] += 2.0
    assert (ipa(s, z, one, mask) - out).abs().max() > 1e-2


def test_ipa_point_attention_matches_a_direct_distance():
    """The |q|^2 + |k|^2 - 2 q.k form of the point term equals sum_p |T_i q_ip - T_j k_jp|^2."""
    torch.manual_seed(0)
    ipa = randomize_(InvariantPointAttention(c_s=8, c_z=4, c_hidden=4, no_heads=2, no_qk_points=3, no_v_points=2))
    gen = torch.Generator().manual_seed(2)
    s, z = torch.randn(1, 5, 8, generator=gen), torch.randn(1, 5, 5, 4, generator=gen)
    frames = random_rigid((1, 5), gen, scale=1.0)
    captured = {}
    ipa.register_forward_hook(lambda mod, args, out: captured.setdefault("out", out))
    out = ipa(s, z, frames, torch.ones(1, 5))
    # direct computation of the attention weights of Algorithm 22, lines 7-8
    h, c, p = 2, 4, 3
    local = frames.unsqueeze(-1).unsqueeze(-1)
    q = ipa.linear_q(s).unflatten(-1, (h, c))
    k = ipa.linear_k(s).unflatten(-1, (h, c))
    qp = local.apply(ipa.linear_q_points(s).unflatten(-1, (h, p, 3)))
    kp = local.apply(ipa.linear_k_points(s).unflatten(-1, (h, p, 3)))
    dist = (qp[:, :, None] - kp[:, None, :]).square().sum((-1, -2))  # [1, I, J, H]
    gamma = torch.nn.functional.softplus(ipa.head_weights)
    w_c = (2.0 / (9.0 * p)) ** 0.5
    logits = (3.0 ** -0.5) * (
        torch.einsum("bihc,bjhc->bijh", q, k) / c ** 0.5 + ipa.linear_b(z) - gamma * w_c / 2 * dist
    )
    a = torch.softmax(logits, dim=2)  # over j
    v = ipa.linear_v(s).unflatten(-1, (h, c))
    vp = local.apply(ipa.linear_v_points(s).unflatten(-1, (h, 2, 3)))
    o = torch.einsum("bijh,bjhc->bihc", a, v)
    o_pair = torch.einsum("bijh,bijc->bihc", a, z)
    o_pts = frames.unsqueeze(-1).unsqueeze(-1).invert_apply(torch.einsum("bijh,bjhpx->bihpx", a, vp))
    feats = torch.cat([o_pair.flatten(-2), o.flatten(-2), o_pts.flatten(-3),
                       torch.sqrt(o_pts.square().sum(-1) + 1e-8).flatten(-2)], dim=-1)
    torch.testing.assert_close(out, ipa.linear_out(feats), rtol=1e-4, atol=1e-5)


def test_structure_module_outputs_and_backbone_geometry():
    """Every residue's N, CA, C sit at its own type's idealised geometry (residue_constants), not
    alanine's for all: glycine's N-CA is 1.4543 A, alanine's 1.4606 A (its N 0.05 A away)."""
    torch.manual_seed(0)
    sm = randomize_(StructureModule(c_s=12, c_z=6, c_hidden_ipa=4, no_heads_ipa=2, no_qk_points=2,
                                    no_v_points=3, no_blocks=3, c_resnet=8), scale=0.3).eval()
    s, z = torch.randn(2, 8, 12), torch.randn(2, 8, 8, 6)
    aatype = torch.tensor([[7, 0, 7, 20, 13, 1, 18, 14], [0, 7, 2, 3, 4, 5, 6, 19]])  # GLY, ALA, ..., unknown
    out = sm(s, z, torch.ones(2, 8), aatype)
    assert out["frames_rot"].shape == (3, 2, 8, 3, 3) and out["frames_trans"].shape == (3, 2, 8, 3)
    assert out["backbone_positions"].shape == (2, 8, 3, 3) and out["single"].shape == (2, 8, 12)
    assert out["angles"].shape == out["unnormalized_angles"].shape == (3, 2, 8, 7, 2)
    assert out["all_frames_rot"].shape == (2, 8, 8, 3, 3) and out["atom14_positions"].shape == (2, 8, 14, 3)
    torch.testing.assert_close(out["angles"].norm(dim=-1), torch.ones(3, 2, 8, 7), rtol=0, atol=1e-6)
    rot = out["frames_rot"]
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3).expand_as(rot), rtol=0, atol=1e-5)
    pos = out["backbone_positions"]
    torch.testing.assert_close(pos[..., 1, :], out["frames_trans"][-1], rtol=0, atol=0)  # CA = frame origin
    n_ca = (pos[..., 0, :] - pos[..., 1, :]).norm(dim=-1)
    ca_c = (pos[..., 2, :] - pos[..., 1, :]).norm(dim=-1)
    lit = torch.as_tensor(rc.BACKBONE_LITERATURE, dtype=torch.float32)[aatype]  # [2, 8, 3, 3]
    torch.testing.assert_close(n_ca, lit[..., 0, :].norm(dim=-1), **TOL)
    torch.testing.assert_close(ca_c, lit[..., 2, :].norm(dim=-1), **TOL)
    torch.testing.assert_close(n_ca[0, 0], torch.tensor((0.572 ** 2 + 1.337 ** 2) ** 0.5), **TOL)  # glycine
    torch.testing.assert_close(n_ca[0, 1], torch.tensor((0.525 ** 2 + 1.363 ** 2) ** 0.5), **TOL)  # alanine
    torch.testing.assert_close(n_ca[0, 3], n_ca[0, 1], **TOL)  # unknown: alanine's geometry
    # the atom14 backbone is the same atoms; unknown residues have no atom14 atoms
    known = aatype != 20
    torch.testing.assert_close(out["atom14_positions"][..., :3, :][known], pos[known], **TOL)
    assert out["atom14_positions"][0, 3].abs().max() == 0
    assert out["frames_trans"].abs().max() > 0.1  # the randomised updates moved the frames


def test_structure_module_stops_rotation_gradients_between_layers():
    """Algorithm 20 line 20: nothing in layer 2 depends on layer 1's rotation update, while layer
    1's translation update still reaches layer 2 (only the rotation gradient is stopped)."""
    torch.manual_seed(0)
    sm = randomize_(StructureModule(c_s=8, c_z=4, c_hidden_ipa=4, no_heads_ipa=2, no_qk_points=2,
                                    no_v_points=2, no_blocks=2, c_resnet=8), scale=0.3).eval()
    updates = []
    sm.backbone_update.register_forward_hook(lambda mod, args, out: updates.append(out))
    out = sm(torch.randn(1, 5, 8), torch.randn(1, 5, 5, 4), torch.ones(1, 5), torch.arange(5)[None])
    (quat_update_1, trans_update_1), _ = updates
    layer_2 = out["frames_rot"][1].sum() + out["frames_trans"][1].sum() + out["single"].sum()
    g_quat, g_trans = torch.autograd.grad(layer_2, [quat_update_1, trans_update_1], allow_unused=True, retain_graph=True)
    # (zeros rather than None: indexing the stacked per-layer outputs routes zeros to layer 1's entry)
    assert g_quat is None or torch.count_nonzero(g_quat) == 0
    assert g_trans is not None and g_trans.abs().sum() > 0
    (g_layer_1,) = torch.autograd.grad(out["frames_rot"][0].sum(), [quat_update_1])
    assert g_layer_1.abs().sum() > 0
