"""All-atom geometry (Algorithms 24-26) against hand-derived values and independent computations:
the standard dihedral formula, the literature positions, real structures and hand-built lDDT.

fp64 where exact round trips are checked (the frames' Gram-Schmidt with eps 1e-8 in the root
leaves errors of ~1e-8); real structures in fp32 with Angstrom-level bounds stated per check."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from memtrain.data.protein_features import read_chains, sequence_to_aatype
from memtrain.data.sequences import default_protein_root
from memtrain.models.alphafold import residue_constants as rc
from memtrain.models.alphafold.all_atom import (
    alternative_atom14,
    atom14_to_atom37_mask,
    atom14_to_frames,
    atom14_torsion_angles,
    frames_to_atom14_positions,
    lddt,
    pseudo_beta,
    rename_symmetric_ground_truth,
    restype_table,
    torsion_angles_to_frames,
)
from memtrain.models.alphafold.rigid import Rigid, quat_to_rot

ALL_TYPES = torch.arange(20)


def dihedral(p0, p1, p2, p3):
    """The IUPAC dihedral p0-p1-p2-p3 (radians), by the textbook projection formula."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / b1.norm(dim=-1, keepdim=True)
    v = b0 - (b0 * b1).sum(-1, keepdim=True) * b1
    w = b2 - (b2 * b1).sum(-1, keepdim=True) * b1
    return torch.atan2((torch.cross(b1, v, dim=-1) * w).sum(-1), (v * w).sum(-1))


def random_rigid64(n: int, gen: torch.Generator, scale: float = 5.0) -> Rigid:
    """n random frames computed in fp64 (rotations orthonormal to fp64 rounding)."""
    quat = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return Rigid(quat_to_rot(quat / quat.norm(dim=-1, keepdim=True)), scale * torch.randn(n, 3, generator=gen, dtype=torch.float64))


def place(aatype, angles, backbone=None):
    """Atoms of residues aatype [N] for torsions `angles` [N, 7] (radians), fp64."""
    sin_cos = torch.stack((angles.sin(), angles.cos()), -1)
    if backbone is None:
        backbone = Rigid(torch.eye(3, dtype=torch.float64).expand(len(aatype), 3, 3), torch.zeros(len(aatype), 3, dtype=torch.float64))
    frames = torsion_angles_to_frames(backbone, sin_cos, aatype)
    return frames, frames_to_atom14_positions(frames, aatype)


def test_zero_torsions_reproduce_the_literature_positions():
    """With every torsion 0 and the backbone frame at the origin, the backbone group's atoms are at
    their literature positions, O at its literature position in the psi group's default frame, and
    the chi1 group's atoms at theirs in the chi1 default frame (Supplement Table 3)."""
    _, atoms = place(ALL_TYPES, torch.zeros(20, 7, dtype=torch.float64))
    lit = torch.as_tensor(rc.ATOM14_LITERATURE, dtype=torch.float64)[:20]
    group = torch.as_tensor(rc.ATOM14_TO_GROUP)[:20]
    mask = torch.as_tensor(rc.ATOM14_MASK)[:20].bool()
    bb = (group == 0) & mask
    torch.testing.assert_close(atoms[bb], lit[bb], rtol=0, atol=1e-12)
    for r, name in enumerate(rc.RESNAMES[:20]):
        defaults = torch.as_tensor(rc.DEFAULT_FRAMES[r], dtype=torch.float64)
        for slot in range(14):
            if mask[r, slot] and group[r, slot] in (3, 4):
                m = defaults[group[r, slot]]
                expected = m[:3, :3] @ lit[r, slot] + m[:3, 3]
                torch.testing.assert_close(atoms[r, slot], expected, rtol=0, atol=1e-12, msg=name)


