"""Tests for the AlphaFold-style structure/MSA feature pipeline, on the real PDB files and A3Ms.

Facts about the structures are checked against the files themselves, read independently with
memtrain's own CIF reader (memtrain.data.mmcif.parse_cif), not with Biopython.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from memtrain.data.errors import DataFormatError
from memtrain.data.mmcif import parse_cif, polymer_sequences
from memtrain.data.protein_features import (
    GAP_ID,
    MASK_ID,
    MSA_FEAT_DIM,
    RESTYPE_ORDER,
    RESTYPES,
    TARGET_FEAT_DIM,
    UNK_ID,
    ProteinStructureBatches,
    default_structure_root,
    make_masked_msa,
    msa_from_a3m,
    read_chains,
    single_sequence_msa,
)
from memtrain.data.sequences import default_protein_root, read_a3m, ungap

ROOT = default_structure_root()
MMCIF_DIR = ROOT / "mmcif"
ALIGNMENTS = ROOT / "alignments"
PDB_IDS = ("1psm", "2crb", "2q2k", "3u8v", "3zee", "4i6p", "4zey", "5kc1")

pytestmark = [
    pytest.mark.skipif(not MMCIF_DIR.is_dir(), reason=f"real protein data not found at {MMCIF_DIR} (set MEMTRAIN_DATA_DIR)"),
    # parsing every structure once (module-scoped fixtures) is most of this module's time: one xdist worker
    pytest.mark.xdist_group("protein_features"),
]


@pytest.fixture(scope="module")
def chains_by_file() -> dict[str, list]:
    """Every file parsed once for the whole module (2crb's 20 NMR models take ~2.5 s)."""
    return {pdb_id: read_chains(MMCIF_DIR / f"{pdb_id}.cif") for pdb_id in PDB_IDS}


@pytest.fixture(scope="module")
def cifs() -> dict[str, dict[str, list[str]]]:
    return {
        pdb_id: parse_cif((MMCIF_DIR / f"{pdb_id}.cif").read_text(), source=pdb_id)
        for pdb_id in PDB_IDS
    }


@pytest.fixture(scope="module")
def dataset() -> ProteinStructureBatches:
    return ProteinStructureBatches(ROOT, crop_size=64, max_msa=8, seed=0)


def small_root(tmp_path: Path, pdb_ids=("2q2k", "3zee", "4zey")) -> Path:
    """A data root holding links to a few of the real mmCIFs and the real alignments."""
    (tmp_path / "mmcif").mkdir()
    for pdb_id in pdb_ids:
        (tmp_path / "mmcif" / f"{pdb_id}.cif").symlink_to(MMCIF_DIR / f"{pdb_id}.cif")
    (tmp_path / "alignments").symlink_to(ALIGNMENTS, target_is_directory=True)
    return tmp_path


# ------------------------------------------------------------------------------------------
# Structures
# ------------------------------------------------------------------------------------------


def test_default_structure_root_is_the_protein_root() -> None:
    assert default_structure_root() == default_protein_root()


@pytest.mark.parametrize("pdb_id", PDB_IDS)
def test_every_file_yields_protein_chains(chains_by_file, pdb_id: str) -> None:
    chains = chains_by_file[pdb_id]
    assert chains, f"no protein chain in {pdb_id}"
    for chain in chains:
        n = len(chain.sequence)
        assert chain.name.startswith(f"{pdb_id}_")
        assert set(chain.sequence) <= set(RESTYPES + "X")
        assert chain.backbone.shape == (n, 3, 3) and chain.backbone.dtype == np.float32
        assert chain.backbone_mask.shape == (n,) and chain.atom_mask.shape == (n, 3)
        assert chain.num_resolved >= 16
        # Unobserved atoms have zero coordinates, observed ones (almost surely) do not.
        assert np.all(chain.backbone[chain.atom_mask == 0] == 0)
        assert np.all(np.abs(chain.backbone[chain.atom_mask == 1]).sum(-1) > 0)


def test_2q2k_chains_and_the_a3m_query(chains_by_file) -> None:
    chains = chains_by_file["2q2k"]
    # Entity 1 is DNA (strand F); the protein entity 2 is chains A and B (label asym B and C).
    assert [(c.name, c.label_asym_id, len(c)) for c in chains] == [
        ("2q2k_A", "B", 70),
        ("2q2k_B", "C", 70),
    ]
    _, query_row = read_a3m(ALIGNMENTS / "2q2k_A.a3m")[0]
    assert chains[0].sequence == ungap(query_row)
    # Residues 1-19 (the His-tag region) have no coordinates in chain A, so a SEQRES-shifted
    # alignment would put the first observed residue at index 0.
    assert chains[0].atom_mask[:, 1].nonzero()[0][0] > 0


@pytest.mark.parametrize("pdb_id", PDB_IDS)
def test_chains_agree_with_the_file_read_independently(chains_by_file, cifs, pdb_id) -> None:
    """Names, sequences and which residues have CA coordinates, checked with parse_cif."""
    cif = cifs[pdb_id]
    chains = chains_by_file[pdb_id]
    canonical = polymer_sequences(cif, source=pdb_id)
    entity_of_asym = dict(zip(cif["_struct_asym.id"], cif["_struct_asym.entity_id"]))
    assert sorted(c.label_asym_id for c in chains) == sorted(
        a for a, e in entity_of_asym.items() if e in canonical
    )
    site = {k.split(".", 1)[1]: v for k, v in cif.items() if k.startswith("_atom_site.")}
    first_model = site["pdbx_PDB_model_num"][0]
    for chain in chains:
        # The canonical one-letter code of the chain's entity (_entity_poly).
        assert chain.sequence == canonical[entity_of_asym[chain.label_asym_id]]
        ca_rows = [
            i
            for i, (model, asym, atom) in enumerate(
                zip(site["pdbx_PDB_model_num"], site["label_asym_id"], site["label_atom_id"])
            )
            if model == first_model and asym == chain.label_asym_id and atom == "CA"
        ]
        positions = {int(site["label_seq_id"][i]) - 1 for i in ca_rows}  # altlocs repeat rows
        assert int(chain.atom_mask[:, 1].sum()) == len(positions)
        assert set(np.nonzero(chain.atom_mask[:, 1])[0].tolist()) == positions
        # Author chain id in the name; residue names match the sequence at their positions.
        assert {site["auth_asym_id"][i] for i in ca_rows} == {chain.name.split("_", 1)[1]}
        for i in ca_rows:
            pos = int(site["label_seq_id"][i]) - 1
            if chain.sequence[pos] != "X":
                assert site["label_comp_id"][i] in _THREE_LETTER[chain.sequence[pos]], (pdb_id, pos)
        # Coordinates are model 1's (1psm and 2crb are 20-model NMR ensembles).
        i = ca_rows[0]
        xyz = [float(site[f"Cartn_{a}"][i]) for a in "xyz"]
        pos = int(site["label_seq_id"][i]) - 1
        np.testing.assert_allclose(chain.backbone[pos, 1], xyz, atol=1e-3)


_THREE_LETTER = {
    "A": {"ALA"}, "R": {"ARG"}, "N": {"ASN"}, "D": {"ASP"}, "C": {"CYS"}, "Q": {"GLN"},
    "E": {"GLU"}, "G": {"GLY"}, "H": {"HIS"}, "I": {"ILE"}, "L": {"LEU"}, "K": {"LYS"},
    "M": {"MET", "MSE"}, "F": {"PHE"}, "P": {"PRO"}, "S": {"SER"}, "T": {"THR"}, "W": {"TRP"},
    "Y": {"TYR"}, "V": {"VAL"},
}  # fmt: skip


@pytest.mark.parametrize("pdb_id", PDB_IDS)
def test_backbone_geometry(chains_by_file, pdb_id: str) -> None:
    """Consecutive resolved residues (by SEQRES position) are bonded: CA-CA ~3.80 A (2.9 A for a
    cis peptide); N-CA ~1.46 A, CA-C ~1.52 A (Engh & Huber 1.458 / 1.525). A shifted alignment
    would join residues across an unobserved gap and give CA-CA distances far above 4.2 A.
    The bond tolerance is 0.04 A because 3zee, a 6.1 A cryo-EM model, has looser geometry
    (median N-CA 1.44, CA-C 1.49); the X-ray and NMR entries are within 0.01 A."""
    for chain in chains_by_file[pdb_id]:
        m = chain.backbone_mask.astype(bool)
        n, ca, c = (chain.backbone[:, k] for k in range(3))
        pairs = m[:-1] & m[1:]
        ca_ca = np.linalg.norm(ca[1:] - ca[:-1], axis=-1)[pairs]
        assert pairs.sum() >= 10
        assert abs(np.median(ca_ca) - 3.80) < 0.1, chain.name
        assert ca_ca.min() > 2.7 and ca_ca.max() < 4.2, chain.name
        assert abs(np.median(np.linalg.norm(n - ca, axis=-1)[m]) - 1.46) < 0.04, chain.name
        assert abs(np.median(np.linalg.norm(ca - c, axis=-1)[m]) - 1.52) < 0.04, chain.name


@pytest.mark.parametrize("pdb_id", ["2q2k", "4zey", "1psm"])
def test_atom14_coordinates_agree_with_the_file_read_independently(chains_by_file, cifs, pdb_id) -> None:
    """Every heavy atom of the first model without alternate locations, read with parse_cif, sits in
    its residue type's atom14 slot (residue_constants.GT_ATOM14_NAMES); selenomethionine's SE (4ZEY
    has MSE) fills MET's SD; nothing else is marked present."""
    from memtrain.models.alphafold import residue_constants as rc

    cif = cifs[pdb_id]
    site = {k.split(".", 1)[1]: v for k, v in cif.items() if k.startswith("_atom_site.")}
    first_model = site["pdbx_PDB_model_num"][0]
    checked = selenium = 0
    for chain in chains_by_file[pdb_id]:
        seen = np.zeros_like(chain.atom14_mask)
        for i in range(len(site["id"])):
            if site["pdbx_PDB_model_num"][i] != first_model or site["label_asym_id"][i] != chain.label_asym_id:
                continue
            position = int(site["label_seq_id"][i]) - 1
            resname = rc.RESNAMES[RESTYPE_ORDER.get(chain.sequence[position], UNK_ID)]
            name = site["label_atom_id"][i]
            if site["label_comp_id"][i] == "MSE" and name == "SE":
                name, selenium = "SD", selenium + 1
            if name not in rc.GT_ATOM14_NAMES[resname]:
                continue
            slot = rc.GT_ATOM14_NAMES[resname].index(name)
            seen[position, slot] = 1.0
            if site["label_alt_id"][i] in (".", "?"):
                xyz = [float(site[f"Cartn_{c}"][i]) for c in "xyz"]
                np.testing.assert_allclose(chain.atom14[position, slot], xyz, rtol=0, atol=1e-3)  # 3 decimals in the file
                assert chain.atom14_mask[position, slot] == 1.0
                checked += 1
        np.testing.assert_array_equal(chain.atom14_mask, seen)
        assert np.all(chain.atom14[chain.atom14_mask == 0] == 0)
    assert checked > 200
    assert (selenium > 0) == (pdb_id == "4zey")


def test_resolution_is_read_from_the_file(chains_by_file) -> None:
    """X-ray and EM resolutions as the files state them; NMR structures (1PSM, 2CRB) have none: 0."""
    expected = {"1psm": 0.0, "2crb": 0.0, "2q2k": 3.0, "3u8v": 1.9, "3zee": 6.1, "4i6p": 2.9, "4zey": 1.5, "5kc1": 2.2}
    for pdb_id, resolution in expected.items():
        assert [c.resolution for c in chains_by_file[pdb_id]] == pytest.approx([resolution] * len(chains_by_file[pdb_id]))


def _atom_site_span(text: str) -> tuple[int, int]:
    start = text.index("loop_\n_atom_site.")
    return start, text.index("\n#", start)


def test_truncated_mmcif_raises(tmp_path: Path) -> None:
    text = (MMCIF_DIR / "2q2k.cif").read_text()
    start, end = _atom_site_span(text)
    for cut in (start + (end - start) // 2, start + (end - start) // 3 + 7, len(text) // 10):
        path = tmp_path / f"cut_{cut}.cif"
        path.write_text(text[:cut])
        with pytest.raises(DataFormatError, match=re.escape(str(path))):
            read_chains(path)


def test_garbage_and_non_cif_files_raise(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.cif"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataFormatError, match=re.escape(str(garbage)) + ".*UTF-8"):
        read_chains(garbage)
    text_file = tmp_path / "notes.cif"
    text_file.write_text("this is not an mmCIF file\n")
    with pytest.raises(DataFormatError, match=re.escape(str(text_file)) + ".*data_"):
        read_chains(text_file)
    empty = tmp_path / "empty.cif"
    empty.write_text("")
    with pytest.raises(DataFormatError, match=re.escape(str(empty))):
        read_chains(empty)


def test_files_without_protein_or_coordinates_raise(tmp_path: Path) -> None:
    text = (MMCIF_DIR / "3zee.cif").read_text()
    no_protein = tmp_path / "no_protein.cif"
    no_protein.write_text(text.replace("polypeptide(L)", "polyribonucleotide"))
    with pytest.raises(DataFormatError, match=re.escape(str(no_protein)) + ".*no protein chain"):
        read_chains(no_protein)
    start, end = _atom_site_span(text)
    no_atoms = tmp_path / "no_atoms.cif"
    no_atoms.write_text(text[:start] + text[end + 2 :])
    with pytest.raises(DataFormatError, match=re.escape(str(no_atoms)) + ".*coordinates"):
        read_chains(no_atoms)


# ------------------------------------------------------------------------------------------
# MSAs
# ------------------------------------------------------------------------------------------


def test_deletion_matrix_of_a_hand_written_a3m(tmp_path: Path) -> None:
    path = tmp_path / "tiny.a3m"
    path.write_text(
        ">query\nACDEFGHIK\n"
        ">insertions: 2 before A, 1 before E, 3 before I, a trailing one (dropped)\n"
        "xyACDeEFG-tttIKz\n"
        ">gap\nA-DEFGHIK\n"
        ">ambiguous letters\nBCZEFGHUX\n"
        ">duplicate of 'gap'\nA-DEFGHIK\n"
    )
    msa, deletions = msa_from_a3m(path, "ACDEFGHIK")

    def ids(row: str) -> list[int]:
        return [RESTYPE_ORDER.get(c, GAP_ID) for c in row]

    assert msa.dtype == np.int64 and deletions.dtype == np.float32
    assert msa.tolist() == [
        ids("ACDEFGHIK"),
        ids("ACDEFG-IK"),
        ids("A-DEFGHIK"),
        ids("DCEEFGHC") + [UNK_ID],  # B->D, Z->E, U->C, X->20
    ]
    assert deletions.tolist() == [
        [0] * 9,
        [2, 0, 0, 1, 0, 0, 0, 3, 0],
        [0] * 9,
        [0] * 9,
    ]
    assert msa_from_a3m(path, "ACDEFGHIK", deduplicate=False)[0].shape == (5, 9)


def test_single_sequence_msa() -> None:
    msa, deletions = single_sequence_msa("ACX")
    assert msa.tolist() == [[RESTYPE_ORDER["A"], RESTYPE_ORDER["C"], UNK_ID]]
    assert deletions.tolist() == [[0.0, 0.0, 0.0]]


@pytest.mark.parametrize("name", ["2q2k_A.a3m", "bfd_uniclust_hits.a3m"])
def test_real_a3m_deletions_match_lowercase_runs(name: str) -> None:
    path = ALIGNMENTS / name
    records = read_a3m(path)
    query = ungap(records[0][1])
    msa, deletions = msa_from_a3m(path, query, deduplicate=False)
    assert msa.shape == deletions.shape == (len(records), len(query))
    for row, (_, text) in enumerate(records):
        # Insertions that precede an aligned column (a trailing run belongs to no column).
        counted = sum(len(run) for run in re.findall(r"[a-z]+(?=[A-Z\-])", text))
        assert deletions[row].sum() == counted
        gaps = [i for i, c in enumerate(re.sub(r"[a-z.]", "", text)) if c == "-"]
        assert np.nonzero(msa[row] == GAP_ID)[0].tolist() == gaps


def test_a3m_whose_query_differs_raises(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=re.escape(str(ALIGNMENTS / "2q2k_A.a3m"))):
        msa_from_a3m(ALIGNMENTS / "2q2k_A.a3m", "MKTAYIAKQRQISFVKSHFSRQ")
    path = tmp_path / "bad_row.a3m"
    path.write_text(">q\nACDE\n>short\nAC-\n")
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ".*3 aligned columns"):
        msa_from_a3m(path, "ACDE")


# ------------------------------------------------------------------------------------------
# BERT masking
# ------------------------------------------------------------------------------------------


def test_bert_masking_fractions() -> None:
    """Rates on 512 x 256 positions against binomial tolerances.

    Each position is selected independently with p = 0.15, so the selected count is
    Binomial(n, p) and its fraction has standard deviation sqrt(p (1 - p) / n); given the
    selected count m, each outcome count is Binomial(m, q). We allow 5 standard deviations
    (two-sided normal tail 5.7e-7 per check; the generator is seeded, so the test is
    deterministic anyway). To tell the outcomes apart, the profile puts all its mass on the
    gap class, which the synthetic MSA (standard amino acids only) never holds:
    mask token q = 0.7; profile draw -> gap q = 0.1; unchanged q = 0.1 + 0.1/20 (a uniform draw
    can hit the original residue); another amino acid q = 0.1 * 19/20.
    """
    rng = np.random.default_rng(123)
    msa = rng.integers(0, 20, size=(512, 256))
    profile = np.zeros((256, 22))
    profile[:, GAP_ID] = 1.0
    masked, bert_mask = make_masked_msa(msa, profile, np.random.default_rng(7))
    assert masked.shape == msa.shape and bert_mask.dtype == np.float32

    def within(count: int, total: int, p: float) -> None:
        tolerance = 5 * math.sqrt(p * (1 - p) / total)
        assert abs(count / total - p) < tolerance, (count / total, p, tolerance)

    selected = bert_mask.astype(bool)
    n, m = msa.size, int(selected.sum())
    within(m, n, 0.15)
    assert np.array_equal(masked[~selected], msa[~selected])  # unselected never change
    out, orig = masked[selected], msa[selected]
    within(int((out == MASK_ID).sum()), m, 0.7)
    within(int((out == GAP_ID).sum()), m, 0.1)
    within(int((out == orig).sum()), m, 0.1 + 0.1 / 20)
    other = (out != orig) & (out < 20)
    within(int(other.sum()), m, 0.1 * 19 / 20)
    assert not np.any(out == UNK_ID)
    # Uniform draws cover all 20 standard amino acids.
    assert set(np.unique(out[other]).tolist()) == set(range(20))


# ------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------


def test_batch_shapes_dtypes_and_content(dataset: ProteinStructureBatches) -> None:
    B, L, S = 3, 64, 8
    inputs, targets = dataset.batch(0, B)
    assert set(inputs) == {
        "aatype", "residue_index", "seq_mask", "target_feat", "msa_feat", "msa_mask"
    }  # fmt: skip
    assert set(targets) == {
        "true_msa",
        "bert_mask",
        "backbone_coords",
        "backbone_mask",
        "seq_mask",
        "msa_mask",
        "aatype",
        "atom14_gt_positions",
        "atom14_gt_exists",
        "torsion_angles_sin_cos",
        "alt_torsion_angles_sin_cos",
        "torsion_angles_mask",
        "resolution",
    }
    shapes = {
        "aatype": (B, L), "residue_index": (B, L), "seq_mask": (B, L),
        "target_feat": (B, L, TARGET_FEAT_DIM), "msa_feat": (B, S, L, MSA_FEAT_DIM),
        "msa_mask": (B, S, L), "true_msa": (B, S, L), "bert_mask": (B, S, L),
        "backbone_coords": (B, L, 3, 3), "backbone_mask": (B, L),
        "atom14_gt_positions": (B, L, 14, 3), "atom14_gt_exists": (B, L, 14),
        "torsion_angles_sin_cos": (B, L, 7, 2), "alt_torsion_angles_sin_cos": (B, L, 7, 2),
        "torsion_angles_mask": (B, L, 7), "resolution": (B,),
    }  # fmt: skip
    for key, tensor in {**inputs, **targets}.items():
        assert tuple(tensor.shape) == shapes[key], key
        expected = torch.long if key in ("aatype", "residue_index", "true_msa") else torch.float32
        assert tensor.dtype == expected, key

    for b in range(B):
        chain = dataset.entries[dataset.entry_of_sample(b)].chain
        real = inputs["seq_mask"][b].bool()
        idx = inputs["residue_index"][b][real].numpy()
        assert np.array_equal(idx, np.arange(idx[0], idx[0] + int(real.sum())))  # contiguous crop
        # aatype, coordinates and masks are the chain's at the cropped positions.
        expected_aa = [RESTYPE_ORDER.get(chain.sequence[i], UNK_ID) for i in idx]
        assert inputs["aatype"][b][real].tolist() == expected_aa
        coords, mask = targets["backbone_coords"][b], targets["backbone_mask"][b]
        np.testing.assert_array_equal(coords[real].numpy(), chain.backbone[idx])
        np.testing.assert_array_equal(mask[real].numpy(), chain.backbone_mask[idx])
        # all-atom targets: the chain's atoms; torsions computed over the whole chain, so the crop's
        # first residue keeps the omega and phi that read the residue before it
        np.testing.assert_array_equal(targets["atom14_gt_positions"][b][real].numpy(), chain.atom14[idx])
        np.testing.assert_array_equal(targets["atom14_gt_exists"][b][real].numpy(), chain.atom14_mask[idx])
        for key in ("torsion_angles_sin_cos", "alt_torsion_angles_sin_cos", "torsion_angles_mask"):
            np.testing.assert_array_equal(targets[key][b][real].numpy(), chain.torsion_angles[key][idx])
        assert torch.all(targets["atom14_gt_exists"][b][~real] == 0) and torch.all(targets["torsion_angles_mask"][b][~real] == 0)
        assert targets["resolution"][b] == pytest.approx(chain.resolution)
        # target_feat: column 0 = has_break (0 for one chain), columns 1..21 = one-hot(aatype).
        tf = inputs["target_feat"][b]
        assert torch.all(tf[:, 0] == 0)
        assert torch.equal(tf[real, 1:].argmax(-1), inputs["aatype"][b][real])
        assert torch.all(tf[real].sum(-1) == 1) and torch.all(tf[~real] == 0)
        # msa_feat: the query row is first; unmasked positions show the true residue.
        mf, msa_mask = inputs["msa_feat"][b], inputs["msa_mask"][b].bool()
        true_msa, bert = targets["true_msa"][b], targets["bert_mask"][b].bool()
        assert torch.equal(true_msa[0][real], inputs["aatype"][b][real])
        keep = msa_mask & ~bert
        assert torch.equal(mf[..., :23].argmax(-1)[keep], true_msa[keep])
        assert torch.all(mf[msa_mask][:, :23].sum(-1) == 1) and torch.all(mf[~msa_mask] == 0)
        assert not torch.any(bert & ~msa_mask)
        # profile (columns 25..47) sums to 1 and is the masked rows' class frequency.
        profile = mf[..., 25:48]
        assert torch.allclose(profile[msa_mask].sum(-1), torch.ones(()))
        rows = int(msa_mask[:, 0].sum())
        assert torch.allclose(profile[0][real], mf[:rows, real, :23].mean(0))
        assert 0 <= mf[..., 23:25].min() and mf[..., 23:25].max() <= 1


def test_batches_are_deterministic_and_vary(dataset: ProteinStructureBatches) -> None:
    first = dataset.batch(5, 2)
    dataset.batch(40, 2)  # visit another epoch in between
    again = dataset.batch(5, 2)
    other = dataset.batch(6, 2)
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(first[0][k], other[0][k]) for k in first[0])


def test_epochs_visit_every_chain_once(dataset: ProteinStructureBatches) -> None:
    n = len(dataset)
    assert n == 22  # every protein chain of the 8 files has >= 16 resolved residues
    for epoch in range(3):
        assert sorted(dataset.entry_of_sample(epoch * n + k) for k in range(n)) == list(range(n))
    assert [dataset.entry_of_sample(k) for k in range(n)] != [
        dataset.entry_of_sample(n + k) for k in range(n)
    ]


def test_msas_are_found_by_chain_name(dataset: ProteinStructureBatches) -> None:
    sources = {e.chain.name: e.msa_source for e in dataset.entries}
    assert sources["2q2k_A"] == ALIGNMENTS / "2q2k_A.a3m"
    assert sources["2q2k_B"] is None
    by_name = {e.chain.name: e for e in dataset.entries}
    assert by_name["2q2k_A"].msa.shape == (4, 70)
    assert by_name["2q2k_B"].msa.shape == (1, 70)


def test_a_batch_depends_only_on_seed_and_index(tmp_path: Path) -> None:
    root = small_root(tmp_path)
    a = ProteinStructureBatches(root, crop_size=32, max_msa=4, seed=3)
    b = ProteinStructureBatches(root, crop_size=32, max_msa=4, seed=3)
    c = ProteinStructureBatches(root, crop_size=32, max_msa=4, seed=4)
    b.batch(7, 3)
    for x, y in zip(a.batch(2, 3), b.batch(2, 3)):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert any(
        not torch.equal(a.batch(i, 3)[0]["msa_feat"], c.batch(i, 3)[0]["msa_feat"])
        for i in range(3)
    )


def test_padding_when_chains_and_msas_are_short(tmp_path: Path) -> None:
    root = small_root(tmp_path, pdb_ids=("2q2k",))
    ds = ProteinStructureBatches(root, crop_size=100, max_msa=6, seed=0)
    inputs, targets = ds.batch(0, 2)  # both chains of 2q2k (70 residues)
    by_name = {e.chain.name: e for e in ds.entries}
    for b in range(2):
        entry = ds.entries[ds.entry_of_sample(b)]
        rows = entry.msa.shape[0]  # 4 for chain A (its A3M), 1 for chain B
        assert inputs["seq_mask"][b].sum() == 70 and torch.all(inputs["seq_mask"][b][70:] == 0)
        assert inputs["residue_index"][b][:70].tolist() == list(range(70))
        assert torch.all(inputs["msa_mask"][b][:rows, :70] == 1)
        assert inputs["msa_mask"][b].sum() == rows * 70
        assert torch.all(inputs["aatype"][b][70:] == 0)
        assert torch.all(inputs["target_feat"][b][70:] == 0)
        assert torch.all(inputs["msa_feat"][b][:, 70:] == 0)
        assert torch.all(inputs["msa_feat"][b][rows:] == 0)
        assert torch.all(targets["bert_mask"][b][rows:] == 0)
        assert torch.all(targets["backbone_mask"][b][70:] == 0)
        assert targets["backbone_mask"][b].sum() == entry.chain.num_resolved
    assert set(by_name) == {"2q2k_A", "2q2k_B"}


def test_min_resolved_filters_chains(tmp_path: Path) -> None:
    root = small_root(tmp_path)

    def names(ds: ProteinStructureBatches) -> list[str]:
        return [e.chain.name for e in ds.entries]

    assert names(ProteinStructureBatches(root, 16, 4, 0)) == [
        "2q2k_A", "2q2k_B", "3zee_A", "4zey_A"
    ]  # fmt: skip
    assert names(ProteinStructureBatches(root, 16, 4, 0, min_resolved=45)) == [
        "2q2k_A", "3zee_A", "4zey_A"
    ]  # fmt: skip
    with pytest.raises(DataFormatError, match="no protein chain with at least 1000"):
        ProteinStructureBatches(root, 16, 4, 0, min_resolved=1000)


def test_dataset_reports_the_corrupt_file(tmp_path: Path) -> None:
    root = small_root(tmp_path, pdb_ids=("3zee",))
    text = (MMCIF_DIR / "4zey.cif").read_text()
    start, end = _atom_site_span(text)
    bad = root / "mmcif" / "4zey.cif"
    bad.write_text(text[: (start + end) // 2])
    with pytest.raises(DataFormatError, match=re.escape(str(bad))):
        ProteinStructureBatches(root, 32, 4, 0)


def test_dataset_reports_an_a3m_that_does_not_fit_its_chain(tmp_path: Path) -> None:
    root = tmp_path
    (root / "mmcif").mkdir()
    (root / "mmcif" / "3zee.cif").symlink_to(MMCIF_DIR / "3zee.cif")
    (root / "alignments").mkdir()
    a3m = root / "alignments" / "3zee_A.a3m"
    a3m.write_text((ALIGNMENTS / "2q2k_A.a3m").read_text())
    with pytest.raises(DataFormatError, match=re.escape(str(a3m)) + ".*not the query sequence"):
        ProteinStructureBatches(root, 32, 4, 0)


def test_observed_residue_that_contradicts_the_seqres_raises(tmp_path: Path) -> None:
    """Coordinates are placed by label_seq_id only after checking the residue name there."""
    text = (MMCIF_DIR / "3zee.cif").read_text()
    assert text.count(" SER A 1 1  ? ") == 6  # the 6 atoms of residue 1 (SER)
    path = tmp_path / "renamed.cif"
    path.write_text(text.replace(" SER A 1 1  ? ", " ALA A 1 1  ? "))
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ".*ALA at label_seq_id 1"):
        read_chains(path)
