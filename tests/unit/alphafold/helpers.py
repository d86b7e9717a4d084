"""Shared pieces of the AlphaFold tests: a tiny configuration, random features and a way to give
the zero-initialised ("final", "gating") layers random weights so that numeric checks are not
trivially satisfied by zeros."""

from __future__ import annotations

import math
from pathlib import Path

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
    "n_extra_msa_blocks": 2, "c_e": 8, "c_hidden_extra_msa_att": 4, "c_t": 8, "n_template_blocks": 2,
    "c_hidden_template_att": 4, "n_heads_template": 2, "c_hidden_template_mul": 8, "c_hidden_template_pointwise": 4,
    "n_heads_template_pointwise": 2,
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


def random_batch(
    b: int = 1, n_seq: int = 4, n_res: int = 10, seed: int = 0, n_extra: int = 3, n_templ: int = 2
) -> dict[str, torch.Tensor]:
    """Random features following the contract in memtrain/models/alphafold/model.py, with a
    chain-like backbone (consecutive CA about 3.8 A apart) so the losses see realistic distances,
    `n_extra` extra-MSA rows and `n_templ` templates (see random_stack_features)."""
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
    return random_stack_features(gen, b, n_res, truth["backbone_coords"], n_extra, n_templ) | {
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


def random_stack_features(
    gen: torch.Generator, b: int, n_res: int, coords: torch.Tensor, n_extra: int, n_templ: int
) -> dict[str, torch.Tensor]:
    """Extra-MSA features (some entries masked) and template features: each template the backbone
    `coords` [B, N, 3, 3] moved by noise, with a CB and an O per residue, random torsion angles and
    masks, some residues unaligned (aatype 21, atoms masked); with two or more samples and
    templates, the last template of the last sample is padding (template_mask 0)."""
    out = {}
    if n_extra > 0:
        deletions = torch.randint(0, 4, (b, n_extra, n_res), generator=gen).float()
        out |= {
            "extra_msa": torch.randint(0, 22, (b, n_extra, n_res), generator=gen),
            "extra_has_deletion": deletions.clamp(max=1.0),
            "extra_deletion_value": (2 / math.pi) * torch.atan(deletions / 3.0),
            "extra_msa_mask": (torch.rand(b, n_extra, n_res, generator=gen) > 0.2).float(),
        }
    if n_templ > 0:
        t = (b, n_templ, n_res)
        positions = torch.zeros(*t, 37, 3)
        backbone = coords[:, None] + 0.5 * torch.randn(*t, 3, 3, generator=gen)
        positions[..., :3, :] = backbone
        positions[..., 3, :] = backbone[..., 1, :] + torch.randn(*t, 3, generator=gen)  # CB
        positions[..., 4, :] = backbone[..., 2, :] + torch.randn(*t, 3, generator=gen)  # O
        aligned = (torch.rand(*t, generator=gen) > 0.15).float()
        atom_mask = torch.zeros(*t, 37)
        atom_mask[..., :5] = aligned[..., None]
        aatype = torch.where(aligned > 0, torch.randint(0, 21, t, generator=gen), torch.full(t, 21))
        angles = torch.randn(*t, 7, generator=gen)
        sin_cos = torch.stack([angles.sin(), angles.cos()], dim=-1)
        template_mask = torch.ones(b, n_templ)
        if n_templ > 1 and b > 1:
            template_mask[-1, -1] = 0.0
        out |= {
            "template_aatype": aatype,
            "template_all_atom_positions": positions * atom_mask[..., None],
            "template_all_atom_mask": atom_mask,
            "template_pseudo_beta": positions[..., 3, :] * aligned[..., None],
            "template_pseudo_beta_mask": aligned,
            "template_torsion_angles_sin_cos": sin_cos,
            "template_alt_torsion_angles_sin_cos": -sin_cos,
            "template_torsion_angles_mask": (torch.rand(*t, 7, generator=gen) > 0.3).float() * aligned[..., None],
            "template_mask": template_mask,
        }
    return out


def aligned_chain_root(folder: Path) -> Path:
    """A data root in `folder` holding only 2Q2K (chain A has the one A3M with several rows, so
    every sample of it has extra-MSA rows): links to the real files, not copies."""
    from memtrain.data.sequences import default_protein_root

    source = default_protein_root()
    for sub, name in (("mmcif", "2q2k.cif"), ("alignments", "2q2k_A.a3m")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        link = folder / sub / name
        if not link.exists():
            link.symlink_to(source / sub / name)
    return folder
