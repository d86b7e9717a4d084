"""AlphaFold-2-style training data: structures, MSAs and input features served as batches.

References are to the AlphaFold 2 supplementary information (Jumper et al. 2021, "Supplementary
information for: Highly accurate protein structure prediction with AlphaFold"), written "suppl.":

* 1.2.5 / 1.2.6: MSA sampling (the query row is always kept; the rest are sampled without
  replacement) and, in the original, clustering of the remaining rows around the samples.
* 1.2.7: BERT-style MSA masking (15% of positions; of those 10% a uniformly random amino acid,
  10% a residue drawn from the MSA profile, 10% unchanged, 70% the mask token).
* 1.2.9, Table 1: the input features ``target_feat`` [N_res, 22] and ``msa_feat`` [N_clust, N_res,
  49] (23 one-hot MSA classes, has_deletion, deletion_value, 23 cluster-profile classes and
  deletion_mean).
* 1.2.8: cropping to a fixed number of residues, and padding so that samples batch together.

Where the original pipeline's code says something the supplement leaves open we follow it
(``alphafold/model/tf/data_transforms.py`` and ``alphafold/data/parsers.py``) and say so.

Pipeline of one sample (:func:`make_features`): crop residues -> sample MSA rows -> BERT-mask the
sampled rows -> build features -> pad to (max_msa, crop_size).

Residue alphabet (AlphaFold's ``restype_order``): 0..19 = ``ARNDCQEGHILKMFPSTWYV``, 20 = unknown
``X``; the MSA alphabet adds 21 = gap ``-`` and the masked MSA adds 22 = the BERT mask token.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from Bio.Data.PDBData import protein_letters_3to1_extended
from Bio.PDB import MMCIFParser
from Bio.PDB.MMCIF2Dict import MMCIF2Dict
from Bio.PDB.PDBExceptions import PDBConstructionException

from memtrain.config.errors import as_enum
from memtrain.config.schema import TemplateSource
from memtrain.data.cache import cached_records
from memtrain.data.errors import DataFormatError, DataNotFoundError
from memtrain.data.mmcif import PROTEIN_POLYMER_TYPE
from memtrain.data.residue_constants import ATOM_ORDER, ATOM_RENAMES, NUM_ATOM_TYPES
from memtrain.data.sequences import DATA_DIR_ENV, default_protein_root, read_a3m
from memtrain.protein import residue_constants
from memtrain.data.templates import (
    TEMPLATE_KEYS,
    TemplateHit,
    crop_template_features,
    hit_features,
    search_templates,
    select_templates,
    self_template,
)

RESTYPES = "ARNDCQEGHILKMFPSTWYV"
RESTYPE_ORDER = {aa: i for i, aa in enumerate(RESTYPES)}
UNK_ID = 20  # 'X': any residue that is not one of the 20 standard amino acids
GAP_ID = 21  # '-' in an MSA
MASK_ID = 22  # the BERT mask token of the masked MSA
NUM_AATYPES = 21  # aatype classes (20 + X)
NUM_MSA_CLASSES = 22  # MSA classes before masking (20 + X + gap)
NUM_MASKED_MSA_CLASSES = 23  # after masking (+ mask token)
TARGET_FEAT_DIM = 22
MSA_FEAT_DIM = 49

BACKBONE_ATOMS = ("N", "CA", "C")

# MSA letters that are not one of the 20 standard amino acids, as AlphaFold's
# residue_constants.HHBLITS_AA_TO_ID maps them: B (D or N) -> D, Z (E or Q) -> E, U (selenocysteine)
# -> C; J, O, X and anything else -> X.
_MSA_AMBIGUOUS = {"B": RESTYPE_ORDER["D"], "Z": RESTYPE_ORDER["E"], "U": RESTYPE_ORDER["C"]}

# Required _pdbx_poly_seq_scheme items (the per-chain SEQRES with label and author chain ids).
_SCHEME = "_pdbx_poly_seq_scheme."
_SCHEME_ITEMS = ("asym_id", "entity_id", "seq_id", "mon_id", "pdb_strand_id")


# --------------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Chain:
    """One protein chain of the first model of an mmCIF entry.

    ``name`` is ``<pdb id>_<author chain id>`` (e.g. ``2q2k_A``), the name its A3M is stored under.
    ``sequence`` is the full SEQRES (one letter per residue, standard 20 or ``X``). Row i of
    ``backbone`` holds the N, CA and C coordinates (Angstrom) of SEQRES residue i (label_seq_id
    i + 1); ``atom_mask[i, k]`` says whether atom k was observed and ``backbone_mask[i]`` whether
    all three were (missing atoms have coordinates 0).
    """

    name: str
    sequence: str
    backbone: np.ndarray  # [N_res, 3, 3] float32, atoms N, CA, C
    backbone_mask: np.ndarray  # [N_res] float32, 1 where N, CA and C are all observed
    atom_mask: np.ndarray = field(repr=False)  # [N_res, 3] float32, per backbone atom
    label_asym_id: str = ""  # the mmCIF (label) chain id, e.g. 'B' for 2q2k chain A
    # every heavy atom in the atom14 layout of the residue's type (residue_constants.GT_ATOM14_NAMES;
    # unknown residues: N, CA, C, O); None for a chain built without them
    atom14: np.ndarray | None = field(default=None, repr=False)  # [N_res, 14, 3] float32, Angstrom
    atom14_mask: np.ndarray | None = field(default=None, repr=False)  # [N_res, 14] float32
    resolution: float = 0.0  # Angstrom; 0 where the file states none (NMR), as AlphaFold's parser

    @functools.cached_property
    def torsion_angles(self) -> dict[str, np.ndarray]:
        """The 7 torsion angles of every residue (sin, cos) [N_res, 7, 2], their pi-shifted
        alternatives and mask [N_res, 7] (memtrain.protein.all_atom.atom14_torsion_angles),
        computed over the whole chain, so a crop's first residue keeps its omega and phi."""
        from memtrain.protein.all_atom import atom14_torsion_angles

        if self.atom14 is None:
            raise ValueError(f"{self.name}: no atom14 coordinates to compute torsion angles from")
        aatype = torch.from_numpy(sequence_to_aatype(self.sequence))
        out = atom14_torsion_angles(aatype, torch.from_numpy(self.atom14), torch.from_numpy(self.atom14_mask))
        return {k: v.numpy().astype(np.float32) for k, v in out.items()}
    # every heavy atom in AlphaFold's atom37 layout (memtrain.data.residue_constants), for templates
    all_atom_positions: np.ndarray | None = field(default=None, repr=False)  # [N_res, 37, 3] float32
    all_atom_mask: np.ndarray | None = field(default=None, repr=False)  # [N_res, 37] float32

    @property
    def num_resolved(self) -> int:
        return int(self.backbone_mask.sum())

    def __len__(self) -> int:
        return len(self.sequence)


