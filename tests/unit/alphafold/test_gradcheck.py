"""fp64 gradient checks (torch.autograd.gradcheck: analytic against central finite differences) of
the AlphaFold modules and losses on tiny shapes. They hold only if nothing inside drops fp64 inputs
to fp32: LayerNorm, the naive attention's softmax, the losses' cross-entropy and the pLDDT
expectation compute in max(fp32, input dtype).

gradcheck's defaults (eps 1e-6, atol 1e-5, rtol 1e-3) are for fp64; an fp32 step inside would
leave errors of ~1e-7 / 1e-6 = 1e-1 in the finite differences and fail them."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from memtrain.models.alphafold import residue_constants as rc
from memtrain.models.alphafold.all_atom import frames_to_atom14_positions, torsion_angles_to_frames
from memtrain.models.alphafold.evoformer import (
    MSAColumnAttention,
    MSARowAttentionWithPairBias,
    OuterProductMean,
    Transition,
    TriangleAttention,
    TriangleMultiplication,
)
from memtrain.models.alphafold.heads import PerResidueLDDTCaPredictor, plddt_from_logits
from memtrain.models.alphafold.loss import (
    distogram_loss,
    experimentally_resolved_loss,
    fape,
    masked_msa_loss,
    torsion_angle_loss,
)
from memtrain.models.alphafold.primitives import LayerNorm, naive_attention
from memtrain.models.alphafold.rigid import Rigid, quat_to_rot
from memtrain.models.alphafold.structure import AngleResnet, InvariantPointAttention
from tests.unit.alphafold.helpers import randomize_

F64 = torch.float64


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).requires_grad_()


def module64(module):
    torch.manual_seed(0)
    return randomize_(module, scale=0.5).double().eval()


def rigid64(shape, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, 4, generator=g, dtype=F64)
    return Rigid(quat_to_rot(q / q.norm(dim=-1, keepdim=True)), 3.0 * torch.randn(*shape, 3, generator=g, dtype=F64))


def test_layer_norm_and_softmax_keep_fp64():
    ln = module64(LayerNorm(6))
    x = rand(3, 6)
    assert ln(x).dtype == F64
    assert gradcheck(ln, (x,))
    q, k, v = rand(2, 3, 4, seed=1), rand(2, 5, 4, seed=2), rand(2, 5, 4, seed=3)
    bias = rand(2, 3, 5, seed=4)
    assert gradcheck(lambda q, k, v, b: naive_attention(q, k, v, [b]), (q, k, v, bias))


EVOFORMER_CASES = {
    "msa_row_attention": (lambda: MSARowAttentionWithPairBias(6, 3, c_hidden=3, no_heads=2), ((1, 3, 4, 6), (1, 4, 4, 3)), "mz"),
    "msa_column_attention": (lambda: MSAColumnAttention(6, c_hidden=3, no_heads=2), ((1, 3, 4, 6),), "m"),
    "transition": (lambda: Transition(6, n=2), ((1, 4, 4, 6),), "x"),
    "outer_product_mean": (lambda: OuterProductMean(6, 4, c_hidden=2), ((1, 3, 4, 6),), "m"),
    "triangle_multiplication_in": (lambda: TriangleMultiplication(4, c_hidden=3, outgoing=False), ((1, 4, 4, 4),), "z"),
    "triangle_attention_end": (lambda: TriangleAttention(4, c_hidden=3, no_heads=2, starting=False), ((1, 4, 4, 4),), "z"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EVOFORMER_CASES))
def test_evoformer_modules(name):
    build, shapes, kinds = EVOFORMER_CASES[name]
    module = module64(build())
    inputs = tuple(rand(*shape, seed=i, scale=0.5) for i, shape in enumerate(shapes))
    msa_mask = torch.ones(1, 3, 4, dtype=F64)
    msa_mask[0, 2, 3] = 0.0
    pair_mask = torch.ones(1, 4, 4, dtype=F64)
    pair_mask[0, 3, :2] = 0.0

    def fn(*xs):
        if kinds == "mz":
            return module(xs[0], xs[1], msa_mask)
        if kinds == "m":
            return module(xs[0], msa_mask)
        if kinds == "x":
            return module(xs[0], pair_mask)
        return module(xs[0], pair_mask)

    assert fn(*inputs).dtype == F64
    assert gradcheck(fn, inputs)


@pytest.mark.slow
def test_invariant_point_attention():
    ipa = module64(InvariantPointAttention(c_s=6, c_z=4, c_hidden=3, no_heads=2, no_qk_points=2, no_v_points=2))
    frames = rigid64((1, 4), 1)
    frames = Rigid(frames.rot, frames.trans / 10.0)  # nm, as inside the structure module
    s, z = rand(1, 4, 6, seed=2), rand(1, 4, 4, 4, seed=3)
    mask = torch.ones(1, 4, dtype=F64)
    assert gradcheck(lambda s, z, t: ipa(s, z, Rigid(frames.rot, t), mask), (s, z, frames.trans.clone().requires_grad_()))


@pytest.mark.slow
def test_angle_resnet_and_all_atom_positions():
    """Angles from the ResNet through Algorithm 24 to the atom positions: ARG (4 chi groups), PHE
    (an ambiguous ring), GLY (no side chain) and an unknown residue (no atoms)."""
    resnet = module64(AngleResnet(c_s=3, c_resnet=4))
    aatype = torch.tensor([1, 13, 7, 20])
    backbone = rigid64((4,), 4)
    s, s0 = rand(4, 3, seed=5), rand(4, 3, seed=6)

    def atoms(s, s0, trans):
        angles, _ = resnet(s, s0)
        frames = torsion_angles_to_frames(Rigid(backbone.rot, trans), angles, aatype)
        return frames_to_atom14_positions(frames, aatype)

    assert gradcheck(atoms, (s, s0, backbone.trans.clone().requires_grad_()))


@pytest.mark.slow
def test_losses():
    g = torch.Generator().manual_seed(7)
    pred_frames, true_frames = rigid64((1, 3), 8), rigid64((1, 3), 9)
    pos, true_pos = rand(1, 4, 3, seed=10, scale=3.0), 3.0 * torch.randn(1, 4, 3, generator=g, dtype=F64)
    fm, pm = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64), torch.ones(1, 4, dtype=F64)
    # unclamped: the clamp's kink has no derivative at 10 A, which finite differences could straddle
    assert gradcheck(
        lambda t, x: fape(Rigid(pred_frames.rot, t), true_frames, fm, x, true_pos, pm, clamp_distance=None),
        (pred_frames.trans.clone().requires_grad_(), pos),
    )
    logits = rand(1, 4, 4, 8, seed=11)
    positions = 5.0 * torch.randn(1, 4, 3, generator=g, dtype=F64)
    assert gradcheck(lambda lg: distogram_loss(lg, positions, torch.ones(1, 4, dtype=F64)), (logits,))
    msa_logits = rand(1, 2, 3, 23, seed=12)
    true_msa = torch.randint(0, 23, (1, 2, 3), generator=g)
    assert gradcheck(lambda lg: masked_msa_loss(lg, true_msa, torch.ones(1, 2, 3, dtype=F64)), (msa_logits,))
    aatype = torch.tensor([[3, 11, 7]])  # ASP, LYS, GLY
    batch = {
        "aatype": aatype, "seq_mask": torch.ones(1, 3, dtype=F64), "resolution": torch.tensor([2.0], dtype=F64),
        "atom14_gt_exists": torch.as_tensor(rc.ATOM14_MASK, dtype=F64)[aatype],
        "torsion_angles_sin_cos": torch.nn.functional.normalize(torch.randn(1, 3, 7, 2, generator=g, dtype=F64), dim=-1),
        "torsion_angles_mask": torch.ones(1, 3, 7, dtype=F64),
    }
    batch["alt_torsion_angles_sin_cos"] = -batch["torsion_angles_sin_cos"]
    raw = rand(2, 1, 3, 7, 2, seed=13)

    def torsion(raw):
        angles = raw / raw.norm(dim=-1, keepdim=True)
        out = torsion_angle_loss({"angles": angles, "unnormalized_angles": raw}, batch)
        return out["supervised_chi"] + out["angle_norm"]

    assert gradcheck(torsion, (raw,))
    assert gradcheck(lambda lg: experimentally_resolved_loss(lg, batch), (rand(1, 3, 37, seed=14),))
    head = module64(PerResidueLDDTCaPredictor(c_s=5, c_hidden=4, no_bins=10))
    assert gradcheck(lambda s: plddt_from_logits(head(s)), (rand(1, 3, 5, seed=15),))
