"""AlphaFold 2 training losses (Supplement 1.9), each returned per sample ([B]).

The total (Supplement 1.9, eq. 7; the weights as OpenFold trains, LOSS_WEIGHTS):

    L = 0.5 L_FAPE(backbone, mean over layers) + 0.5 L_FAPE(all atoms, last layer)
      + 0.5 L_torsion (mean over layers) + 0.01 L_anglenorm
      + 0.3 L_distogram + 2.0 L_masked_msa + 0.01 L_pLDDT + 0.01 L_experimentally_resolved

(eq. 7's 0.5 L_FAPE + 0.5 L_aux with L_aux = mean over layers of backbone FAPE + torsion loss, and
the torsion loss's own 0.02 on the angle norm.)

Targets (memtrain.data.protein_features; B batch, N residues): aatype [B, N], backbone_coords
[B, N, 3, 3] and backbone_mask [B, N], atom14_gt_positions [B, N, 14, 3] and atom14_gt_exists
[B, N, 14], torsion_angles_sin_cos and alt_torsion_angles_sin_cos [B, N, 7, 2],
torsion_angles_mask [B, N, 7], resolution [B], seq_mask [B, N], true_msa and bert_mask [B, S, N].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memtrain.protein.all_atom import (
    ATOM_CA,
    atom14_to_atom37_mask,
    atom14_to_frames,
    lddt,
    pseudo_beta,
    rename_symmetric_ground_truth,
    restype_table,
)
from memtrain.models.alphafold.primitives import compute_dtype
from memtrain.protein.rigid import Rigid

# DISCREPANCY: FAPE is always clamped at 10 A; the paper leaves 10% of training batches unclamped
# (Supplement 1.11.5).
# DISCREPANCY: no structural violation loss (1.9.11; weight 0 in initial training anyway).
# DISCREPANCY: the experimentally-resolved loss (1.9.10) is in eq. 7 for fine-tuning only; it is
# trained here from the start (weight 0.01) so that the head learns in the runs this recipe makes.

LOSS_WEIGHTS = {
    "fape_backbone": 0.5,  # eq. 7: 0.5 L_aux, whose backbone part is the mean over layers of backbone FAPE
    "fape_sidechain": 0.5,  # eq. 7: 0.5 L_FAPE, all-atom FAPE of the last layer (1.9.2)
    "supervised_chi": 0.5,  # 0.5 L_aux's torsion part (Algorithm 27)
    "angle_norm": 0.01,  # 0.5 * 0.02, Algorithm 27's angle-norm term
    "distogram": 0.3,
    "masked_msa": 2.0,
    "plddt": 0.01,
    "experimentally_resolved": 0.01,
}
MIN_RESOLUTION, MAX_RESOLUTION = 0.1, 3.0  # Angstrom: the structures the confidence losses learn from (1.9.6)


def _positions_in_frames(frames: Rigid, positions: torch.Tensor) -> torch.Tensor:
    """T_i^-1 . x_j = R_i^T (x_j - t_i) for every frame i [*, F] and position j [*, P, 3] -> [*, F, P, 3].
    As an einsum over the frames' own rotations: a broadcast matmul would expand (and keep for the
    backward pass) a 3x3 rotation per frame-position pair; this keeps the 3 differences."""
    diff = positions.unsqueeze(-3) - frames.trans.unsqueeze(-2)  # [*, F, P, 3]
    return torch.einsum("...fpj,...fji->...fpi", diff, frames.rot)


def fape(
    pred_frames: Rigid,
    target_frames: Rigid,
    frames_mask: torch.Tensor,
    pred_positions: torch.Tensor,
    target_positions: torch.Tensor,
    positions_mask: torch.Tensor,
    clamp_distance: float | None = 10.0,
    length_scale: float = 10.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Algorithm 28, Frame Aligned Point Error: every position seen from every frame,

        d_ij = sqrt(|T_i^-1 . x_j - T_i^true^-1 . x_j^true|^2 + eps)
        FAPE = sum_ij m_i m_j min(clamp, d_ij) / Z / (eps + sum_i m_i) / (eps + sum_j m_j)

    (Z = length_scale = 10 A, clamp 10 A, eps 1e-4 A^2 inside the root and on each of the two
    normalisers separately, as OpenFold's compute_fape divides: a sample with every frame or every
    position masked scores 0). frames [*, F], frames_mask [*, F], positions [*, P, 3],
    positions_mask [*, P] -> [*]. Because eps sits inside the sqrt, identical structures give
    about sqrt(eps) / Z (1e-3), not 0.
    """
    local_pred = _positions_in_frames(pred_frames, pred_positions)  # [*, F, P, 3]
    local_true = _positions_in_frames(target_frames, target_positions)
    d = torch.sqrt((local_pred - local_true).square().sum(-1) + eps)  # [*, F, P]
    if clamp_distance is not None:
        d = d.clamp(max=clamp_distance)
    d = d / length_scale * frames_mask[..., :, None] * positions_mask[..., None, :]
    per_frame = d.sum(-1) / (eps + frames_mask.sum(-1))[..., None]  # [*, F]
    return per_frame.sum(-1) / (eps + positions_mask.sum(-1))


