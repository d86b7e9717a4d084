"""Shared pieces of the AlphaFold tests: a tiny configuration, random features and a way to give
the zero-initialised ("final", "gating") layers random weights so that numeric checks are not
trivially satisfied by zeros."""

from __future__ import annotations

import torch
from torch import nn

from memtrain.models.alphafold.structure import Rigid, quat_to_rot

TINY = {
    "c_m": 16, "c_z": 8, "c_s": 16, "n_blocks": 2, "n_heads_msa": 2, "n_heads_pair": 2, "c_hidden_msa_att": 8,
    "c_hidden_pair_att": 8, "c_hidden_opm": 4, "c_hidden_mul": 8, "transition_n": 2, "n_structure_layers": 2,
    "n_heads_ipa": 2, "c_hidden_ipa": 8,
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
    local = torch.tensor(((-0.525, 1.363, 0.0), (0.0, 0.0, 0.0), (1.526, 0.0, 0.0)))
    coords = (frames.rot[..., None, :, :] @ local[..., None]).squeeze(-1) + ca[..., None, :]  # [B, N, 3, 3]
    return {
        "aatype": aatype,
        "residue_index": torch.arange(n_res).expand(b, n_res).clone(),
        "seq_mask": torch.ones(b, n_res),
        "target_feat": target_feat,
        "msa_feat": msa_feat,
        "msa_mask": torch.ones(b, n_seq, n_res),
        "true_msa": true_msa,
        "bert_mask": (torch.rand(b, n_seq, n_res, generator=gen) < 0.3).float(),
        "backbone_coords": coords,
        "backbone_mask": torch.ones(b, n_res),
    }
