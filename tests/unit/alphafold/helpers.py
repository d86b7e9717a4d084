"""Shared pieces of the AlphaFold tests: a tiny configuration, random features and a way to give
the zero-initialised ("final", "gating") layers random weights so that numeric checks are not
trivially satisfied by zeros."""

from __future__ import annotations

import math

import torch
from torch import nn

from memtrain.models.alphafold.all_atom import (
    atom14_torsion_angles,
    frames_to_atom14_positions,
    restype_table,
    torsion_angles_to_frames,
)
from memtrain.models.alphafold.structure import Rigid, quat_to_rot

TINY = {
    "c_m": 16, "c_z": 8, "c_s": 16, "n_blocks": 2, "n_heads_msa": 2, "n_heads_pair": 2, "c_hidden_msa_att": 8,
    "c_hidden_pair_att": 8, "c_hidden_opm": 4, "c_hidden_mul": 8, "transition_n": 2, "n_structure_layers": 2,
    "n_heads_ipa": 2, "c_hidden_ipa": 8, "c_resnet": 16, "c_hidden_plddt": 16,
}


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Weights <- scale * N(0, 1) / sqrt(fan_in), biases <- 0.1 * scale * N(0, 1), LayerNorm weights
    1 + 0.1 * N(0, 1). Small biases keep the residues distinguishable: with biases as large as the
    weighted inputs, the residue-independent part dominates after a few residual blocks."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if p.dim() == 2:
            p.copy_(scale * noise / p.shape[1] ** 0.5)
        elif "layer_norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith("head_weights"):
            p.copy_(scale * noise)
        else:
            p.copy_(0.1 * scale * noise)
    return module


def random_rigid(shape: tuple[int, ...], gen: torch.Generator | None = None, scale: float = 5.0) -> Rigid:
    quat = torch.randn(*shape, 4, generator=gen)
    quat = quat / quat.norm(dim=-1, keepdim=True)
    return Rigid(quat_to_rot(quat), scale * torch.randn(*shape, 3, generator=gen))


def random_batch(b: int = 1, n_seq: int = 4, n_res: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random features following the contract in memtrain/models/alphafold/model.py, with a
    chain-like backbone (consecutive CA about 3.8 A apart) so the losses see realistic distances."""
    gen = torch.Generator().manual_seed(seed)
    aatype = torch.randint(0, 21, (b, n_res), generator=gen)
    target_feat = torch.nn.functional.one_hot(aatype, 22).float()
    true_msa = torch.randint(0, 23, (b, n_seq, n_res), generator=gen)
    msa_feat = torch.cat([
        torch.nn.functional.one_hot(true_msa, 23).float(),
        torch.rand(b, n_seq, n_res, 49 - 23, generator=gen),
    ], dim=-1)
    steps = torch.randn(b, n_res, 3, generator=gen)
    ca = torch.cumsum(3.8 * steps / steps.norm(dim=-1, keepdim=True), dim=1)
    frames = random_rigid((b, n_res), gen)
    frames = Rigid(frames.rot, ca)
    truth = ground_truth(aatype, frames, gen)
    return {
        "aatype": aatype,
        "residue_index": torch.arange(n_res).expand(b, n_res).clone(),
        "seq_mask": torch.ones(b, n_res),
        "target_feat": target_feat,
        "msa_feat": msa_feat,
        "msa_mask": torch.ones(b, n_seq, n_res),
        "true_msa": true_msa,
        "bert_mask": (torch.rand(b, n_seq, n_res, generator=gen) < 0.3).float(),
        "backbone_mask": torch.ones(b, n_res),
        **truth,
        "resolution": torch.full((b,), 2.0),
    }


def ground_truth(aatype: torch.Tensor, frames: Rigid, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every heavy atom of residue types aatype [B, N] placed by backbone frames [B, N] and random
    torsion angles on the idealised geometry; unknown residues get N, CA, C (alanine's geometry)
    and an O 1 A from CA. -> backbone_coords, atom14_gt_positions/exists and torsion angles."""
    angles = 2 * math.pi * torch.rand(*aatype.shape, 7, generator=gen)
    sin_cos = torch.stack((angles.sin(), angles.cos()), -1)
    atom14 = frames_to_atom14_positions(torsion_angles_to_frames(frames, sin_cos, aatype), aatype)
    atom14_mask = restype_table("ATOM14_MASK", aatype)
    unknown = aatype == 20
    atom14_mask[unknown, :4] = 1.0  # unknown residues: the ground truth keeps N, CA, C, O
    local = torch.tensor(((-0.525, 1.363, 0.0), (0.0, 0.0, 0.0), (1.526, 0.0, 0.0)))  # alanine's
    atom14[..., :3, :] = torch.where(unknown[..., None, None], frames.unsqueeze(-1).apply(local), atom14[..., :3, :])
    atom14[..., 3, :] = torch.where(unknown[..., None], frames.trans + 1.0, atom14[..., 3, :])
    return {
        "backbone_coords": atom14[..., :3, :].clone(),  # N, CA, C
        "atom14_gt_positions": atom14,
        "atom14_gt_exists": atom14_mask,
        **atom14_torsion_angles(aatype, atom14, atom14_mask),
    }


def rebuild_ground_truth(batch: dict[str, torch.Tensor], seed: int = 0) -> None:
    """Recompute batch's ground truth (in place) for its current aatype, on its backbone frames."""
    from memtrain.models.alphafold.loss import backbone_frames

    frames = backbone_frames(batch["backbone_coords"])
    batch.update(ground_truth(batch["aatype"], frames, torch.Generator().manual_seed(seed)))