def one_letter(mon_id: str) -> str:
    """One-letter code of a 3-letter monomer id: standard 20, or 'X' for anything else.

    Modified residues map to their parent where Biopython's ``protein_letters_3to1_extended``
    knows it (MSE -> M, as AlphaFold's mmcif_parsing does via SCOPData); the result is 'X' unless
    it is one of the 20 standard amino acids.
    """
    letter = protein_letters_3to1_extended.get(mon_id.upper(), "X")
    return letter if letter in RESTYPE_ORDER else "X"


def _check_loops(cif: dict[str, list[str]], path: Path) -> None:
    """Every item must have a value and all items of a category the same number of values: a
    file cut off inside a loop_ has a short last column or a loop without values, which
    Biopython's MMCIF2Dict does not report. (A cut exactly between two rows of a loop cannot be
    seen; in PDB files _pdbx_poly_seq_scheme follows _atom_site, so a cut anywhere in the
    coordinates still fails, for the missing SEQRES.)"""
    lengths: dict[str, dict[int, str]] = {}
    for key, values in cif.items():
        if key.startswith("_") and "." in key:
            if not values:
                raise DataFormatError(f"{path}: truncated or corrupt: item {key} has no values")
            lengths.setdefault(key.split(".", 1)[0], {}).setdefault(len(values), key)
    for category, by_length in lengths.items():
        if len(by_length) > 1:
            (n1, k1), (n2, k2) = sorted(by_length.items())[:2]
            raise DataFormatError(
                f"{path}: truncated or corrupt: category {category} has items with different "
                f"numbers of values ({k1}: {n1}, {k2}: {n2})"
            )


def _seqres_by_chain(
    cif: dict[str, list[str]], path: Path
) -> dict[str, tuple[str, str, list[tuple[str, set[str]]]]]:
    """``{label_asym_id: (author chain id, entity id, residues)}`` for the protein chains, from
    ``_pdbx_poly_seq_scheme`` (checked against ``_entity_poly_seq``).

    ``residues[i]`` describes label_seq_id i + 1 as ``(first monomer id, all monomer ids)``; there
    is more than one only for microheterogeneity, and the first goes into the sequence (as in
    AlphaFold's mmcif_parsing).
    """
    if "_entity_poly.entity_id" not in cif:
        raise DataFormatError(f"{path}: no _entity_poly category (no polymer chains)")
    types = dict(zip(cif["_entity_poly.entity_id"], cif.get("_entity_poly.type", [])))
    proteins = {e for e, t in types.items() if t == PROTEIN_POLYMER_TYPE}
    if not proteins:
        raise DataFormatError(
            f"{path}: no protein chain (no _entity_poly of type {PROTEIN_POLYMER_TYPE})"
        )
    missing = [_SCHEME + item for item in _SCHEME_ITEMS if _SCHEME + item not in cif]
    if missing:
        raise DataFormatError(
            f"{path}: truncated file or unsupported mmCIF: no {', '.join(missing)}"
        )

    chains: dict[str, tuple[str, str, list[tuple[str, list[str]]]]] = {}
    rows = zip(*(cif[_SCHEME + item] for item in _SCHEME_ITEMS))
    for asym_id, entity_id, seq_id, mon_id, strand in rows:
        if entity_id not in proteins:
            continue
        _, _, residues = chains.setdefault(asym_id, (strand, entity_id, []))
        if residues and residues[-1][0] == seq_id:
            residues[-1][1].append(mon_id)  # microheterogeneity: same position, another monomer
        else:
            residues.append((seq_id, [mon_id]))

    entity_seqs: dict[str, list[str]] = {}
    if "_entity_poly_seq.entity_id" in cif:
        last: dict[str, str] = {}
        for entity_id, num, mon_id in zip(
            cif["_entity_poly_seq.entity_id"],
            cif["_entity_poly_seq.num"],
            cif["_entity_poly_seq.mon_id"],
        ):
            if last.get(entity_id) != num:
                entity_seqs.setdefault(entity_id, []).append(mon_id)
                last[entity_id] = num

    result: dict[str, tuple[str, str, list[tuple[str, set[str]]]]] = {}
    for asym_id, (strand, entity_id, residues) in chains.items():
        seq_ids = [seq_id for seq_id, _ in residues]
        if seq_ids != [str(i) for i in range(1, len(residues) + 1)]:
            raise DataFormatError(
                f"{path}: chain {strand} (label {asym_id}): _pdbx_poly_seq_scheme.seq_id is not "
                f"1, 2, ..., {len(residues)}"
            )
        firsts = [mons[0] for _, mons in residues]
        if entity_id in entity_seqs and entity_seqs[entity_id] != firsts:
            raise DataFormatError(
                f"{path}: chain {strand} (label {asym_id}): _pdbx_poly_seq_scheme and "
                f"_entity_poly_seq disagree on the sequence of entity {entity_id}"
            )
        result[asym_id] = (strand, entity_id, [(mons[0], set(mons)) for _, mons in residues])
    return result