def test_placed_side_chains_have_the_requested_chi_angles_and_literature_bond_lengths():
    """Each chi angle of the placed atoms, measured by the textbook dihedral formula over its four
    CHI_ANGLES_ATOMS, equals the torsion given (any residue type, any angle); every bond to a group's
    atoms keeps its literature length (rotations about the bond axes do not stretch bonds)."""
    gen = torch.Generator().manual_seed(0)
    angles = (2 * torch.rand(20, 7, generator=gen, dtype=torch.float64) - 1) * math.pi
    _, atoms = place(ALL_TYPES, angles)
    _, zero_atoms = place(ALL_TYPES, torch.zeros(20, 7, dtype=torch.float64))
    checked = 0
    for r, name in enumerate(rc.RESNAMES[:20]):
        names = rc.ATOM14_NAMES[name]
        for k, four in enumerate(rc.CHI_ANGLES_ATOMS[name]):
            p = [atoms[r, names.index(a)] for a in four]
            diff = (dihedral(*p) - angles[r, 3 + k] + math.pi) % (2 * math.pi) - math.pi
            assert abs(diff) < 1e-9, (name, k)
            # the bond from the axis end to the torsion's fourth atom keeps its length
            i, j = names.index(four[2]), names.index(four[3])
            torch.testing.assert_close((atoms[r, i] - atoms[r, j]).norm(), (zero_atoms[r, i] - zero_atoms[r, j]).norm())
            checked += 1
    assert checked == int(rc.CHI_ANGLES_MASK.sum())  # every chi of every residue type


def test_torsion_angles_round_trip_through_the_frames():
    """Torsions -> frames -> atoms -> torsions gives back psi and chi1..4 (omega and phi need a
    chain); the ground-truth frames computed from those atoms are the frames that placed them."""
    gen = torch.Generator().manual_seed(1)
    angles = (2 * torch.rand(20, 7, generator=gen, dtype=torch.float64) - 1) * math.pi
    backbone = random_rigid64(20, gen)
    frames, atoms = place(ALL_TYPES, angles, backbone)
    mask = restype_table("ATOM14_MASK", ALL_TYPES, torch.float64)
    out = atom14_torsion_angles(ALL_TYPES, atoms, mask)
    got, tmask = out["torsion_angles_sin_cos"], out["torsion_angles_mask"]
    assert torch.equal(tmask[:, 2:], torch.cat((torch.ones(20, 1, dtype=torch.float64), torch.as_tensor(rc.CHI_ANGLES_MASK[:20], dtype=torch.float64)), -1))
    expected = torch.stack((angles.sin(), angles.cos()), -1)
    torch.testing.assert_close(got[:, 2:] * tmask[:, 2:, None], expected[:, 2:] * tmask[:, 2:, None], rtol=0, atol=1e-7)
    # pi-periodic chis: the alternative is the angle + pi
    alt = out["alt_torsion_angles_sin_cos"]
    periodic = torch.as_tensor(rc.CHI_PI_PERIODIC[:20], dtype=torch.float64)
    torch.testing.assert_close(alt[:, 3:], got[:, 3:] * (1 - 2 * periodic)[..., None], rtol=0, atol=0)
    gt = atom14_to_frames(ALL_TYPES, atoms, mask)
    exists = gt["exists"].bool()
    assert torch.equal(gt["exists"][:, [1, 2]], torch.zeros(20, 2, dtype=torch.float64))
    assert torch.equal(gt["exists"][:, 4:], torch.as_tensor(rc.CHI_ANGLES_MASK[:20], dtype=torch.float64))
    torch.testing.assert_close(gt["frames"].rot[exists], frames.rot[exists], rtol=0, atol=1e-7)
    torch.testing.assert_close(gt["frames"].trans[exists], frames.trans[exists], rtol=0, atol=1e-9)
    # the backbone group's frame is Algorithm 21's (N, CA, C) frame
    bb = Rigid.from_3_points(atoms[:, 0], atoms[:, 1], atoms[:, 2])
    torch.testing.assert_close(gt["frames"].rot[:, 0], bb.rot, rtol=0, atol=1e-9)
    # the alternative frames of the ambiguous groups are turned by pi about x
    amb = torch.as_tensor(rc.GROUP_IS_AMBIGUOUS[:20]).bool()
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(gt["alt_frames"].rot[amb], gt["frames"].rot[amb] @ flip, rtol=0, atol=0)
    torch.testing.assert_close(gt["alt_frames"].rot[~amb], gt["frames"].rot[~amb], rtol=0, atol=0)


