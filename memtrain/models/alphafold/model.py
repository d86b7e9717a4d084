"""AlphaFold 2 (Jumper et al. 2021; Supplementary Information, "the supplement"): input
embedding, recycling, the Evoformer stack, the structure module and the auxiliary heads.

Input features (a dict; B batch, N_seq MSA rows, N_res residues), the contract with the data
pipeline (memtrain.data):

    aatype          [B, N_res]             long   0..20 (20 = unknown): each residue's rigid groups and atoms
    residue_index   [B, N_res]             long   residue numbers (gaps allowed), for relpos
    seq_mask        [B, N_res]             float  1 = residue present (0 = padding)
    target_feat     [B, N_res, 22]         float  Supplement Table 1 (one-hot aatype + "between segment")
    msa_feat        [B, N_seq, N_res, 49]  float  Supplement Table 1 (cluster msa one-hot, deletions, profile)
    msa_mask        [B, N_seq, N_res]      float  1 = MSA entry present
    true_msa        [B, N_seq, N_res]      long   0..22, the MSA before BERT masking (loss target)
    bert_mask       [B, N_seq, N_res]      float  1 = entry masked in msa_feat (scored by the MSA loss)
    backbone_coords [B, N_res, 3, 3]       float  atoms N, CA, C in Angstrom (loss target)
    backbone_mask   [B, N_res]             float  1 = all three backbone atoms resolved

With the extra-MSA stack (`n_extra_msa_blocks` > 0): extra_msa, extra_has_deletion,
extra_deletion_value, extra_msa_mask [B, N_extra, N_res] (memtrain.models.alphafold.extra_msa).
With templates (`templates`): the template_* features [B, N_templ, N_res, ...] and template_mask
[B, N_templ] (memtrain.models.alphafold.template).

Outputs (`forward`): msa_logits [B, N_seq, N_res, 23], distogram_logits [B, N_res, N_res, 64],
lddt_logits [B, N_res, 50] (from the structure module's single representation),
experimentally_resolved_logits [B, N_res, 37] (from the Evoformer's), and from the structure
module (StructureModule.forward): frames_rot [L, B, N_res, 3, 3], frames_trans [L, B, N_res, 3]
(Angstrom, per layer), angles and unnormalized_angles [L, B, N_res, 7, 2], all_frames_rot
[B, N_res, 8, 3, 3], all_frames_trans [B, N_res, 8, 3], atom14_positions [B, N_res, 14, 3],
backbone_positions [B, N_res, 3, 3], single [B, N_res, C_s]; pair [B, N_res, N_res, C_z],
msa_first_row [B, N_res, C_m]. Losses: memtrain.models.alphafold.loss.alphafold_loss, which also
reads the ground-truth all-atom targets (memtrain.data.protein_features).

The model holds no parallel or memory-saving code. From outside: `set_chunk_size` and
`set_attention_backend` (primitives.py) set module attributes; activation checkpointing wraps
the blocks of `model.evoformer.blocks`; the DAP wrapper uses the Evoformer modules' pieces.
"""

from __future__ import annotations

import torch
from torch import nn

from memtrain.models.alphafold.embedders import InputEmbedder, RecyclingEmbedder
from memtrain.models.alphafold.evoformer import EvoformerStack
from memtrain.protein.all_atom import predicted_pseudo_beta
from memtrain.models.alphafold.heads import (
    DistogramHead,
    ExperimentallyResolvedHead,
    MaskedMSAHead,
    PerResidueLDDTCaPredictor,
)
from memtrain.models.alphafold.extra_msa import (
    ExtraMSAEmbedder,
    ExtraMSAStack,
    extra_msa_feat,
)
from memtrain.models.alphafold.structure import StructureModule
from memtrain.models.alphafold.template import TemplateEmbedder