def _read_atom14(residue, letter: str, positions: np.ndarray, mask: np.ndarray) -> None:
    """Fill one residue's atom14 row (positions [14, 3], mask [14]) from a Biopython residue, by
    the atom names of its sequence letter's type (residue_constants.GT_ATOM14_NAMES). Selenium of
    selenomethionine (MSE, read as M) is taken as its sulphur SD, as AlphaFold's parser does;
    hydrogens, OXT and atoms of other names are not kept."""
    resname = residue_constants.RESNAMES[RESTYPE_ORDER.get(letter, UNK_ID)]
    selenomethionine = residue.get_resname() == "MSE"
    for slot, atom_name in enumerate(residue_constants.GT_ATOM14_NAMES[resname]):
        source = "SE" if selenomethionine and atom_name == "SD" else atom_name
        if source in residue:
            positions[slot] = residue[source].get_coord()
            mask[slot] = 1.0


# Where mmCIF files state the resolution (X-ray, then electron microscopy, then the reflections).
_RESOLUTION_ITEMS = ("_refine.ls_d_res_high", "_em_3d_reconstruction.resolution", "_reflns.d_resolution_high")


def _resolution(cif: dict[str, list[str]]) -> float:
    """The structure's resolution in Angstrom, or 0.0 where none is stated (AlphaFold's parser)."""
    for item in _RESOLUTION_ITEMS:
        for value in cif.get(item, []):
            try:
                return float(value)
            except ValueError:  # '?' or '.'
                continue
    return 0.0