def backbone_frames(backbone_coords: torch.Tensor) -> Rigid:
    """backbone_coords [*, N_res, 3 (N, CA, C), 3] -> the residue frames (Algorithm 21)."""
    n, ca, c = backbone_coords.unbind(-2)
    return Rigid.from_3_points(n, ca, c)


def backbone_fape_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the structure module's layers of the FAPE of that layer's backbone frames, scored
    on the CA positions (= the frames' translations) against the true backbone frames (1.9.2,
    L_aux's FAPE). -> [B]."""
    coords = batch["backbone_coords"].to(outputs["frames_trans"].dtype)  # [B, N, 3, 3]
    mask = batch["backbone_mask"].to(coords.dtype)  # [B, N]
    true_frames = backbone_frames(coords)
    rots, transs = outputs["frames_rot"], outputs["frames_trans"]  # [L, B, N, 3, 3], [L, B, N, 3]
    return torch.stack([
        fape(Rigid(rot, trans), true_frames, mask, trans, coords[..., 1, :], mask)
        for rot, trans in zip(rots.unbind(0), transs.unbind(0))
    ]).mean(0)


def sidechain_fape_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """All-atom FAPE of the last layer (1.9.2): the 8 rigid-group frames of every residue against
    every heavy atom, after renaming the symmetric ground-truth atoms to the naming the prediction
    is closer to (1.8.5, Algorithm 26) and taking the matching alternative frames. -> [B]."""
    aatype = batch["aatype"]
    pred_atoms = outputs["atom14_positions"]  # [B, N, 14, 3]
    dtype = pred_atoms.dtype
    gt_atoms, gt_mask = batch["atom14_gt_positions"].to(dtype), batch["atom14_gt_exists"].to(dtype)
    renamed = rename_symmetric_ground_truth(aatype, pred_atoms, gt_atoms, gt_mask)
    gt = atom14_to_frames(aatype, gt_atoms, gt_mask)
    better = renamed["alt_naming_is_better"][..., None, None, None]  # [B, N, 1, 1, 1]
    gt_rot = torch.lerp(gt["frames"].rot, gt["alt_frames"].rot, better)
    pred_frames = Rigid(outputs["all_frames_rot"].flatten(-4, -3), outputs["all_frames_trans"].flatten(-3, -2))
    true_frames = Rigid(gt_rot.flatten(-4, -3), gt["frames"].trans.flatten(-3, -2))  # [B, 8N]
    positions_mask = renamed["mask"] * restype_table("ATOM14_MASK", aatype, dtype)
    return fape(
        pred_frames, true_frames, gt["exists"].flatten(-2),
        pred_atoms.flatten(-3, -2), renamed["positions"].flatten(-3, -2), positions_mask.flatten(-2),
    )


# DISCREPANCY: Algorithm 27 scores all 7 torsions; AlphaFold's and OpenFold's code (whose weights
# LOSS_WEIGHTS follows) score the squared error of chi1-4 only, the backbone torsions being scored
# through FAPE. The angle-norm term covers all 7, as in both.
def torsion_angle_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], eps: float = 1e-6
) -> dict[str, torch.Tensor]:
    """Algorithm 27 (torsionAngleLoss), averaged over the structure module's layers -> dict of [B]:

        supervised_chi  mean over layers, residues and present chi angles of
                        min(|alpha_pred - alpha_true|^2, |alpha_pred - alpha_alt_true|^2)
                        (alpha_alt: pi-periodic chi angles shifted by pi)
        angle_norm      mean over layers, present residues and all 7 angles of | |l| - 1 |,
                        l the angle ResNet's unnormalised (sin, cos) output
    """
    angles, raw = outputs["angles"], outputs["unnormalized_angles"]  # [L, B, N, 7, 2]
    dtype = compute_dtype(angles)
    angles, raw = angles.to(dtype), raw.to(dtype)
    true = batch["torsion_angles_sin_cos"].to(dtype)[..., 3:, :]  # [B, N, 4, 2]
    alt = batch["alt_torsion_angles_sin_cos"].to(dtype)[..., 3:, :]
    chi_mask = batch["torsion_angles_mask"].to(dtype)[..., 3:]  # [B, N, 4]
    pred = angles[..., 3:, :]
    error = torch.minimum((pred - true).square().sum(-1), (pred - alt).square().sum(-1))  # [L, B, N, 4]
    chi = (error * chi_mask).sum((-1, -2)) / (eps + chi_mask.sum((-1, -2)))  # [L, B]
    seq_mask = batch["seq_mask"].to(dtype)
    norm_error = (torch.sqrt(raw.square().sum(-1) + eps) - 1.0).abs()  # [L, B, N, 7]
    angle_norm = (norm_error * seq_mask[..., None]).sum((-1, -2)) / (eps + 7.0 * seq_mask.sum(-1))
    return {"supervised_chi": chi.mean(0), "angle_norm": angle_norm.mean(0)}


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits [*, C] (computed in max(float32, their dtype)), target [*] (long) -> cross-entropy [*]."""
    logits = logits.to(compute_dtype(logits))
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return flat.reshape(target.shape)


def distogram_bins(positions: torch.Tensor, no_bins: int = 64, min_dist: float = 2.0, max_dist: float = 22.0) -> torch.Tensor:
    """positions [*, N, 3] -> bin index [*, N, N] of each pairwise distance. The 64 bins split
    2-22 A evenly (width 0.3125 A); the first and last are open-ended (Supplement 1.9.8)."""
    boundaries = torch.linspace(min_dist, max_dist, no_bins + 1, device=positions.device)[1:-1]  # 63 inner edges
    d2 = (positions[..., :, None, :] - positions[..., None, :, :]).float().square().sum(-1, keepdim=True)
    return (d2 > boundaries.square()).sum(-1)


def distogram_loss(logits: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the distogram over residue pairs present in both residues (1.9.8).
    logits [*, N, N, no_bins], positions [*, N, 3], mask [*, N] -> [*]."""
    target = distogram_bins(positions, no_bins=logits.shape[-1])
    errors = _cross_entropy(logits, target)
    pair_mask = mask[..., :, None] * mask[..., None, :]
    return (errors * pair_mask).sum((-1, -2)) / (pair_mask.sum((-1, -2)) + 1e-6)