# DISCREPANCY: a fixed number of recycling iterations (`num_recycles` without grad, then one
# with); the paper samples the number uniformly from 1..4 per batch during training (1.10).
# DISCREPANCY: no PAE head (the paper trains it only in fine-tuning, 1.9.7) and no violation loss.

# Published sizes (Supplement 1.5-1.9; OpenFold's model_1 config): the keyword arguments of AlphaFold.
PUBLISHED = {
    "c_m": 256,  # MSA channels
    "c_z": 128,  # pair channels
    "c_s": 384,  # single channels
    "n_blocks": 48,  # Evoformer blocks
    "n_heads_msa": 8,  # MSA row/column attention (Algorithms 7, 8): 8 heads of 32
    "c_hidden_msa_att": 32,
    "n_heads_pair": 4,  # triangle attention (Algorithms 13, 14): 4 heads of 32
    "c_hidden_pair_att": 32,
    "c_hidden_opm": 32,  # outer product mean (Algorithm 10)
    "c_hidden_mul": 128,  # triangle multiplication (Algorithms 11, 12)
    "transition_n": 4,  # transitions (Algorithms 9, 15)
    "n_structure_layers": 8,  # structure module (Algorithm 20), shared weights
    "n_heads_ipa": 12,  # IPA (Algorithm 22): 12 heads of 16, 4 query/key points, 8 value points
    "c_hidden_ipa": 16,
    "n_ipa_qk_points": 4,
    "n_ipa_v_points": 8,
    "msa_dropout": 0.15,
    "pair_dropout": 0.25,
    "structure_dropout": 0.1,
    "n_extra_msa_blocks": 4,  # extra-MSA stack (Algorithms 18, 19): C_e 64, attention 8 heads of 8
    "c_e": 64,
    "c_hidden_extra_msa_att": 8,
    "templates": True,  # template stack (Algorithms 16, 17): C_t 64, 2 blocks, attention 4 heads of 16
    "c_t": 64,
    "n_template_blocks": 2,
    "c_hidden_template_att": 16,
    "n_heads_template": 4,
    "c_hidden_template_mul": 64,
    "template_transition_n": 2,
    "c_hidden_template_pointwise": 16,
    "n_heads_template_pointwise": 4,
}

# Parameters of AlphaFold(**PUBLISHED), counted on the meta device by
# tests/unit/alphafold/test_model.py: 48 Evoformer blocks of 1,829,952 (87,936,384 with the
# single projection), structure module 2,019,116 (with the torsion-angle ResNet's 166,414),
# embedders 35,840, heads 101,422 (distogram 8,256, masked MSA 5,911, pLDDT 73,010,
# experimentally resolved 14,245), extra-MSA stack 2,805,248 (4 blocks of 701,312) and its
# embedder 1,664, template embedder 329,408: 93,229,082, AlphaFold 2's 93.2M.
PUBLISHED_PARAMETERS = 93_229_082


