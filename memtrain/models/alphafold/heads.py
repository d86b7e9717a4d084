"""Auxiliary heads (Supplement 1.9.6, 1.9.8, 1.9.9, 1.9.10)."""

from __future__ import annotations

import torch
from torch import nn

from memtrain.models.alphafold.primitives import LayerNorm, Linear, compute_dtype


class DistogramHead(nn.Module):
    """Supplement 1.9.8: logits over distance bins of residue pairs from the pair representation,
    symmetrised: logits_ij = Linear(z_ij) + Linear(z_ji). 64 bins spanning 2-22 Angstrom."""

    def __init__(self, c_z: int, no_bins: int = 64):
        super().__init__()
        self.linear = Linear(c_z, no_bins, init="final")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [*, N_res, N_res, C_z] -> logits [*, N_res, N_res, no_bins]."""
        logits = self.linear(z)
        return logits + logits.transpose(-2, -3)


class MaskedMSAHead(nn.Module):
    """Supplement 1.9.9: logits over the 23 MSA classes (20 amino acids, unknown, gap, mask) of
    every MSA entry, scored at the BERT-masked positions."""

    def __init__(self, c_m: int, no_classes: int = 23):
        super().__init__()
        self.linear = Linear(c_m, no_classes, init="final")

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        """m [*, N_seq, N_res, C_m] -> logits [*, N_seq, N_res, no_classes]."""
        return self.linear(m)


class PerResidueLDDTCaPredictor(nn.Module):
    """Supplement 1.9.6, Algorithm 29 (predictPerResidueLDDT): logits over 50 bins of the lDDT-Ca of
    each residue from the structure module's final single representation,

        logits = Linear(relu(Linear(relu(Linear(LayerNorm(s))))))         hidden width c = 128

    pLDDT = 100 * sum_b softmax(logits)_b * v_b, v_b the bin centres 0.01, 0.03, ..., 0.99."""

    def __init__(self, c_s: int, c_hidden: int = 128, no_bins: int = 50):
        super().__init__()
        self.layer_norm = LayerNorm(c_s)
        self.linear_1 = Linear(c_s, c_hidden, init="relu")
        self.linear_2 = Linear(c_hidden, c_hidden, init="relu")
        self.linear_3 = Linear(c_hidden, no_bins, init="final")

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s [*, N_res, C_s] -> logits [*, N_res, no_bins]."""
        s = torch.relu(self.linear_1(self.layer_norm(s)))
        return self.linear_3(torch.relu(self.linear_2(s)))


def plddt_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-residue pLDDT in [0, 100] from the lDDT head's logits [*, N_res, no_bins] -> [*, N_res]."""
    no_bins, dtype = logits.shape[-1], compute_dtype(logits)
    centres = (torch.arange(no_bins, device=logits.device, dtype=dtype) + 0.5) / no_bins
    return 100.0 * (torch.softmax(logits.to(dtype), dim=-1) * centres).sum(-1)


class ExperimentallyResolvedHead(nn.Module):
    """Supplement 1.9.10: per residue, logits that each of its atoms (atom37 layout) was resolved
    in the experiment, from the final single representation: logits = Linear(s)."""

    def __init__(self, c_s: int, no_atoms: int = 37):
        super().__init__()
        self.linear = Linear(c_s, no_atoms, init="final")

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s [*, N_res, C_s] -> logits [*, N_res, 37]."""
        return self.linear(s)