def test_omega_and_phi_read_the_previous_residue_of_a_chain():
    """Three residues on random frames (not a physical chain: the check is the convention): omega and
    phi of residue i are the dihedrals CA(i-1)-C(i-1)-N(i)-CA(i) and C(i-1)-N(i)-CA(i)-C(i); the first
    residue has neither. Tolerance 1e-7: eps 1e-8 sits inside the roots of the frame and (sin, cos)
    normalisations, a relative error up to eps / (2 |v|^2) for these Angstrom-scale vectors."""
    gen = torch.Generator().manual_seed(2)
    aatype = torch.tensor([0, 7, 13])
    frames = random_rigid64(3, gen, scale=3.0)
    _, atoms = place(aatype, torch.zeros(3, 7, dtype=torch.float64), frames)
    mask = restype_table("ATOM14_MASK", aatype, torch.float64)
    out = atom14_torsion_angles(aatype[None], atoms[None], mask[None])
    sc, m = out["torsion_angles_sin_cos"][0], out["torsion_angles_mask"][0]
    assert m[0, :2].tolist() == [0.0, 0.0] and m[1:, :2].eq(1.0).all()
    for i in (1, 2):
        omega = dihedral(atoms[i - 1, 1], atoms[i - 1, 2], atoms[i, 0], atoms[i, 1])
        phi = dihedral(atoms[i - 1, 2], atoms[i, 0], atoms[i, 1], atoms[i, 2])
        torch.testing.assert_close(sc[i, 0], torch.stack((omega.sin(), omega.cos())), rtol=0, atol=1e-7)
        torch.testing.assert_close(sc[i, 1], torch.stack((phi.sin(), phi.cos())), rtol=0, atol=1e-7)
    # psi is read from O and turned by pi: psi = dihedral(N, CA, C, O) + pi
    psi = dihedral(atoms[:, 0], atoms[:, 1], atoms[:, 2], atoms[:, 3]) + math.pi
    torch.testing.assert_close(sc[:, 2], torch.stack((psi.sin(), psi.cos()), -1), rtol=0, atol=1e-7)


MMCIF_DIR = Path(default_protein_root()) / "mmcif"


@pytest.mark.skipif(not MMCIF_DIR.is_dir(), reason=f"real protein data not found at {MMCIF_DIR} (set MEMTRAIN_DATA_DIR)")
@pytest.mark.parametrize("pdb", ["4zey", "3u8v", "1psm"])
def test_real_structures_round_trip_through_their_torsion_angles(pdb):
    """The torsion angles read from a real chain's atoms, put back on its own backbone frames with the
    idealised geometry, rebuild its side chains to within the geometry's deviation from the
    literature values: 0.25 A RMSD over all heavy atoms of fully resolved residues (observed 0.14,
    0.21, 0.24 A; a wrong sign or axis convention would put atoms Angstroms away)."""
    chain = read_chains(MMCIF_DIR / f"{pdb}.cif")[0]
    aatype = torch.from_numpy(sequence_to_aatype(chain.sequence))
    pos, mask = torch.from_numpy(chain.atom14).double(), torch.from_numpy(chain.atom14_mask).double()
    sin_cos = torch.from_numpy(chain.torsion_angles["torsion_angles_sin_cos"]).double()
    gt = atom14_to_frames(aatype, pos, mask)
    rebuilt = frames_to_atom14_positions(torsion_angles_to_frames(gt["frames"][..., 0], sin_cos, aatype), aatype)
    expected = restype_table("ATOM14_MASK", aatype, torch.float64)
    complete = (mask == expected).all(-1) & (gt["exists"][:, 0] > 0)
    assert complete.sum() > 30
    err = ((rebuilt - pos).square().sum(-1) * expected)[complete]
    rmsd = (err.sum() / expected[complete].sum()).sqrt()
    assert rmsd < 0.25