def read_chains(path: str | Path) -> list[Chain]:
    """The protein chains of the first model of an mmCIF file, in ``_pdbx_poly_seq_scheme`` order.

    The sequence is the SEQRES of the chain. Coordinates are placed by the mmCIF *label*
    numbering (``label_seq_id`` = 1-based SEQRES position; Biopython's ``MMCIFParser(
    auth_residues=False)``), and every observed residue's name is checked against the SEQRES
    monomer at its position, so unobserved residues leave masked gaps instead of shifting the
    alignment. For alternate locations Biopython keeps the highest-occupancy one.

    Raises :class:`DataFormatError` naming the file for files that cannot be parsed, are cut off,
    have no protein chain or no protein backbone coordinates; a missing file raises
    FileNotFoundError.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not a UTF-8 text (mmCIF) file ({exc.reason})") from exc
    try:
        cif = MMCIF2Dict(io.StringIO(text))
    except ValueError as exc:  # "Empty file.", "... must begin with a 'data_' directive."
        raise DataFormatError(f"{path}: not a parseable mmCIF file: {exc}") from exc
    _check_loops(cif, path)
    seqres = _seqres_by_chain(cif, path)

    parser = MMCIFParser(QUIET=True, auth_chains=False, auth_residues=False)
    try:
        structure = parser.get_structure(path.stem, io.StringIO(text))
    except KeyError as exc:  # a required _atom_site item is missing
        raise DataFormatError(f"{path}: no atom coordinates (missing mmCIF item {exc})") from exc
    except (ValueError, IndexError, PDBConstructionException) as exc:
        raise DataFormatError(f"{path}: cannot build the structure: {exc}") from exc
    models = list(structure)
    if not models:
        raise DataFormatError(f"{path}: no atom coordinates (no model)")
    model = models[0]

    chains: list[Chain] = []
    resolution = _resolution(cif)
    for asym_id, (strand, _, residues) in seqres.items():
        n_res = len(residues)
        coords = np.zeros((n_res, 3, 3), dtype=np.float32)
        atom_mask = np.zeros((n_res, 3), dtype=np.float32)
        atom14 = np.zeros((n_res, 14, 3), dtype=np.float32)
        atom14_mask = np.zeros((n_res, 14), dtype=np.float32)
        sequence = "".join(one_letter(mon) for mon, _ in residues)
        all_pos = np.zeros((n_res, NUM_ATOM_TYPES, 3), dtype=np.float32)
        all_mask = np.zeros((n_res, NUM_ATOM_TYPES), dtype=np.float32)
        if asym_id in model:
            for residue in model[asym_id]:
                position = residue.id[1] - 1
                if not 0 <= position < n_res:
                    raise DataFormatError(
                        f"{path}: chain {strand}: residue label_seq_id {residue.id[1]} is outside "
                        f"the SEQRES (1..{n_res})"
                    )
                if residue.get_resname() not in residues[position][1]:
                    raise DataFormatError(
                        f"{path}: chain {strand}: observed residue {residue.get_resname()} at "
                        f"label_seq_id {position + 1} but the SEQRES has {residues[position][0]}"
                    )
                for k, atom_name in enumerate(BACKBONE_ATOMS):
                    if atom_name in residue:
                        coords[position, k] = residue[atom_name].get_coord()
                        atom_mask[position, k] = 1.0
                _read_atom14(residue, sequence[position], atom14[position], atom14_mask[position])
                for atom in residue:
                    name = ATOM_RENAMES.get((residue.get_resname(), atom.get_id()), atom.get_id())
                    if name in ATOM_ORDER:
                        all_pos[position, ATOM_ORDER[name]] = atom.get_coord()
                        all_mask[position, ATOM_ORDER[name]] = 1.0
        chains.append(
            Chain(
                name=f"{path.stem.lower()}_{strand}",
                sequence=sequence,
                backbone=coords,
                backbone_mask=atom_mask.min(axis=1),
                atom_mask=atom_mask,
                label_asym_id=asym_id,
                atom14=atom14,
                atom14_mask=atom14_mask,
                resolution=resolution,
                all_atom_positions=all_pos,
                all_atom_mask=all_mask,
            )
        )
    if not any(chain.atom_mask.any() for chain in chains):
        raise DataFormatError(f"{path}: no backbone coordinates for any protein chain in model 1")
    return chains


# --------------------------------------------------------------------------------------------
# MSAs
# --------------------------------------------------------------------------------------------


def sequence_to_aatype(sequence: str) -> np.ndarray:
    """Residue type ids (0..19 standard in AlphaFold's order, 20 for anything else)."""
    return np.array([RESTYPE_ORDER.get(aa, UNK_ID) for aa in sequence.upper()], dtype=np.int64)


def _msa_row_ids(row: str) -> list[int]:
    return [
        GAP_ID if c == "-" else RESTYPE_ORDER.get(c, _MSA_AMBIGUOUS.get(c, UNK_ID)) for c in row
    ]


def single_sequence_msa(sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """The MSA of a chain without an alignment: the query alone, no deletions."""
    msa = sequence_to_aatype(sequence)[None, :]
    return msa, np.zeros(msa.shape, dtype=np.float32)


def msa_from_a3m(
    path: str | Path, query_sequence: str, deduplicate: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Read an A3M alignment as ``(msa [N_seq, N_res] int64, deletion_matrix [N_seq, N_res]
    float32)``.

    Lowercase letters (insertions relative to the query) are removed; as in AlphaFold's
    ``parsers.parse_a3m``, ``deletion_matrix[s, i]`` is the number of lowercase letters directly
    before aligned column i in row s (insertions after the last column are dropped). '.' (an
    A2M insert-state gap) is removed without counting. Letters map to AlphaFold's MSA alphabet
    (0..19 standard, B->D, Z->E, U->C, other letters -> 20, '-' -> 21). With ``deduplicate``
    (AlphaFold's ``make_msa_features``) a row identical to an earlier one (after removing
    insertions) is dropped. The first row must be the query sequence itself.
    """
    path = Path(path)
    records = read_a3m(path)
    if not records:
        raise DataFormatError(f"{path}: no sequences in the alignment")
    query = query_sequence.upper()
    rows: list[list[int]] = []
    deletions: list[list[int]] = []
    seen: set[str] = set()
    for number, (header, row) in enumerate(records):
        aligned: list[str] = []
        counts: list[int] = []
        run = 0
        for char in row:
            if char.islower():
                run += 1
            elif char != ".":
                aligned.append(char)
                counts.append(run)
                run = 0
        aligned_row = "".join(aligned)
        if number == 0 and aligned_row != query:
            raise DataFormatError(
                f"{path}: the first (query) record {header!r} is not the query sequence: "
                f"expected {len(query)} residues {query[:30]}..., found {len(aligned_row)} "
                f"aligned characters {aligned_row[:30]}..."
            )
        if len(aligned) != len(query):
            raise DataFormatError(
                f"{path}: record {number + 1} ({header!r}) has {len(aligned)} aligned columns, "
                f"the query has {len(query)}"
            )
        if deduplicate:
            if aligned_row in seen:
                continue
            seen.add(aligned_row)
        rows.append(_msa_row_ids(aligned_row))
        deletions.append(counts)
    return np.array(rows, dtype=np.int64), np.array(deletions, dtype=np.float32)


def find_a3m(alignments_dir: str | Path, chain_name: str) -> Path | None:
    """``<alignments_dir>/<pdbid>_<chain>.a3m`` if it exists."""
    candidate = Path(alignments_dir) / f"{chain_name}.a3m"
    return candidate if candidate.is_file() else None


def msa_profile(msa: np.ndarray, num_classes: int = NUM_MSA_CLASSES) -> np.ndarray:
    """Per-column class frequencies ``[N_res, num_classes]`` of an MSA ``[N_seq, N_res]``
    (AlphaFold's ``hhblits_profile``: the mean one-hot over all rows)."""
    counts = np.zeros((msa.shape[1], num_classes), dtype=np.float64)
    np.add.at(counts, (np.broadcast_to(np.arange(msa.shape[1]), msa.shape), msa), 1.0)
    return counts / max(msa.shape[0], 1)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def make_masked_msa(
    msa: np.ndarray,
    profile: np.ndarray,
    rng: np.random.Generator,
    replace_fraction: float = 0.15,
    uniform_prob: float = 0.1,
    profile_prob: float = 0.1,
    same_prob: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT-style masking of an MSA (suppl. 1.2.7; AlphaFold's ``make_masked_msa``).

    Each position of ``msa`` [S, N] is selected with probability ``replace_fraction``; a selected
    position becomes, with probability ``uniform_prob`` a uniformly random standard amino acid
    (0..19), with ``profile_prob`` a class drawn from ``profile[column]`` (a [N, 22] distribution),
    with ``same_prob`` its own value, and otherwise (0.7 by default) the mask token 22. As in
    AlphaFold, every position (gaps and the query row included) can be selected.
    Returns ``(masked msa [S, N] int64 in 0..22, bert_mask [S, N] float32)``.
    """
    if msa.ndim != 2 or profile.shape[0] != msa.shape[1]:
        raise ValueError(f"msa {msa.shape} and profile {profile.shape} do not match")
    selected = rng.random(msa.shape) < replace_fraction
    rows, cols = np.nonzero(selected)
    choice = rng.random(rows.size)
    uniform_aa = rng.integers(0, 20, size=rows.size)
    cdf = np.cumsum(profile[cols], axis=1)
    cdf /= cdf[:, -1:].clip(min=1e-12)
    from_profile = (rng.random((rows.size, 1)) >= cdf).sum(axis=1)
    from_profile = np.minimum(from_profile, profile.shape[1] - 1)  # guards against rounding
    current = msa[rows, cols]
    replacement = np.select(
        [
            choice < uniform_prob,
            choice < uniform_prob + profile_prob,
            choice < uniform_prob + profile_prob + same_prob,
        ],
        [uniform_aa, from_profile, current],
        default=MASK_ID,
    )
    masked = msa.astype(np.int64, copy=True)
    masked[rows, cols] = replacement
    return masked, selected.astype(np.float32)


def _deletion_transform(deletions: np.ndarray) -> np.ndarray:
    """AlphaFold's deletion_value: 2/pi * arctan(d / 3), in [0, 1)."""
    return (2.0 / np.pi) * np.arctan(deletions / 3.0)


def _pad(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-pad ``array`` at the end of each dimension to ``shape``."""
    return np.pad(array, [(0, target - size) for size, target in zip(array.shape, shape)])


def make_features(
    chain: Chain,
    msa: np.ndarray,
    deletion_matrix: np.ndarray,
    crop_size: int,
    max_msa: int,
    rng: np.random.Generator,
    profile: np.ndarray | None = None,
    crop_start: int | None = None,
    max_extra_msa: int = 0,
    templates: list[dict[str, np.ndarray]] | None = None,
    max_templates: int = 0,
) -> dict[str, np.ndarray]:
    """The features of one training sample of ``chain``, cropped and padded to fixed shapes.

    ``msa``/``deletion_matrix`` [N_seq, N_res] are the chain's full alignment (row 0 the query)
    and ``profile`` [N_res, 22] its MSA profile (computed from ``msa`` if not given).

    1. Crop (suppl. 1.2.8): a contiguous window of ``crop_size`` residues at a uniformly random
       start (or at ``crop_start``, for evaluation); shorter chains are kept whole.
    2. MSA sampling (suppl. 1.2.5): the query row always first, then ``max_msa - 1`` of the
       other rows drawn without replacement (in random order).
    3. BERT masking of the sampled rows (suppl. 1.2.7), see :func:`make_masked_msa`; the profile
       it draws from is that of the full alignment (AlphaFold's ``hhblits_profile``).
    4. Features (suppl. 1.2.9, Table 1):
       ``target_feat`` [N, 22]: column 0 is AlphaFold's ``has_break`` (``between_segment_
       residues``), always 0 for a single chain; columns 1..21 the one-hot of aatype over 21
       classes (20 amino acids + X), the layout of AlphaFold's ``make_msa_feat``.
       ``msa_feat`` [S, N, 49] = one-hot(masked msa, 23) | has_deletion = min(d, 1) |
       deletion_value = 2/pi arctan(d/3) | profile (23) | 2/pi arctan(deletion_mean/3).
       DISCREPANCY with the supplement: AlphaFold clusters the non-sampled rows around the sampled
       ones and uses each cluster's own profile and deletion mean (1.2.6); we do not cluster, and
       every row gets the profile (over the 23 masked classes) and the mean deletion count of
       all sampled rows. The profile is taken over the *masked* rows, as AlphaFold's
       cluster_profile is, so it does not leak the BERT targets.
    5. Padding to ``crop_size`` residues and ``max_msa`` rows with zeros (masks 0), as in
       AlphaFold's ``make_fixed_size``.

    6. With ``max_extra_msa`` > 0, the extra MSA (suppl. 1.2.7 and 1.7.2): the rows not sampled
       in step 2, in the same random order, up to ``max_extra_msa`` of them (AlphaFold's
       ``sample_msa`` keeps them and ``crop_extra_msa`` takes a random subset), not BERT-masked:
       ``extra_msa`` [E, N] (0..21), ``extra_has_deletion``, ``extra_deletion_value``,
       ``extra_msa_mask``, padded to ``max_extra_msa`` rows.
    7. With ``max_templates`` > 0, ``templates`` (the chosen hits' per-residue features over the
       whole chain, memtrain.data.templates.hit_features) cropped to the window and padded to
       ``max_templates`` (keys memtrain.data.templates.TEMPLATE_KEYS, ``template_mask`` [T]).

    Returns numpy arrays: aatype, residue_index (0-based SEQRES position, kept through the crop),
    seq_mask, target_feat, msa_feat, msa_mask, true_msa (0..21, the sampled rows before masking),
    bert_mask, backbone_coords [N, 3, 3] (N, CA, C), backbone_mask, the all-atom targets
    (suppl. 1.8-1.9): atom14_gt_positions [N, 14, 3], atom14_gt_exists [N, 14],
    torsion_angles_sin_cos and alt_torsion_angles_sin_cos [N, 7, 2], torsion_angles_mask [N, 7],
    resolution [], and the extra-MSA and template features when asked for.
    """
    if crop_size < 1 or max_msa < 1:
        raise ValueError(f"crop_size and max_msa must be positive, got {crop_size}, {max_msa}")
    n_res = len(chain.sequence)
    if msa.shape != deletion_matrix.shape or msa.shape[1] != n_res:
        raise ValueError(
            f"{chain.name}: msa {msa.shape} / deletion matrix {deletion_matrix.shape} do not fit "
            f"a chain of {n_res} residues"
        )
    if profile is None:
        profile = msa_profile(msa)

    # 1. crop
    start = int(rng.integers(0, n_res - crop_size + 1)) if n_res > crop_size else 0
    if crop_start is not None:
        if not 0 <= crop_start <= max(n_res - crop_size, 0):
            raise ValueError(f"{chain.name}: crop_start {crop_start} outside 0..{max(n_res - crop_size, 0)}")
        start = crop_start
    window = slice(start, start + min(crop_size, n_res))
    n = window.stop - window.start
    # 2. sample MSA rows
    order = rng.permutation(np.arange(1, msa.shape[0]))
    rest, extra_rows = order[: max_msa - 1], order[max_msa - 1 : max_msa - 1 + max_extra_msa]
    rows = np.concatenate([[0], rest]).astype(np.int64)
    s = rows.size
    true_msa = msa[rows, window]
    deletions = deletion_matrix[rows, window]
    # 3. BERT masking
    masked, bert_mask = make_masked_msa(true_msa, profile[window], rng)
    # 4. features
    aatype = sequence_to_aatype(chain.sequence[window])
    target_feat = np.concatenate(
        [np.zeros((n, 1), np.float32), np.eye(NUM_AATYPES, dtype=np.float32)[aatype]], axis=1
    )
    masked_1hot = np.eye(NUM_MASKED_MSA_CLASSES, dtype=np.float32)[masked]
    profile_feat = masked_1hot.mean(axis=0)  # [n, 23]
    deletion_mean = deletions.mean(axis=0)  # [n]
    msa_feat = np.concatenate(
        [
            masked_1hot,
            np.minimum(deletions, 1.0)[..., None],
            _deletion_transform(deletions)[..., None],
            np.broadcast_to(profile_feat, (s, n, NUM_MASKED_MSA_CLASSES)),
            np.broadcast_to(_deletion_transform(deletion_mean)[:, None], (s, n, 1)),
        ],
        axis=-1,
    ).astype(np.float32)
    # 5. pad
    L, S = crop_size, max_msa
    extra: dict[str, np.ndarray] = {}
    if max_extra_msa > 0:  # 6. extra MSA
        extra_deletions = deletion_matrix[extra_rows, window]
        extra = {
            "extra_msa": _pad(msa[extra_rows, window].astype(np.int64), (max_extra_msa, L)),
            "extra_has_deletion": _pad(np.minimum(extra_deletions, 1.0).astype(np.float32), (max_extra_msa, L)),
            "extra_deletion_value": _pad(_deletion_transform(extra_deletions).astype(np.float32), (max_extra_msa, L)),
            "extra_msa_mask": _pad(np.ones((extra_rows.size, n), np.float32), (max_extra_msa, L)),
        }
    if max_templates > 0:  # 7. templates
        extra.update(crop_template_features(templates or [], window, L, max_templates))
    return extra | {
        "aatype": _pad(aatype, (L,)),
        "residue_index": _pad(np.arange(window.start, window.stop, dtype=np.int64), (L,)),
        "seq_mask": _pad(np.ones(n, np.float32), (L,)),
        "target_feat": _pad(target_feat, (L, TARGET_FEAT_DIM)),
        "msa_feat": _pad(msa_feat, (S, L, MSA_FEAT_DIM)),
        "msa_mask": _pad(np.ones((s, n), np.float32), (S, L)),
        "true_msa": _pad(true_msa.astype(np.int64), (S, L)),
        "bert_mask": _pad(bert_mask, (S, L)),
        "backbone_coords": _pad(chain.backbone[window], (L, 3, 3)),
        "backbone_mask": _pad(chain.backbone_mask[window].astype(np.float32), (L,)),
        **_all_atom_features(chain, window, L),
    }


def _all_atom_features(chain: Chain, window: slice, crop_size: int) -> dict[str, np.ndarray]:
    """The all-atom targets of a crop, padded to crop_size residues: atom14_gt_positions [L, 14, 3],
    atom14_gt_exists [L, 14], torsion_angles_sin_cos and alt_torsion_angles_sin_cos [L, 7, 2],
    torsion_angles_mask [L, 7] (computed over the whole chain) and the resolution [] (Angstrom).
    A chain without atom14 coordinates gets its backbone N, CA, C there and no torsion angles."""
    n, L = window.stop - window.start, crop_size
    if chain.atom14 is None:
        atom14 = np.zeros((n, 14, 3), np.float32)
        atom14_mask = np.zeros((n, 14), np.float32)
        atom14[:, :3], atom14_mask[:, :3] = chain.backbone[window], chain.atom_mask[window]
        torsions = {
            "torsion_angles_sin_cos": np.zeros((n, 7, 2), np.float32),
            "alt_torsion_angles_sin_cos": np.zeros((n, 7, 2), np.float32),
            "torsion_angles_mask": np.zeros((n, 7), np.float32),
        }
    else:
        atom14, atom14_mask = chain.atom14[window], chain.atom14_mask[window]
        torsions = {k: v[window] for k, v in chain.torsion_angles.items()}
    return {
        "atom14_gt_positions": _pad(atom14, (L, 14, 3)),
        "atom14_gt_exists": _pad(atom14_mask, (L, 14)),
        **{k: _pad(v, (L,) + v.shape[1:]) for k, v in torsions.items()},
        "resolution": np.array(chain.resolution, np.float32),
    }


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------

INPUT_KEYS = ("aatype", "residue_index", "seq_mask", "target_feat", "msa_feat", "msa_mask")
TARGET_KEYS = (
    "true_msa", "bert_mask", "backbone_coords", "backbone_mask", "seq_mask", "msa_mask",
    "aatype", "atom14_gt_positions", "atom14_gt_exists", "torsion_angles_sin_cos",
    "alt_torsion_angles_sin_cos", "torsion_angles_mask", "resolution",
)
# model inputs when data.max_extra_msa / data.max_templates are above 0
EXTRA_MSA_KEYS = ("extra_msa", "extra_has_deletion", "extra_deletion_value", "extra_msa_mask")
_LONG_KEYS = {"aatype", "residue_index", "true_msa", "extra_msa", "template_aatype"}


def default_structure_root() -> Path:
    """The folder holding ``mmcif/`` and ``alignments/``: the protein data root."""
    return default_protein_root()


@dataclass(eq=False)
class _Entry:
    chain: Chain
    msa: np.ndarray
    deletion_matrix: np.ndarray
    profile: np.ndarray
    msa_source: Path | None


_CHAIN_PARSERS = ("memtrain.data.protein_features", "memtrain.data.mmcif", "memtrain.data.residue_constants")


class ProteinStructureBatches:
    """Deterministic micro-batches of AlphaFold-style features for the chains under ``root``.

    The chains are those of every ``root/mmcif/*.cif`` (files in sorted order, chains in file
    order) with at least ``min_resolved`` residues whose N, CA and C are all observed, named in
    ``only`` (when given) and not in ``exclude`` (chain names ``<pdb id>_<author chain>``, e.g. held
    out for evaluation); each uses
    ``root/alignments/<pdbid>_<chain>.a3m`` if present, else a single-sequence MSA. All files are
    parsed once, here.

    Samples form an endless stream: sample k belongs to epoch ``k // num_chains``, whose chain
    order is a permutation seeded by ``(seed, epoch)``; its crop, MSA sampling and masking use a
    generator seeded by ``(seed, k)``. Sample j of ``batch(i, B)`` is sample ``i * B + j``, so a
    batch is a pure function of ``(seed, i, B)`` with no loader state.

    ``max_extra_msa`` > 0 adds the extra MSA (the alignment rows not sampled as the MSA).
    ``max_templates`` > 0 adds templates (memtrain.data.templates): with ``template_source``
    "homologues", the hits among the other entries' chains, a random subset per sample (drawn
    from a generator seeded by ``(seed, 2, k)``); with "self", the chain's own structure with its
    sequence masked, in every sample (for tests: it gives the model the answer).
    """

    def __init__(
        self,
        root: str | Path,
        crop_size: int,
        max_msa: int,
        seed: int,
        min_resolved: int = 16,
        only: Collection[str] | None = None,
        exclude: Collection[str] = (),
        max_extra_msa: int = 0,
        max_templates: int = 0,
        template_source: TemplateSource | str = TemplateSource.homologues,
    ) -> None:
        if crop_size < 1 or max_msa < 1:
            raise ValueError(f"crop_size and max_msa must be positive, got {crop_size}, {max_msa}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.root = Path(root)
        self.crop_size, self.max_msa, self.seed = crop_size, max_msa, seed
        self.min_resolved = min_resolved
        if max_extra_msa < 0 or max_templates < 0:
            raise ValueError(f"max_extra_msa and max_templates must be >= 0, got {max_extra_msa}, {max_templates}")
        try:
            template_source = as_enum(template_source, TemplateSource)
        except (TypeError, ValueError):
            raise ValueError(f"template_source must be 'homologues' or 'self', got {template_source!r}") from None
        self.max_extra_msa, self.max_templates, self.template_source = max_extra_msa, max_templates, template_source
        mmcif_dir, alignments_dir = self.root / "mmcif", self.root / "alignments"
        files = sorted(mmcif_dir.glob("*.cif")) if mmcif_dir.is_dir() else []
        if not files:
            raise DataNotFoundError(f"no mmCIF files (*.cif) in {mmcif_dir}; set data.root to the folder that holds "
                                    f"mmcif/ and alignments/ (when data.root is unset: ${DATA_DIR_ENV}/proteins)",
                                    str(mmcif_dir))
        if only is not None and not (max_templates > 0 and template_source is TemplateSource.homologues):
            # parse only the files that can hold the chains asked for (homologous templates are
            # searched among every file's chains, so then all are parsed)
            files = [p for p in files if p.stem.lower() in {name.rsplit("_", 1)[0] for name in only}]
        self.entries: list[_Entry] = []
        all_chains: list[Chain] = []
        for path in files:
            chains = cached_records(path, "chains", Chain, read_chains, _CHAIN_PARSERS)  # parsed once per content
            all_chains.extend(chains)
            for chain in chains:
                if chain.num_resolved < min_resolved or chain.name in exclude:
                    continue
                if only is not None and chain.name not in only:
                    continue
                a3m = find_a3m(alignments_dir, chain.name)
                if a3m is None:
                    msa, deletions = single_sequence_msa(chain.sequence)
                else:
                    msa, deletions = msa_from_a3m(a3m, chain.sequence)
                self.entries.append(_Entry(chain, msa, deletions, msa_profile(msa), a3m))
        if not self.entries:
            raise DataFormatError(
                f"{mmcif_dir}: no protein chain with at least {min_resolved} resolved residues"
            )
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)
        # per entry: its template hits and their per-residue features (searched once, here)
        self.template_hits: list[list[TemplateHit]] = []
        self._template_features: list[list[dict[str, np.ndarray]]] = []
        if max_templates > 0:
            for entry in self.entries:
                if template_source is TemplateSource.self:
                    hits = [self_template(entry.chain)]
                else:
                    hits = search_templates(entry.chain, all_chains)
                self.template_hits.append(hits)
                self._template_features.append([hit_features(hit) for hit in hits])

    def template_features(self, index: int) -> list[dict[str, np.ndarray]]:
        """Per-residue features over the whole chain of entry ``index``'s template hits, best first
        (memtrain.data.templates.hit_features); empty without templates."""
        return self._template_features[index] if self._template_features else []

    @property
    def chains(self) -> list[Chain]:
        return [entry.chain for entry in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def entry_of_sample(self, sample: int) -> int:
        """Index into ``self.entries`` of the chain used by sample number ``sample``."""
        epoch, position = divmod(sample, len(self.entries))
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, 0, epoch])
            self._epoch, self._order = epoch, rng.permutation(len(self.entries))
        return int(self._order[position])

    def sample(self, sample: int) -> dict[str, np.ndarray]:
        """The numpy features of sample number ``sample`` (see :func:`make_features`)."""
        if sample < 0:
            raise ValueError(f"sample numbers are non-negative, got {sample}")
        index = self.entry_of_sample(sample)
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, 1, sample])
        templates = None
        if self.max_templates > 0:
            features = self._template_features[index]
            chosen = select_templates(len(features), self.max_templates, np.random.default_rng([self.seed, 2, sample]),
                                      subsample=self.template_source is TemplateSource.homologues)
            templates = [features[i] for i in chosen]
        return make_features(
            entry.chain,
            entry.msa,
            entry.deletion_matrix,
            self.crop_size,
            self.max_msa,
            rng,
            profile=entry.profile,
            max_extra_msa=self.max_extra_msa,
            templates=templates,
            max_templates=self.max_templates,
        )

    def batch(
        self, index: int, micro_batch_size: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(inputs, targets)`` of micro-batch ``index``: dicts of tensors with a leading batch
        dimension (int64 for aatype, residue_index and true_msa, float32 otherwise)."""
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
        samples = [self.sample(index * micro_batch_size + j) for j in range(micro_batch_size)]
        stacked = {}
        for key in samples[0]:
            dtype = torch.long if key in _LONG_KEYS else torch.float32
            stacked[key] = torch.from_numpy(np.stack([s[key] for s in samples])).to(dtype)
        inputs = {key: stacked[key] for key in (*INPUT_KEYS, *EXTRA_MSA_KEYS, *TEMPLATE_KEYS) if key in stacked}
        targets = {
            key: stacked[key].clone() if key in inputs else stacked[key] for key in TARGET_KEYS
        }
        return inputs, targets
