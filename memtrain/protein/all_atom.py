"""All-atom geometry (Supplement 1.8.3-1.8.5, 1.9.1-1.9.2; Algorithms 24-26): rigid-group frames
from torsion angles, atom positions from frames, and the same quantities computed back from atom
coordinates (the ground truth's torsion angles and frames, ambiguous-atom renaming).

Atoms are held in the per-residue-type "atom14" layout (memtrain.protein.residue_constants):
positions [*, N_res, 14, 3] in Angstrom with a mask [*, N_res, 14]. Torsion angles are (sin, cos)
pairs [*, N_res, 7, 2] in the order omega (pre-omega: the peptide bond to the previous residue),
phi, psi, chi1..chi4. Rigid groups [*, N_res, 8]: 0 backbone, 1 pre-omega, 2 phi, 3 psi, 4..7 chi1..4.
aatype [*, N_res] (long, 0..20).
"""

from __future__ import annotations

import torch

from memtrain.protein import residue_constants as rc
from memtrain.protein.rigid import Rigid

ATOM_CA, ATOM_CB = 1, 4  # atom14 slots (every residue type: N, CA, C, O first, then CB)
AMBIGUOUS_SLOTS = slice(6, 10)  # every ambiguous atom (ASP, GLU, PHE, TYR) sits in atom14 slots 6-9