def test_renaming_picks_the_naming_closer_to_the_prediction():
    """Algorithm 26 on a PHE between two ALA: the prediction with the ring's CD1/CD2, CE1/CE2 named
    the other way round gets the swapped ground truth; the true naming keeps it."""
    gen = torch.Generator().manual_seed(3)
    aatype = torch.tensor([0, 13, 0])
    frames = random_rigid64(3, gen, scale=4.0)
    angles = (2 * torch.rand(3, 7, generator=gen, dtype=torch.float64) - 1) * math.pi
    _, atoms = place(aatype, angles, frames)
    mask = restype_table("ATOM14_MASK", aatype, torch.float64)
    same = rename_symmetric_ground_truth(aatype, atoms, atoms, mask)
    assert same["alt_naming_is_better"].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(same["positions"], atoms, rtol=0, atol=0)
    alt, alt_mask, ambiguous = alternative_atom14(aatype, atoms, mask)
    assert ambiguous[1].tolist() == [0.0] * 6 + [1.0] * 4 + [0.0] * 4
    swapped = rename_symmetric_ground_truth(aatype, alt, atoms, mask)
    assert swapped["alt_naming_is_better"].tolist() == [0.0, 1.0, 0.0]
    torch.testing.assert_close(swapped["positions"], alt, rtol=0, atol=0)
    torch.testing.assert_close(swapped["mask"], alt_mask, rtol=0, atol=0)


def test_lddt_on_hand_built_coordinates():
    """Four CA on a line 3 A apart (all pairs within 15 A). Moving the last one by 1.5 A along the
    line changes its three distances by 1.5 A: each of those pairs passes the 2 and 4 A thresholds
    only (score 0.5); the other pairs stay exact (score 1)."""
    true = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [6.0, 0, 0], [9.0, 0, 0]])
    pred = true.clone()
    pred[3, 0] += 1.5
    mask = torch.ones(4)
    per_res = lddt(pred, true, mask)
    # residue 0: pairs (0,1) 1, (0,2) 1, (0,3) 0.5 -> 2.5/3; residue 3: three pairs at 0.5
    torch.testing.assert_close(per_res, torch.tensor([2.5 / 3, 2.5 / 3, 2.5 / 3, 0.5]), rtol=1e-6, atol=0)
    torch.testing.assert_close(lddt(pred, true, mask, per_residue=False), torch.tensor((3 * 2.5 + 1.5) / 12), rtol=1e-6, atol=0)
    # a pair beyond the cutoff in the true structure is not scored, however wrong the prediction:
    # residue 3 moved 40 A away in the truth has nothing to score (eps / eps = 1, as OpenFold's lddt)
    far = true.clone()
    far[3, 0] = 40.0
    assert lddt(pred, far, mask).tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    # a masked residue is not scored either
    masked = lddt(pred, true, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(masked[:3], torch.ones(3), rtol=1e-6, atol=0)


def test_pseudo_beta_and_atom37_mask():
    gly, ala, unk = rc.GLY, 0, rc.UNK
    aatype = torch.tensor([gly, ala, unk])
    pos = torch.arange(3 * 14 * 3, dtype=torch.float32).reshape(3, 14, 3)
    mask = torch.zeros(3, 14)
    mask[:, :4] = 1.0
    mask[1, 4] = 1.0
    x, m = pseudo_beta(aatype, pos, mask)
    torch.testing.assert_close(x, torch.stack((pos[0, 1], pos[1, 4], pos[2, 1])), rtol=0, atol=0)
    assert m.tolist() == [1.0, 1.0, 1.0]
    atom37 = atom14_to_atom37_mask(aatype, mask)
    # glycine N, CA, C, O -> atom37 0, 1, 2, 4; alanine also CB -> 3; unknown residues have none
    assert atom37[0].nonzero().flatten().tolist() == [0, 1, 2, 4]
    assert atom37[1].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert atom37[2].sum() == 0