class AlphaFold(nn.Module):
    """batch (see the module docstring) -> dict of outputs for the losses.

    The constructor takes plain numbers (the keys of memtrain.models.alphafold.family.AlphaFoldConfig);
    defaults are the published sizes (PUBLISHED).
    """

    def __init__(
        self,
        c_m: int = 256,
        c_z: int = 128,
        c_s: int = 384,
        n_blocks: int = 48,
        n_heads_msa: int = 8,
        n_heads_pair: int = 4,
        c_hidden_msa_att: int = 32,
        c_hidden_pair_att: int = 32,
        c_hidden_opm: int = 32,
        c_hidden_mul: int = 128,
        transition_n: int = 4,
        n_structure_layers: int = 8,
        n_heads_ipa: int = 12,
        c_hidden_ipa: int = 16,
        n_ipa_qk_points: int = 4,
        n_ipa_v_points: int = 8,
        num_recycles: int = 0,
        msa_dropout: float = 0.15,
        pair_dropout: float = 0.25,
        structure_dropout: float = 0.1,
        msa_feat_dim: int = 49,
        target_feat_dim: int = 22,
        max_relative_position: int = 32,
        n_distogram_bins: int = 64,
        n_msa_classes: int = 23,
        c_resnet: int = 128,
        c_hidden_plddt: int = 128,
        n_plddt_bins: int = 50,
        n_extra_msa_blocks: int = 4,
        c_e: int = 64,
        c_hidden_extra_msa_att: int = 8,
        templates: bool = True,
        c_t: int = 64,
        n_template_blocks: int = 2,
        c_hidden_template_att: int = 16,
        n_heads_template: int = 4,
        c_hidden_template_mul: int = 64,
        template_transition_n: int = 2,
        c_hidden_template_pointwise: int = 16,
        n_heads_template_pointwise: int = 4,
        template_unit_vector: bool = False,
    ):
        super().__init__()
        if num_recycles < 0:
            raise ValueError(f"num_recycles must be >= 0, got {num_recycles}")
        if n_extra_msa_blocks < 0 or n_template_blocks < 0:
            raise ValueError(f"block counts must be >= 0, got {n_extra_msa_blocks}, {n_template_blocks}")
        self.c_m, self.c_z, self.num_recycles = c_m, c_z, num_recycles
        self.input_embedder = InputEmbedder(target_feat_dim, msa_feat_dim, c_m, c_z, max_relative_position)
        self.recycling_embedder = RecyclingEmbedder(c_m, c_z)
        self.evoformer = EvoformerStack(
            n_blocks,
            c_m,
            c_z,
            c_s,
            c_hidden_msa_att=c_hidden_msa_att,
            no_heads_msa=n_heads_msa,
            c_hidden_opm=c_hidden_opm,
            c_hidden_mul=c_hidden_mul,
            c_hidden_pair_att=c_hidden_pair_att,
            no_heads_pair=n_heads_pair,
            transition_n=transition_n,
            msa_dropout=msa_dropout,
            pair_dropout=pair_dropout,
        )
        self.structure_module = StructureModule(
            c_s,
            c_z,
            c_hidden_ipa=c_hidden_ipa,
            no_heads_ipa=n_heads_ipa,
            no_qk_points=n_ipa_qk_points,
            no_v_points=n_ipa_v_points,
            no_blocks=n_structure_layers,
            dropout=structure_dropout,
            c_resnet=c_resnet,
        )
        self.distogram_head = DistogramHead(c_z, n_distogram_bins)
        self.masked_msa_head = MaskedMSAHead(c_m, n_msa_classes)
        self.lddt_head = PerResidueLDDTCaPredictor(c_s, c_hidden_plddt, n_plddt_bins)
        self.experimentally_resolved_head = ExperimentallyResolvedHead(c_s)
        # Supplement 1.7: the template embedder and the extra-MSA stack (None when switched off)
        self.template_embedder = TemplateEmbedder(
            c_m, c_z, c_t, n_template_blocks, c_hidden_att=c_hidden_template_att, no_heads=n_heads_template,
            c_hidden_mul=c_hidden_template_mul, transition_n=template_transition_n,
            c_hidden_pointwise=c_hidden_template_pointwise, no_heads_pointwise=n_heads_template_pointwise,
            dropout=pair_dropout, use_unit_vector=template_unit_vector,
        ) if templates else None
        self.extra_msa_embedder = ExtraMSAEmbedder(c_e=c_e) if n_extra_msa_blocks > 0 else None
        self.extra_msa_stack = ExtraMSAStack(
            n_extra_msa_blocks, c_e, c_z, c_hidden_msa_att=c_hidden_extra_msa_att, no_heads_msa=n_heads_msa,
            c_hidden_opm=c_hidden_opm, c_hidden_mul=c_hidden_mul, c_hidden_pair_att=c_hidden_pair_att,
            no_heads_pair=n_heads_pair, transition_n=transition_n, msa_dropout=msa_dropout, pair_dropout=pair_dropout,
        ) if n_extra_msa_blocks > 0 else None

    def iteration(
        self,
        batch: dict[str, torch.Tensor],
        m1_prev: torch.Tensor,
        z_prev: torch.Tensor,
        x_prev: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """One pass of Algorithm 2 (lines 5-14) given the previous iteration's first MSA row
        m1_prev [B, N_res, C_m], pair z_prev [B, N_res, N_res, C_z] and pseudo-beta positions
        x_prev [B, N_res, 3] (CB, CA for glycine; Algorithm 32)."""
        msa_mask, seq_mask = batch["msa_mask"], batch["seq_mask"]
        pair_mask = seq_mask[..., :, None] * seq_mask[..., None, :]
        m, z = self.input_embedder(batch["target_feat"], batch["residue_index"], batch["msa_feat"])
        m1_update, z_update = self.recycling_embedder(m1_prev, z_prev, x_prev)
        m = torch.cat([m[..., :1, :, :] + m1_update[..., None, :, :], m[..., 1:, :, :]], dim=-3)
        z = z + z_update
        n_seq = m.shape[-3]
        if self.template_embedder is not None:  # Supplement 1.7.1: the templates into z (and below into m)
            z = z + self.template_embedder.pair_update(batch, z, pair_mask)
        if self.extra_msa_stack is not None:  # Supplement 1.7.2: the extra MSA into z (Algorithm 18)
            e = self.extra_msa_embedder(extra_msa_feat(batch).to(z.dtype))
            z = self.extra_msa_stack(e, z, batch["extra_msa_mask"].to(msa_mask.dtype), pair_mask)
        if self.template_embedder is not None:
            rows, rows_mask = self.template_embedder.msa_rows(batch)
            m = torch.cat([m, rows.to(m.dtype)], dim=-3)
            msa_mask = torch.cat([msa_mask, rows_mask.to(msa_mask.dtype)], dim=-2)
        m, z, s = self.evoformer(m, z, msa_mask, pair_mask)
        outputs = self.structure_module(s, z, seq_mask, batch["aatype"])
        outputs["pair"], outputs["msa_first_row"] = z, m[..., 0, :, :]
        outputs["msa"] = m[..., :n_seq, :, :]  # the template rows are not scored by the masked-MSA loss
        outputs["evoformer_single"] = s
        return outputs

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Algorithm 2 with recycling (Supplement 1.10): `num_recycles` iterations without grad
        feed their first MSA row, pair representation and CA positions to the next; the last
        iteration runs with grad (when grad is enabled) and feeds the heads."""
        msa_feat = batch["msa_feat"]
        b, _, n = msa_feat.shape[:3]
        m1_prev = msa_feat.new_zeros(b, n, self.c_m)
        z_prev = msa_feat.new_zeros(b, n, n, self.c_z)
        x_prev = msa_feat.new_zeros(b, n, 3)
        grad_enabled = torch.is_grad_enabled()
        for cycle in range(self.num_recycles + 1):
            last = cycle == self.num_recycles
            with torch.set_grad_enabled(grad_enabled and last):
                outputs = self.iteration(batch, m1_prev, z_prev, x_prev)
            if not last:
                m1_prev = outputs["msa_first_row"].detach()
                z_prev = outputs["pair"].detach()
                x_prev = predicted_pseudo_beta(
                    batch["aatype"], outputs["atom14_positions"], outputs["frames_trans"][-1]
                ).detach()  # Angstrom
        outputs["msa_logits"] = self.masked_msa_head(outputs.pop("msa"))
        outputs["distogram_logits"] = self.distogram_head(outputs["pair"])
        outputs["lddt_logits"] = self.lddt_head(outputs["single"])
        outputs["experimentally_resolved_logits"] = self.experimentally_resolved_head(outputs.pop("evoformer_single"))
        return outputs
