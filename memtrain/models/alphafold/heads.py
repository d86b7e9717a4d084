"""Auxiliary heads (Supplement 1.9.8, 1.9.9)."""

from __future__ import annotations

import torch
from torch import nn

from memtrain.models.alphafold.primitives import Linear


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
