"""Predicting structures with a trained AlphaFold: the features of one chain for inference, the
predicted atoms and pLDDT, lDDT-Ca against the true structure, the held-out-chain evaluation the
trainer runs every `trainer.eval_every` steps, and `memtrain predict`.

lDDT-Ca (Mariani et al. 2013; Supplement 1.9.6) is computed over the CA atoms resolved in the true
structure, inclusion radius 15 A, thresholds 0.5, 1, 2, 4 A (memtrain.protein.all_atom.lddt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import as_enum
from memtrain.config.schema import TemplateSource
from memtrain.data.errors import DataFormatError
from memtrain.protein import residue_constants as rc
from memtrain.protein.all_atom import ATOM_CA, lddt
from memtrain.models.alphafold.heads import plddt_from_logits
from memtrain.models.alphafold.structure_io import write_structure

EVAL_SEED = 0  # the crops, MSA rows and BERT masks of the held-out chains: the same at every evaluation


def best_crop_start(chain, crop_size: int) -> int:
    """The start of the crop_size window with the most residues whose backbone is resolved (the
    first such window), so a held-out chain is scored where it has a structure."""
    resolved = np.asarray(chain.backbone_mask, dtype=np.float64)
    if len(resolved) <= crop_size:
        return 0
    window_sums = np.convolve(resolved, np.ones(crop_size), mode="valid")
    return int(np.argmax(window_sums))


def chain_features(chain, msa: np.ndarray, deletions: np.ndarray, crop_size: int, max_msa: int, seed: int = EVAL_SEED,
                   max_extra_msa: int = 0, templates: list[dict[str, np.ndarray]] | None = None, max_templates: int = 0):
    """(inputs, targets) of one chain as a batch of 1: memtrain.data.protein_features.make_features
    on the crop_size window with the most resolved residues (best_crop_start), with a fixed seed for
    the MSA rows and the BERT masking, so the sample is the same every time. max_extra_msa > 0 adds
    the extra MSA; max_templates > 0 the first max_templates of ``templates`` (hit features,
    memtrain.data.templates.hit_features), as make_features does."""
    from memtrain.data.protein_features import EXTRA_MSA_KEYS, INPUT_KEYS, TARGET_KEYS, _LONG_KEYS, make_features
    from memtrain.data.templates import TEMPLATE_KEYS

    features = make_features(chain, msa, deletions, crop_size, max_msa, np.random.default_rng([seed]),
                             crop_start=best_crop_start(chain, crop_size), max_extra_msa=max_extra_msa,
                             templates=(templates or [])[:max_templates], max_templates=max_templates)
    batch = {k: torch.from_numpy(np.asarray(v))[None] for k, v in features.items()}
    for k in _LONG_KEYS & batch.keys():
        batch[k] = batch[k].long()
    inputs = {k: batch[k] for k in (*INPUT_KEYS, *EXTRA_MSA_KEYS, *TEMPLATE_KEYS) if k in batch}
    return inputs, {k: batch[k] for k in TARGET_KEYS}


def predicted_atoms(outputs: dict[str, torch.Tensor], aatype: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted heavy atoms to write: atom14 positions [*, N, 14, 3] and mask [*, N, 14] (the
    residue type's atoms; unknown residues: N, CA, C placed with alanine's backbone geometry)."""
    positions = outputs["atom14_positions"].clone()
    mask = torch.as_tensor(rc.ATOM14_MASK, device=aatype.device)[aatype].clone()
    unknown = aatype == rc.UNK
    positions[..., :3, :] = torch.where(unknown[..., None, None], outputs["backbone_positions"], positions[..., :3, :])
    mask[..., :3] = torch.where(unknown[..., None], torch.ones_like(mask[..., :3]), mask[..., :3])
    return positions, mask