def masked_msa_loss(logits: torch.Tensor, true_msa: torch.Tensor, bert_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at the BERT-masked MSA positions (1.9.9), averaged over them.
    logits [B, N_seq, N_res, 23], true_msa [B, N_seq, N_res] (long), bert_mask [B, N_seq, N_res] -> [B]."""
    errors = _cross_entropy(logits, true_msa)  # [B, N_seq, N_res]
    bert_mask = bert_mask.to(errors.dtype)
    return (errors * bert_mask).sum((-1, -2)) / (bert_mask.sum((-1, -2)) + 1e-8)


def _resolution_filter(batch: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """1 for samples whose resolution is in [0.1, 3.0] A (Supplement 1.9.6, 1.9.10), else 0 -> [B]."""
    r = batch["resolution"]
    return ((r >= MIN_RESOLUTION) & (r <= MAX_RESOLUTION)).to(like.dtype)


def plddt_loss(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], pred_ca: torch.Tensor, cutoff: float = 15.0, eps: float = 1e-10
) -> torch.Tensor:
    """Supplement 1.9.6: cross-entropy of the lDDT head against the binned lDDT-Ca of the final
    structure (no gradient into the structure), over resolved residues, for samples with a
    resolution in [0.1, 3] A. logits [B, N, no_bins], pred_ca [B, N, 3] -> [B]."""
    true_ca = batch["atom14_gt_positions"][..., ATOM_CA, :].to(pred_ca.dtype)
    ca_mask = batch["atom14_gt_exists"][..., ATOM_CA].to(pred_ca.dtype)
    with torch.no_grad():
        score = lddt(pred_ca.detach(), true_ca, ca_mask, cutoff=cutoff)  # [B, N]
    no_bins = logits.shape[-1]
    target = torch.clamp(torch.floor(score * no_bins).long(), max=no_bins - 1)
    errors = _cross_entropy(logits, target)
    loss = (errors * ca_mask).sum(-1) / (eps + ca_mask.sum(-1))
    return loss * _resolution_filter(batch, loss)


def experimentally_resolved_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """Supplement 1.9.10: sigmoid cross-entropy of each atom being resolved, over the atoms the
    residue type has (atom37 layout), for samples with a resolution in [0.1, 3] A.
    logits [B, N, 37] -> [B]."""
    aatype = batch["aatype"]
    logits = logits.to(compute_dtype(logits))
    target = atom14_to_atom37_mask(aatype, batch["atom14_gt_exists"].to(logits.dtype))
    exists = restype_table("ATOM37_MASK", aatype, logits.dtype) * batch["seq_mask"].to(logits.dtype)[..., None]
    errors = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (errors * exists).sum((-1, -2)) / (eps + exists.sum((-1, -2)))
    return loss * _resolution_filter(batch, loss)


def alphafold_loss_terms(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unweighted loss terms (the keys of LOSS_WEIGHTS), each [B].

    Computed with autocast off, every floating output in max(fp32, its dtype): under bf16 autocast
    the frames' matmuls would otherwise round 100 A coordinates to bf16's 8-bit mantissa (~0.4 A)."""
    device = batch["aatype"].device.type
    with torch.autocast(device_type=device, enabled=False):
        outputs = {k: v.to(compute_dtype(v)) if v.is_floating_point() else v for k, v in outputs.items()}
        return _loss_terms(outputs, batch)


def _loss_terms(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cb, cb_mask = pseudo_beta(batch["aatype"], batch["atom14_gt_positions"], batch["atom14_gt_exists"])
    return {
        "fape_backbone": backbone_fape_loss(outputs, batch),
        "fape_sidechain": sidechain_fape_loss(outputs, batch),
        **torsion_angle_loss(outputs, batch),
        "distogram": distogram_loss(outputs["distogram_logits"], cb, cb_mask.float()),
        "masked_msa": masked_msa_loss(outputs["msa_logits"], batch["true_msa"], batch["bert_mask"]),
        "plddt": plddt_loss(outputs["lddt_logits"], batch, outputs["frames_trans"][-1]),  # CA: the frames' origins
        "experimentally_resolved": experimentally_resolved_loss(outputs["experimentally_resolved_logits"], batch),
    }


def alphafold_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum of LOSS_WEIGHTS[k] * term_k -> per-sample loss [B]."""
    terms = alphafold_loss_terms(outputs, batch)
    return sum(LOSS_WEIGHTS[name] * value for name, value in terms.items())