def _table(array, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.as_tensor(array, device=like.device, dtype=dtype)


def restype_table(name: str, aatype: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """residue_constants.<name> [21, ...] gathered by residue type -> [*, N_res, ...]."""
    table = getattr(rc, name)
    if dtype is None and table.dtype.kind == "f":
        dtype = torch.float32
    return _table(table, aatype, dtype)[aatype]


def make_rot_x(sin_cos: torch.Tensor) -> torch.Tensor:
    """Algorithm 25: the rotation about the x axis by the angle (sin, cos) [*, 2] -> [*, 3, 3]
    (the pair need not be normalised: the structure module's are, the identity is (0, 1))."""
    s, c = sin_cos.unbind(-1)
    zero, one = torch.zeros_like(s), torch.ones_like(s)
    return torch.stack(
        (torch.stack((one, zero, zero), -1), torch.stack((zero, c, -s), -1), torch.stack((zero, s, c), -1)), -2
    )


def torsion_angles_to_frames(backbone: Rigid, angles: torch.Tensor, aatype: torch.Tensor) -> Rigid:
    """Algorithm 24, lines 1-10: the global frames of the 8 rigid groups of every residue.

    backbone [*, N_res] (Angstrom), angles [*, N_res, 7, 2] (sin, cos), aatype [*, N_res]
    -> frames [*, N_res, 8]. Group k's frame is its default frame (DEFAULT_FRAMES, relative to the
    backbone, or to the previous chi group for chi2..chi4) rotated about its x axis by its torsion;
    the chi groups are chained chi1 -> chi2 -> chi3 -> chi4 and everything is composed with the
    backbone frame."""
    default = Rigid.from_4x4(restype_table("DEFAULT_FRAMES", aatype, angles.dtype))  # [*, N, 8]
    identity = torch.stack((torch.zeros_like(angles[..., 0, 0]), torch.ones_like(angles[..., 0, 0])), -1)
    sin_cos = torch.cat((identity[..., None, :], angles), dim=-2)  # [*, N, 8, 2]: the backbone group does not turn
    local = default.apply_rotation(make_rot_x(sin_cos))  # each group in its parent's frame
    chi1 = local[..., 4]
    chi2 = chi1.compose(local[..., 5])
    chi3 = chi2.compose(local[..., 6])
    chi4 = chi3.compose(local[..., 7])
    to_backbone = Rigid.cat([local[..., :5], chi2.unsqueeze(-1), chi3.unsqueeze(-1), chi4.unsqueeze(-1)], dim=-1)
    return backbone.unsqueeze(-1).compose(to_backbone)


def frames_to_atom14_positions(frames: Rigid, aatype: torch.Tensor) -> torch.Tensor:
    """Algorithm 24, line 11: every atom at its group's frame applied to its literature position.
    frames [*, N_res, 8], aatype [*, N_res] -> positions [*, N_res, 14, 3] (0 where the residue type
    has no such atom)."""
    group = restype_table("ATOM14_TO_GROUP", aatype)  # [*, N, 14]
    rot = torch.gather(frames.rot, -3, group[..., None, None].expand(*group.shape, 3, 3))  # [*, N, 14, 3, 3]
    trans = torch.gather(frames.trans, -2, group[..., None].expand(*group.shape, 3))  # [*, N, 14, 3]
    literature = restype_table("ATOM14_LITERATURE", aatype, frames.trans.dtype)
    positions = (rot @ literature.unsqueeze(-1)).squeeze(-1) + trans
    return positions * restype_table("ATOM14_MASK", aatype, positions.dtype)[..., None]


# -- ground truth from coordinates ------------------------------------------------------------------


def atom14_torsion_angles(
    aatype: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> dict[str, torch.Tensor]:
    """The 7 torsion angles of every residue from its atoms (AlphaFold's atom37_to_torsion_angles,
    on atom14). aatype [*, N_res], positions [*, N_res, 14, 3], mask [*, N_res, 14] ->

        torsion_angles_sin_cos      [*, N_res, 7, 2]
        alt_torsion_angles_sin_cos  [*, N_res, 7, 2]   pi-periodic chi angles shifted by pi
        torsion_angles_mask         [*, N_res, 7]      1 where all four atoms are resolved

    The residues along N_res must be consecutive in the chain (omega and phi read the previous
    residue). Each torsion is read as in Supplement 1.8.4: the frame with the second atom on its
    negative x axis, the third at its origin and the first in its xy plane; the fourth atom's (z, y)
    there is (sin, cos) of the torsion. psi is read from the O atom and turned by pi, so that it is
    the torsion the psi group's default frame expects.
    """
    prev = torch.cat((torch.zeros_like(positions[..., :1, :, :]), positions[..., :-1, :, :]), dim=-3)
    prev_mask = torch.cat((torch.zeros_like(mask[..., :1, :]), mask[..., :-1, :]), dim=-2)
    omega = torch.stack((prev[..., 1, :], prev[..., 2, :], positions[..., 0, :], positions[..., 1, :]), -2)
    phi = torch.stack((prev[..., 2, :], positions[..., 0, :], positions[..., 1, :], positions[..., 2, :]), -2)
    psi = positions[..., :4, :]  # N, CA, C, O
    omega_mask = prev_mask[..., 1] * prev_mask[..., 2] * mask[..., 0] * mask[..., 1]
    phi_mask = prev_mask[..., 2] * mask[..., 0] * mask[..., 1] * mask[..., 2]
    psi_mask = mask[..., :4].prod(-1)

    chi_index = restype_table("CHI_ATOM14_INDICES", aatype)  # [*, N, 4 chis, 4 atoms]
    flat = chi_index.flatten(-2)  # [*, N, 16]
    chi_atoms = torch.gather(positions, -2, flat[..., None].expand(*flat.shape, 3)).unflatten(-2, (4, 4))
    chi_mask = restype_table("CHI_ANGLES_MASK", aatype, mask.dtype) * torch.gather(mask, -1, flat).unflatten(-1, (4, 4)).prod(-1)

    atoms = torch.cat((omega[..., None, :, :], phi[..., None, :, :], psi[..., None, :, :], chi_atoms), dim=-3)
    frames = Rigid.from_3_points_neg_x(atoms[..., 1, :], atoms[..., 2, :], atoms[..., 0, :])
    fourth = frames.invert_apply(atoms[..., 3, :])  # [*, N, 7, 3]
    sin_cos = torch.stack((fourth[..., 2], fourth[..., 1]), dim=-1)
    sin_cos = sin_cos / torch.sqrt(sin_cos.square().sum(-1, keepdim=True) + eps)
    flip = sin_cos.new_tensor([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0])  # psi from O: turned by pi
    sin_cos = sin_cos * flip[:, None]
    periodic = restype_table("CHI_PI_PERIODIC", aatype, sin_cos.dtype)
    mirror = torch.cat((torch.ones_like(periodic[..., :3]), 1.0 - 2.0 * periodic), dim=-1)
    return {
        "torsion_angles_sin_cos": sin_cos,
        "alt_torsion_angles_sin_cos": sin_cos * mirror[..., None],
        "torsion_angles_mask": torch.cat((omega_mask[..., None], phi_mask[..., None], psi_mask[..., None], chi_mask), -1),
    }


def atom14_to_frames(aatype: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> dict:
    """The ground-truth frames of the 8 rigid groups from the atoms (AlphaFold's atom37_to_frames,
    Supplement 1.8.4). aatype [*, N_res], positions [*, N_res, 14, 3], mask [*, N_res, 14] ->

        frames      Rigid [*, N_res, 8]
        alt_frames  Rigid [*, N_res, 8]   the last chi group of ASP, GLU, PHE, TYR turned by pi about x
        exists      [*, N_res, 8]         the group is defined for the residue type and its atoms resolved

    Group 0's frame equals Rigid.from_3_points(N, CA, C) (Algorithm 21); groups 1 and 2 (no heavy
    atoms) never exist."""
    base = restype_table("GROUP_BASE_ATOM14", aatype)  # [*, N, 8, 3]
    flat = base.flatten(-2)
    atoms = torch.gather(positions, -2, flat[..., None].expand(*flat.shape, 3)).unflatten(-2, (8, 3))
    frames = Rigid.from_3_points_neg_x(atoms[..., 0, :], atoms[..., 1, :], atoms[..., 2, :])
    # the backbone group's atoms are (C, CA, N): mirror x and z so that x runs CA -> C (Algorithm 21)
    mirror = torch.ones(8, 3, dtype=positions.dtype, device=positions.device)
    mirror[0, 0] = mirror[0, 2] = -1.0
    frames = Rigid(frames.rot * mirror[:, None, :], frames.trans)
    exists = restype_table("GROUP_MASK", aatype, mask.dtype) * torch.gather(mask, -1, flat).unflatten(-1, (8, 3)).amin(-1)
    ambiguous = restype_table("GROUP_IS_AMBIGUOUS", aatype, positions.dtype)  # [*, N, 8]
    flip = torch.stack((torch.ones_like(ambiguous), 1.0 - 2.0 * ambiguous, 1.0 - 2.0 * ambiguous), -1)  # [*, N, 8, 3]
    alt_frames = Rigid(frames.rot * flip[..., None, :], frames.trans)
    return {"frames": frames, "alt_frames": alt_frames, "exists": exists}


def alternative_atom14(aatype: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor):
    """The ground truth with the symmetric atoms' names swapped (Supplement 1.8.5): positions
    [*, N_res, 14, 3], mask [*, N_res, 14] -> (alt positions, alt mask, is_ambiguous [*, N_res, 14])."""
    swap = restype_table("ATOM14_SWAP", aatype)  # [*, N, 14]
    alt = torch.gather(positions, -2, swap[..., None].expand(*swap.shape, 3))
    return alt, torch.gather(mask, -1, swap), restype_table("ATOM14_IS_AMBIGUOUS", aatype, positions.dtype)


@torch.no_grad()
def rename_symmetric_ground_truth(
    aatype: torch.Tensor, pred: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, eps: float = 1e-10
) -> dict[str, torch.Tensor]:
    """Algorithm 26 (renameSymmetricGroundTruthAtoms): per residue, the naming of its ambiguous
    atoms (true or swapped) whose distances to all unambiguous atoms of the chain agree better with
    the prediction's. pred, positions [*, N_res, 14, 3], mask [*, N_res, 14] ->

        positions         [*, N_res, 14, 3]   renamed ground truth
        mask              [*, N_res, 14]
        alt_naming_is_better [*, N_res]       1 where the swapped naming was chosen

    The choice is a discrete selection (no gradient), so it runs without autograd. Only the atom14
    slots 6-9 can be ambiguous: the distance tensors are [*, N_res, 4, N_res, 14] instead of AlphaFold's
    [*, N_res, N_res, 14, 14], with the same sums.
    """
    alt, alt_mask, ambiguous = alternative_atom14(aatype, positions, mask)

    def dists(x_i: torch.Tensor, x_all: torch.Tensor) -> torch.Tensor:  # [*, N, 4, 3], [*, N, 14, 3] -> [*, N, 4, N, 14]
        diff = x_i[..., :, :, None, None, :] - x_all[..., None, None, :, :, :]
        return torch.sqrt(eps + diff.square().sum(-1))

    amb = AMBIGUOUS_SLOTS
    pred_d = dists(pred[..., amb, :], pred)
    true_d = dists(positions[..., amb, :], positions)
    alt_d = dists(alt[..., amb, :], alt)
    # ambiguous, resolved atoms of residue i against unambiguous, resolved atoms of every residue j
    weight = (mask[..., amb] * ambiguous[..., amb])[..., :, :, None, None] * (mask * (1.0 - ambiguous))[..., None, None, :, :]
    err = (weight * torch.sqrt(eps + (pred_d - true_d).square())).sum((-1, -2, -3))
    alt_err = (weight * torch.sqrt(eps + (pred_d - alt_d).square())).sum((-1, -2, -3))
    better = (alt_err < err).to(positions.dtype)  # [*, N]
    return {
        "positions": torch.lerp(positions, alt, better[..., None, None]),
        "mask": torch.lerp(mask, alt_mask, better[..., None]),
        "alt_naming_is_better": better,
    }


def pseudo_beta(aatype: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CB, or CA for glycine and unknown residues (Supplement 1.9.8, Algorithm 32):
    positions [*, N_res, 14, 3], mask [*, N_res, 14] -> ([*, N_res, 3], [*, N_res])."""
    use_ca = (aatype == rc.GLY) | (aatype == rc.UNK)
    x = torch.where(use_ca[..., None], positions[..., ATOM_CA, :], positions[..., ATOM_CB, :])
    m = torch.where(use_ca, mask[..., ATOM_CA], mask[..., ATOM_CB])
    return x, m


def predicted_pseudo_beta(aatype: torch.Tensor, positions: torch.Tensor, ca: torch.Tensor) -> torch.Tensor:
    """pseudo_beta of a predicted structure, whose unknown residues have no atom14 atoms: CB from
    positions [*, N_res, 14, 3], CA from ca [*, N_res, 3] (the backbone frames' origins) -> [*, N_res, 3]."""
    use_ca = (aatype == rc.GLY) | (aatype == rc.UNK)
    return torch.where(use_ca[..., None], ca, positions[..., ATOM_CB, :])


def atom14_to_atom37_mask(aatype: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Atom14 mask [*, N_res, 14] -> atom37 mask [*, N_res, 37] (the experimentally-resolved target)."""
    index = restype_table("ATOM14_TO_ATOM37", aatype)
    exists = mask * restype_table("ATOM14_MASK", aatype, mask.dtype)
    return torch.zeros(*mask.shape[:-1], 37, dtype=mask.dtype, device=mask.device).scatter_add(-1, index, exists)


def lddt(
    pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor, cutoff: float = 15.0, eps: float = 1e-10,
    per_residue: bool = True,
) -> torch.Tensor:
    """lDDT (Mariani et al. 2013) over one atom per residue, as AlphaFold scores CA (Supplement
    1.9.6): for every pair i != j both resolved and closer than `cutoff` in the true structure, the
    fraction of the thresholds 0.5, 1, 2, 4 Angstrom that |d_pred - d_true| stays under, averaged over
    j (per residue) or over all pairs. pred, true [*, N_res, 3], mask [*, N_res] -> [*, N_res] or [*]."""
    d_true = torch.sqrt(eps + (true[..., :, None, :] - true[..., None, :, :]).square().sum(-1))
    d_pred = torch.sqrt(eps + (pred[..., :, None, :] - pred[..., None, :, :]).square().sum(-1))
    n = mask.shape[-1]
    scored = (d_true < cutoff).to(mask.dtype) * mask[..., :, None] * mask[..., None, :]
    scored = scored * (1.0 - torch.eye(n, dtype=mask.dtype, device=mask.device))
    l1 = (d_true - d_pred).abs()
    score = 0.25 * sum((l1 < t).to(mask.dtype) for t in (0.5, 1.0, 2.0, 4.0))
    dims = (-1,) if per_residue else (-2, -1)
    return (eps + (scored * score).sum(dims)) / (eps + scored.sum(dims))