def lddt_ca(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """lDDT-Ca of the predicted CA (the final backbone frames' origins) against the true CA, over the
    residues present and resolved -> [B] in [0, 1]."""
    pred = outputs["frames_trans"][-1].float()
    true = targets["atom14_gt_positions"][..., ATOM_CA, :].float()
    mask = targets["atom14_gt_exists"][..., ATOM_CA].float() * targets["seq_mask"].float()
    return lddt(pred, true, mask, per_residue=False)


def write_prediction(path: Path, outputs, inputs, targets, index: int = 0) -> Path:
    """Sample `index` of a batch's prediction to a PDB/mmCIF file, pLDDT in the B-factors."""
    aatype = inputs["aatype"][index]
    present = inputs["seq_mask"][index] > 0
    atoms = {k: outputs[k][index] for k in ("atom14_positions", "backbone_positions")}
    positions, mask = predicted_atoms(atoms, aatype)
    plddt = plddt_from_logits(outputs["lddt_logits"][index])
    return write_structure(
        path, aatype[present].cpu().numpy(), positions[present].float().cpu().numpy(), mask[present].cpu().numpy(),
        residue_index=inputs["residue_index"][index][present].cpu().numpy(), plddt=plddt[present].float().cpu().numpy(),
    )


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class HeldOutEvaluation:
    """lDDT-Ca and pLDDT of the model's predictions for the chains named in data.eval_chains (left out
    of training), each cropped to its data.crop_size window with the most resolved residues, with
    data.max_msa rows (and data.max_extra_msa extra rows) as in training but sampled with a fixed
    seed, and the best data.max_templates template hits (by alignment score, searched among all the
    chains of the data folder as in training) for a model with the template stack. Called on every rank (the model may be sharded: DAP, FSDP); the main rank writes each
    prediction to <run dir>/eval/step_<N>/<chain>.pdb."""

    def __init__(self, cfg: DictConfig):
        from memtrain.data.protein_features import ProteinStructureBatches
        from memtrain.data.sequences import default_protein_root
        from memtrain.models.alphafold.spec import stack_data_kwargs

        root = cfg.data.root or default_protein_root()
        names = list(cfg.data.eval_chains)
        stacks = stack_data_kwargs(cfg)
        data = ProteinStructureBatches(root, cfg.data.crop_size, cfg.data.max_msa, cfg.trainer.seed, only=names, **stacks)
        found = {e.chain.name for e in data.entries}
        missing = [n for n in names if n not in found]
        if missing:
            raise DataFormatError(
                f"data.eval_chains: no chain {', '.join(missing)} with enough resolved residues in {Path(root) / 'mmcif'}"
            )
        self.samples = [
            (e.chain.name, *chain_features(e.chain, e.msa, e.deletion_matrix, cfg.data.crop_size, cfg.data.max_msa,
                                           max_extra_msa=stacks["max_extra_msa"], max_templates=stacks["max_templates"],
                                           templates=data.template_features(i) if stacks["max_templates"] else None))
            for i, e in enumerate(data.entries)
        ]

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int, out_dir: Path | None, device: torch.device) -> dict[str, float]:
        training = model.training
        model.eval()
        scores, confidences = [], []
        try:
            for name, inputs, targets in self.samples:
                inputs, targets = _to(inputs, device), _to(targets, device)
                outputs = model(inputs)
                scores.append(float(lddt_ca(outputs, targets)[0]))
                present = inputs["seq_mask"][0] > 0
                confidences.append(float(plddt_from_logits(outputs["lddt_logits"][0])[present].mean()))
                if out_dir is not None:
                    write_prediction(out_dir / "eval" / f"step_{step:08d}" / f"{name}.pdb", outputs, inputs, targets)
        finally:
            model.train(training)
        return {"val_lddt_ca": float(np.mean(scores)), "val_plddt": float(np.mean(confidences))}


def build_evaluator(cfg: DictConfig) -> HeldOutEvaluation:
    return HeldOutEvaluation(cfg)


