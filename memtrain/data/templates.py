"""Template features for AlphaFold 2 (Supplement 1.2.2-1.2.3 and Table 1): structures of
homologues aligned to the target, as atom37 coordinates, pseudo-beta positions and torsion angles.

DISCREPANCY: AlphaFold searches PDB70 with HHsearch and realigns hits with Kalign; this module
searches the chains of the data folder itself: every protein chain of another mmCIF entry is aligned to the target with Biopython's
PairwiseAligner (local, BLOSUM62, gap open -11, extend -1). A hit must be significant, an
E-value K m n exp(-lambda S) below 1e-5 for its score S and the lengths m, n (Karlin-Altschul with
BLAST's lambda = 0.267, K = 0.041 for these scores; HHsearch's own statistics in AlphaFold), and
pass AlphaFold's hit criteria (``templates._assess_hhsearch_hit``): the alignment covers more than
10% of the target, the template's aligned segment has at least 10 residues and is not a near-copy
of the target (a substring of it longer than 95% of the target). Hits are ranked by score; the
top 20 are kept (OpenFold's ``shuffle_top_k_prefiltered``).

DISCREPANCY: AlphaFold excludes templates released after the target (a date cutoff); we exclude
every chain of the target's own entry instead and apply no date filter.

For tests and ablations, ``self_template`` makes a template of the target's own structure with
the sequence masked: every residue type unknown (20) and only the atoms every residue type has
(N, CA, C, O, CB), so the template carries the fold but no side-chain identity.

Torsion angles follow AlphaFold's ``all_atom.atom37_to_torsion_angles`` (pre-omega, phi, psi,
chi1-4 as sin/cos, the pi-periodic alternatives and masks); pseudo-beta is CB, CA for glycine
(``pseudo_beta_fn``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from Bio.Align import PairwiseAligner, substitution_matrices

from memtrain.data.residue_constants import (
    ATOM_ORDER,
    CHI_ANGLES_MASK,
    CHI_ATOM_INDICES,
    CHI_PI_PERIODIC,
    NUM_ATOM_TYPES,
    RESTYPES,
)

UNK_ID = 20
GAP_ID = 21  # a target residue no template residue is aligned to
GLY_ID = RESTYPES.index("G")
NUM_TEMPLATE_AATYPES = 22  # 20 amino acids, unknown, gap
MAX_HITS = 20
MIN_ALIGN_RATIO = 0.1
MAX_SUBSEQUENCE_RATIO = 0.95
MIN_TEMPLATE_LENGTH = 10
MAX_EVALUE = 1e-5
_LAMBDA, _K = 0.267, 0.041  # Karlin-Altschul parameters of BLOSUM62 with gaps 11/1 (NCBI BLAST)
_MASKED_SEQUENCE_ATOMS = ("N", "CA", "C", "O", "CB")


@dataclass(eq=False)
class TemplateHit:
    """A template aligned to a target of N_res residues: per target residue, the aligned template
    residue's type (GAP_ID where none is aligned) and atoms (masks 0 there)."""

    name: str  # the template chain, e.g. '4zey_A' ('<target>_self' for a self-template)
    aatype: np.ndarray  # [N_res] int64, 0..21
    all_atom_positions: np.ndarray  # [N_res, 37, 3] float32, Angstrom
    all_atom_mask: np.ndarray  # [N_res, 37] float32
    score: float = 0.0
    identity: float = 0.0  # identical aligned residues / aligned residues


# -- geometry -----------------------------------------------------------------------------------


