"""AlphaFold 2 training losses (Supplement 1.9), each returned per sample ([B]).

The total (Supplement 1.9.1, eq. 7, initial training; OpenFold's weights):

    L = 1.0 * L_FAPE + 0.3 * L_distogram + 2.0 * L_masked_msa
    L_FAPE = 0.5 * FAPE(final backbone atoms) + 0.5 * mean over layers FAPE(frames, CA)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memtrain.models.alphafold.structure import Rigid

# DISCREPANCY: eq. 7 also has the torsion-angle loss (inside L_aux), the pLDDT confidence loss
# (0.01), and in fine-tuning the experimentally-resolved (0.01) and violation (1.0) losses; this
# model has no torsion, side-chain or confidence outputs, so those terms are left out. Its
# "final" FAPE covers the backbone atoms N, CA, C instead of all atoms.
# DISCREPANCY: FAPE is always clamped at 10 A; the paper leaves 10% of training batches unclamped
# (Supplement 1.11.5).

LOSS_WEIGHTS = {"fape": 1.0, "distogram": 0.3, "masked_msa": 2.0}
FAPE_FINAL_WEIGHT = 0.5  # all-atom (here: backbone-atom) FAPE of the last structure-module layer
FAPE_AUX_WEIGHT = 0.5  # backbone (CA) FAPE averaged over the structure-module layers


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

        d_ij = sqrt(|T_i^-1 . x_j - T_i^true^-1 . x_j^true|^2 + eps),
        FAPE = mean_ij min(clamp, d_ij) / length_scale        (Z = 10 A, clamp 10 A, eps 1e-4 A^2)

    frames [*, F], frames_mask [*, F], positions [*, P, 3], positions_mask [*, P] -> [*].
    Because eps sits inside the sqrt, identical structures give sqrt(eps) / Z (1e-3), not 0.
    """
    local_pred = pred_frames.unsqueeze(-1).invert_apply(pred_positions.unsqueeze(-3))  # [*, F, P, 3]
    local_true = target_frames.unsqueeze(-1).invert_apply(target_positions.unsqueeze(-3))
    d = torch.sqrt((local_pred - local_true).square().sum(-1) + eps)  # [*, F, P]
    if clamp_distance is not None:
        d = d.clamp(max=clamp_distance)
    pair_mask = frames_mask[..., :, None] * positions_mask[..., None, :]
    return (d * pair_mask).sum((-1, -2)) / (pair_mask.sum((-1, -2)) + 1e-8) / length_scale


def backbone_frames(backbone_coords: torch.Tensor) -> Rigid:
    """backbone_coords [*, N_res, 3 (N, CA, C), 3] -> the residue frames (Algorithm 21)."""
    n, ca, c = backbone_coords.unbind(-2)
    return Rigid.from_3_points(n, ca, c)


def fape_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """0.5 * FAPE of the last layer's backbone atoms (N, CA, C against the backbone frames)
    + 0.5 * mean over layers of the CA FAPE of that layer's frames. -> [B]."""
    coords = batch["backbone_coords"].float()  # [B, N, 3, 3]
    mask = batch["backbone_mask"].float()  # [B, N]
    true_frames = backbone_frames(coords)
    rots, transs = outputs["frames_rot"], outputs["frames_trans"]  # [L, B, N, 3, 3], [L, B, N, 3]
    aux = torch.stack([
        fape(Rigid(rot, trans), true_frames, mask, trans, coords[..., 1, :], mask)
        for rot, trans in zip(rots.unbind(0), transs.unbind(0))
    ]).mean(0)
    atoms_pred = outputs["backbone_positions"].flatten(-3, -2)  # [B, 3N, 3]
    atoms_mask = mask.repeat_interleave(3, dim=-1)  # [B, 3N]
    final = fape(Rigid(rots[-1], transs[-1]), true_frames, mask, atoms_pred, coords.flatten(-3, -2), atoms_mask)
    return FAPE_FINAL_WEIGHT * final + FAPE_AUX_WEIGHT * aux


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits [*, C] (computed in fp32), target [*] (long) -> per-element cross-entropy [*]."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
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
    bert_mask = bert_mask.float()
    return (errors * bert_mask).sum((-1, -2)) / (bert_mask.sum((-1, -2)) + 1e-8)


def alphafold_loss_terms(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unweighted loss terms, each [B]."""
    # DISCREPANCY: the distogram targets are CA-CA distances; the paper bins CB (CA for glycine).
    return {
        "fape": fape_loss(outputs, batch),
        "distogram": distogram_loss(
            outputs["distogram_logits"], batch["backbone_coords"][..., 1, :], batch["backbone_mask"].float()
        ),
        "masked_msa": masked_msa_loss(outputs["msa_logits"], batch["true_msa"], batch["bert_mask"]),
    }


def alphafold_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum of LOSS_WEIGHTS[k] * term_k -> per-sample loss [B]."""
    terms = alphafold_loss_terms(outputs, batch)
    return sum(LOSS_WEIGHTS[name] * value for name, value in terms.items())