def _predict_templates(cfg: DictConfig, target) -> list[dict[str, np.ndarray]]:
    """Template hit features for `memtrain predict`, by the run's data.template_source: "self", the
    target's own structure with its sequence masked (none for an A3M input); "homologues", the hits
    among the chains of the run's data folder (memtrain.data.templates.search_templates; none when
    the folder holds no mmCIF files)."""
    from memtrain.data.protein_features import read_chains
    from memtrain.data.sequences import default_protein_root
    from memtrain.data.templates import hit_features, search_templates, self_template

    if as_enum(cfg.data.template_source, TemplateSource) is TemplateSource.self:
        return [hit_features(self_template(target))] if target.all_atom_mask is not None else []
    mmcif_dir = Path(cfg.data.root or default_protein_root()) / "mmcif"
    pool = [c for path in sorted(mmcif_dir.glob("*.cif")) for c in read_chains(path)] if mmcif_dir.is_dir() else []
    return [hit_features(hit) for hit in search_templates(target, pool)]


def predict(model: nn.Module, cfg: DictConfig, input_path: Path, output: Path, msa: Path | None = None,
            chain: str | None = None) -> dict[str, Any]:
    """Predict the structure of one chain and write it to `output` (.pdb or .cif).

    input_path: an mmCIF file (the chain `chain`, by author chain id, or the first protein chain;
    its resolved atoms give lDDT-Ca) or an A3M alignment (its query is the sequence). msa: an A3M
    for the chain (default: the input A3M, else a single-sequence MSA). The whole chain is
    predicted (no crop); data.max_msa MSA rows (the query first) and, for a model with the
    extra-MSA stack, data.max_extra_msa extra rows are sampled with a fixed seed; a model with the
    template stack gets the best data.max_templates hits (see _predict_templates). Returns {"output", "residues", "plddt", "lddt_ca" (None without a true structure)}.
    """
    from memtrain.data.protein_features import (
        Chain,
        msa_from_a3m,
        read_chains,
        single_sequence_msa,
    )
    from memtrain.data.sequences import read_a3m, ungap
    from memtrain.models.alphafold.spec import stack_data_kwargs

    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"{input_path}: no such input file")
    if input_path.suffix.lower() == ".a3m":
        records = read_a3m(input_path)
        if not records:
            raise DataFormatError(f"{input_path}: no sequences in the alignment")
        sequence = ungap(records[0][1])
        target = Chain(name=input_path.stem, sequence=sequence, backbone=np.zeros((len(sequence), 3, 3), np.float32),
                       backbone_mask=np.zeros(len(sequence), np.float32), atom_mask=np.zeros((len(sequence), 3), np.float32))
        msa = msa or input_path
    elif input_path.suffix.lower() in (".cif", ".mmcif"):
        chains = read_chains(input_path)
        if chain is not None:
            chains = [c for c in chains if c.name.rsplit("_", 1)[-1] == chain]
            if not chains:
                raise DataFormatError(f"{input_path}: no protein chain with author chain id {chain!r}")
        target = chains[0]
    else:
        raise DataFormatError(f"{input_path}: the input must be an mmCIF (.cif) or A3M (.a3m) file")
    rows, deletions = msa_from_a3m(msa, target.sequence) if msa is not None else single_sequence_msa(target.sequence)
    stacks = stack_data_kwargs(cfg)
    templates = _predict_templates(cfg, target) if stacks["max_templates"] else None
    inputs, targets = chain_features(target, rows, deletions, len(target.sequence), cfg.data.max_msa,
                                     max_extra_msa=stacks["max_extra_msa"], templates=templates,
                                     max_templates=stacks["max_templates"])
    device = next(model.parameters()).device
    inputs, targets = _to(inputs, device), _to(targets, device)
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    path = write_prediction(Path(output), outputs, inputs, targets)
    resolved = targets["atom14_gt_exists"][..., ATOM_CA].sum() > 0
    return {
        "output": path,
        "residues": len(target.sequence),
        "plddt": float(plddt_from_logits(outputs["lddt_logits"][0]).mean()),
        "lddt_ca": float(lddt_ca(outputs, targets)[0]) if resolved else None,
    }