def pseudo_beta(aatype: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CB position (CA for glycine) and its mask: aatype [*], positions [*, 37, 3], mask [*, 37]
    -> ([*, 3], [*]) (AlphaFold's pseudo_beta_fn)."""
    is_gly = (aatype == GLY_ID)[..., None]
    ca, cb = ATOM_ORDER["CA"], ATOM_ORDER["CB"]
    pb = np.where(is_gly, positions[..., ca, :], positions[..., cb, :])
    pb_mask = np.where(is_gly[..., 0], mask[..., ca], mask[..., cb])
    return pb.astype(np.float32), pb_mask.astype(np.float32)


def _frame_coordinates(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The position of d in the frame with origin c, x axis along c - b and b's neighbour a in the
    x-y plane (AlphaFold's rigids_from_3_points(point_on_neg_x_axis=b, origin=c, point_on_xy_plane=a)).
    Each [*, 3] -> [*, 3]."""
    e0 = c - b
    e0 = e0 / np.sqrt(np.maximum((e0 * e0).sum(-1, keepdims=True), 1e-16))
    e1 = a - c
    e1 = e1 - e0 * (e1 * e0).sum(-1, keepdims=True)
    e1 = e1 / np.sqrt(np.maximum((e1 * e1).sum(-1, keepdims=True), 1e-16))
    e2 = np.cross(e0, e1)
    v = d - c
    return np.stack([(v * e0).sum(-1), (v * e1).sum(-1), (v * e2).sum(-1)], axis=-1)


def atom37_to_torsion_angles(
    aatype: np.ndarray, positions: np.ndarray, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """The 7 torsion angles of every residue (Supplement 1.8.1, Table 2; AlphaFold's
    ``atom37_to_torsion_angles`` without placeholders): pre-omega (CA_{i-1}, C_{i-1}, N, CA),
    phi (C_{i-1}, N, CA, C), psi (N, CA, C, O; then mirrored, since O stands for N_{i+1}),
    chi1-4 from each residue type's chi atoms.

    aatype [N] int (values above 20 count as unknown), positions [N, 37, 3], mask [N, 37] ->
    torsion_angles_sin_cos [N, 7, 2] (sin, cos), alt_torsion_angles_sin_cos [N, 7, 2] (pi-periodic
    chis rotated by pi), torsion_angles_mask [N, 7] (1 where all four atoms are present and the
    angle exists for the residue type). The first residue has no pre-omega or phi.
    """
    aatype = np.minimum(aatype, UNK_ID)
    pos = positions.astype(np.float64)
    n = aatype.shape[0]
    prev_pos = np.concatenate([np.zeros((1, NUM_ATOM_TYPES, 3)), pos[:-1]], axis=0)
    prev_mask = np.concatenate([np.zeros((1, NUM_ATOM_TYPES), mask.dtype), mask[:-1]], axis=0)
    i_n, i_ca, i_c, i_o = (ATOM_ORDER[a] for a in ("N", "CA", "C", "O"))
    pre_omega = np.stack([prev_pos[:, i_ca], prev_pos[:, i_c], pos[:, i_n], pos[:, i_ca]], axis=1)
    phi = np.stack([prev_pos[:, i_c], pos[:, i_n], pos[:, i_ca], pos[:, i_c]], axis=1)
    psi = np.stack([pos[:, i_n], pos[:, i_ca], pos[:, i_c], pos[:, i_o]], axis=1)
    pre_omega_mask = prev_mask[:, i_ca] * prev_mask[:, i_c] * mask[:, i_n] * mask[:, i_ca]
    phi_mask = prev_mask[:, i_c] * mask[:, i_n] * mask[:, i_ca] * mask[:, i_c]
    psi_mask = mask[:, i_n] * mask[:, i_ca] * mask[:, i_c] * mask[:, i_o]
    chi_indices = CHI_ATOM_INDICES[aatype]  # [N, 4, 4]
    rows = np.arange(n)[:, None, None]
    chis = pos[rows, chi_indices]  # [N, 4, 4, 3]
    chi_mask = CHI_ANGLES_MASK[aatype] * mask[rows, chi_indices].prod(-1)  # [N, 4]
    atoms = np.concatenate([pre_omega[:, None], phi[:, None], psi[:, None], chis], axis=1)  # [N, 7, 4, 3]
    torsion_mask = np.concatenate(
        [pre_omega_mask[:, None], phi_mask[:, None], psi_mask[:, None], chi_mask], axis=1
    ).astype(np.float32)
    local = _frame_coordinates(atoms[..., 0, :], atoms[..., 1, :], atoms[..., 2, :], atoms[..., 3, :])
    sin_cos = np.stack([local[..., 2], local[..., 1]], axis=-1)
    sin_cos = sin_cos / np.sqrt((sin_cos * sin_cos).sum(-1, keepdims=True) + 1e-8)
    sin_cos = sin_cos * np.array([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0])[None, :, None]
    mirror = np.concatenate([np.ones((n, 3)), 1.0 - 2.0 * CHI_PI_PERIODIC[aatype]], axis=-1)
    return {
        "torsion_angles_sin_cos": sin_cos.astype(np.float32),
        "alt_torsion_angles_sin_cos": (sin_cos * mirror[..., None]).astype(np.float32),
        "torsion_angles_mask": torsion_mask,
    }


# -- search ---------------------------------------------------------------------------------------


def _aligner() -> PairwiseAligner:
    aligner = PairwiseAligner()
    aligner.mode = "local"
    aligner.substitution_matrix = substitution_matrices.load("BLOSUM62")
    aligner.open_gap_score, aligner.extend_gap_score = -11.0, -1.0
    return aligner


def align_template(query: str, template: str, aligner: PairwiseAligner | None = None) -> tuple[np.ndarray, float]:
    """(mapping [len(query)] int64: the template residue aligned to each query residue or -1,
    alignment score) of the best local alignment."""
    aligner = aligner or _aligner()
    alignment = aligner.align(query, template)[0]
    mapping = np.full(len(query), -1, dtype=np.int64)
    for (q0, q1), (t0, t1) in zip(*alignment.aligned):
        mapping[q0:q1] = np.arange(t0, t1)
    return mapping, float(alignment.score)


def hit_from_mapping(name: str, query_len: int, mapping: np.ndarray, template, score: float = 0.0) -> TemplateHit:
    """The template features at the query's residues: `template` is a
    memtrain.data.protein_features.Chain with atom37 coordinates; `mapping` [query_len] gives the
    template residue of each query residue (-1: none)."""
    from memtrain.data.protein_features import sequence_to_aatype

    aligned = mapping >= 0
    t_index = np.where(aligned, mapping, 0)
    aatype = np.where(aligned, sequence_to_aatype(template.sequence)[t_index], GAP_ID)
    positions = np.where(aligned[:, None, None], template.all_atom_positions[t_index], 0.0).astype(np.float32)
    mask = np.where(aligned[:, None], template.all_atom_mask[t_index], 0.0).astype(np.float32)
    return TemplateHit(name, aatype.astype(np.int64), positions, mask, score)


def search_templates(target, candidates, max_hits: int = MAX_HITS) -> list[TemplateHit]:
    """Hits for `target` among `candidates` (Chains with atom37 coordinates), best score first
    (see the module docstring for the filters)."""
    aligner = _aligner()
    entry = target.name.split("_")[0]
    hits = []
    for chain in candidates:
        if chain.name.split("_")[0] == entry or chain.all_atom_mask is None or not chain.all_atom_mask.any():
            continue
        mapping, score = align_template(target.sequence, chain.sequence, aligner)
        aligned = mapping[mapping >= 0]
        evalue = _K * len(target.sequence) * len(chain.sequence) * np.exp(-_LAMBDA * score)
        if aligned.size == 0 or evalue >= MAX_EVALUE:
            continue
        segment = chain.sequence[aligned.min():aligned.max() + 1]
        duplicate = segment in target.sequence and len(segment) / len(target.sequence) > MAX_SUBSEQUENCE_RATIO
        if aligned.size / len(target.sequence) <= MIN_ALIGN_RATIO or duplicate or len(segment) < MIN_TEMPLATE_LENGTH:
            continue
        hit = hit_from_mapping(chain.name, len(target.sequence), mapping, chain, score)
        query_ids = np.array([RESTYPES.find(a) for a in target.sequence])
        hit.identity = float((hit.aatype[mapping >= 0] == query_ids[mapping >= 0]).mean())
        hits.append(hit)
    hits.sort(key=lambda h: -h.score)
    return hits[:max_hits]


def self_template(chain) -> TemplateHit:
    """The target's own structure with its sequence masked (see the module docstring)."""
    keep = np.zeros(NUM_ATOM_TYPES, dtype=np.float32)
    keep[[ATOM_ORDER[a] for a in _MASKED_SEQUENCE_ATOMS]] = 1.0
    mask = chain.all_atom_mask * keep
    return TemplateHit(
        f"{chain.name}_self",
        np.full(len(chain.sequence), UNK_ID, dtype=np.int64),
        chain.all_atom_positions * mask[..., None],
        mask,
        identity=0.0,
    )


# -- per-sample features --------------------------------------------------------------------------

TEMPLATE_KEYS = (
    "template_aatype", "template_all_atom_positions", "template_all_atom_mask", "template_pseudo_beta",
    "template_pseudo_beta_mask", "template_torsion_angles_sin_cos", "template_alt_torsion_angles_sin_cos",
    "template_torsion_angles_mask", "template_mask",
)


def hit_features(hit: TemplateHit) -> dict[str, np.ndarray]:
    """Per-residue features of one hit over the whole target ([N_res, ...]), before cropping."""
    pb, pb_mask = pseudo_beta(hit.aatype, hit.all_atom_positions, hit.all_atom_mask)
    torsions = atom37_to_torsion_angles(hit.aatype, hit.all_atom_positions, hit.all_atom_mask)
    return {
        "template_aatype": hit.aatype,
        "template_all_atom_positions": hit.all_atom_positions,
        "template_all_atom_mask": hit.all_atom_mask,
        "template_pseudo_beta": pb,
        "template_pseudo_beta_mask": pb_mask,
        **{f"template_{k}": v for k, v in torsions.items()},
    }


def select_templates(n_hits: int, max_templates: int, rng: np.random.Generator, subsample: bool) -> np.ndarray:
    """Indices of the hits a training sample uses. subsample (OpenFold's random_crop_to_size with
    subsample_templates): a random start k in 0..n_hits and a random order, then up to
    max_templates hits from position k (so 0..min(n_hits, max_templates) templates); otherwise the
    first max_templates hits."""
    if not subsample:
        return np.arange(min(n_hits, max_templates))
    start = int(rng.integers(0, n_hits + 1))
    order = rng.permutation(n_hits)
    return order[start:start + min(n_hits - start, max_templates)]


def crop_template_features(
    features: list[dict[str, np.ndarray]], window: slice, crop_size: int, max_templates: int
) -> dict[str, np.ndarray]:
    """Stack the chosen hits' features over the crop `window`, zero-padded to [max_templates,
    crop_size, ...]; template_mask [max_templates] is 1 for the real templates."""
    out = {}
    for key in TEMPLATE_KEYS[:-1]:
        shape = features[0][key].shape[1:] if features else _TEMPLATE_TRAILING[key]
        dtype = np.int64 if key == "template_aatype" else np.float32
        array = np.zeros((max_templates, crop_size, *shape), dtype=dtype)
        for t, f in enumerate(features):
            cropped = f[key][window]
            array[t, : cropped.shape[0]] = cropped
        out[key] = array
    out["template_mask"] = (np.arange(max_templates) < len(features)).astype(np.float32)
    return out


_TEMPLATE_TRAILING = {
    "template_aatype": (), "template_all_atom_positions": (NUM_ATOM_TYPES, 3), "template_all_atom_mask": (NUM_ATOM_TYPES,),
    "template_pseudo_beta": (3,), "template_pseudo_beta_mask": (), "template_torsion_angles_sin_cos": (7, 2),
    "template_alt_torsion_angles_sin_cos": (7, 2), "template_torsion_angles_mask": (7,),
}
