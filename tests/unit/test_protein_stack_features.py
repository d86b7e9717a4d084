"""Extra-MSA and template features on the real mmCIF and A3M files of the data folder: atom37
coordinates, torsion angles against the textbook dihedral formula, pseudo-beta atoms, the template
search, the self-template, and the batches' extra-MSA rows and template slots."""

from __future__ import annotations

import numpy as np
import pytest

from memtrain.data.protein_features import (
    ProteinStructureBatches,
    msa_from_a3m,
    read_chains,
    sequence_to_aatype,
)
from memtrain.data.residue_constants import (
    ATOM_ORDER,
    ATOM_TYPES,
    CHI_ANGLES_ATOMS,
    RESTYPE_3,
)
from memtrain.data.sequences import default_protein_root
from memtrain.data.templates import (
    TEMPLATE_KEYS,
    atom37_to_torsion_angles,
    hit_features,
    pseudo_beta,
    search_templates,
    self_template,
)
from tests.unit.alphafold.helpers import aligned_chain_root

ROOT = default_protein_root()


@pytest.fixture(scope="module")
def chain_2q2k_a():
    return next(c for c in read_chains(ROOT / "mmcif" / "2q2k.cif") if c.name == "2q2k_A")


@pytest.fixture(scope="module")
def all_chains():
    return [c for path in sorted((ROOT / "mmcif").glob("*.cif")) for c in read_chains(path)]


def dihedral(p0, p1, p2, p3):
    """The IUPAC torsion angle p0-p1-p2-p3 (radians), from the bond vectors."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - (b0 @ b1) * b1, b2 - (b2 @ b1) * b1
    return np.arctan2(np.cross(b1, v) @ w, v @ w)


def test_atom37_coordinates_include_the_backbone_and_side_chains(chain_2q2k_a):
    c = chain_2q2k_a
    assert c.all_atom_positions.shape == (70, 37, 3) and c.all_atom_mask.shape == (70, 37)
    np.testing.assert_array_equal(c.all_atom_positions[:, :3], c.backbone)  # N, CA, C first in atom37
    np.testing.assert_array_equal(c.all_atom_mask[:, :3], c.atom_mask)
    for i, aa in enumerate(c.sequence):
        if c.backbone_mask[i] and aa in "RKEQ":  # long side chains are resolved in this structure
            names = {ATOM_TYPES[k] for k in np.nonzero(c.all_atom_mask[i])[0]}
            assert {"CB", "CG", "CD"} <= names, (i, aa, names)
        present = {ATOM_TYPES[k] for k in np.nonzero(c.all_atom_mask[i])[0]}
        if aa == "G":
            assert "CB" not in present


def test_torsion_angles_match_the_dihedral_formula(chain_2q2k_a):
    c = chain_2q2k_a
    aatype = sequence_to_aatype(c.sequence)
    out = atom37_to_torsion_angles(aatype, c.all_atom_positions, c.all_atom_mask)
    pos, mask = c.all_atom_positions.astype(np.float64), c.all_atom_mask
    n_, ca, c_, o = (ATOM_ORDER[a] for a in ("N", "CA", "C", "O"))
    checked = 0
    for i in range(1, len(c.sequence)):
        atoms = {
            0: [(i - 1, ca), (i - 1, c_), (i, n_), (i, ca)],  # pre-omega
            1: [(i - 1, c_), (i, n_), (i, ca), (i, c_)],  # phi
            2: [(i, n_), (i, ca), (i, c_), (i, o)],  # psi, from O: AlphaFold adds pi
        }
        for k, name in enumerate(CHI_ANGLES_ATOMS[RESTYPE_3[aatype[i]]] if aatype[i] < 20 else []):
            atoms[3 + k] = [(i, ATOM_ORDER[a]) for a in name]
        for angle in range(7):
            present = angle in atoms and all(mask[r, a] for r, a in atoms[angle])
            assert out["torsion_angles_mask"][i, angle] == float(present), (i, angle)
            if not present:
                continue
            expected = dihedral(*(pos[r, a] for r, a in atoms[angle])) + (np.pi if angle == 2 else 0.0)
            sin, cos = out["torsion_angles_sin_cos"][i, angle]
            np.testing.assert_allclose([sin, cos], [np.sin(expected), np.cos(expected)], atol=1e-5)
            checked += 1
    assert checked > 150
    # no residue before the first: no pre-omega or phi there
    assert out["torsion_angles_mask"][0, :2].sum() == 0
    # the alternative angles flip the pi-periodic chis only (Asp chi2, Glu chi3, Phe chi2, Tyr chi2)
    flip = np.ones((len(aatype), 7))
    for i, a in enumerate(aatype):
        if a < 20 and RESTYPE_3[a] in ("ASP", "PHE", "TYR"):
            flip[i, 4] = -1
        if a < 20 and RESTYPE_3[a] == "GLU":
            flip[i, 5] = -1
    np.testing.assert_array_equal(out["alt_torsion_angles_sin_cos"], out["torsion_angles_sin_cos"] * flip[..., None])


def test_pseudo_beta_is_cb_or_ca_for_glycine(chain_2q2k_a):
    c = chain_2q2k_a
    aatype = sequence_to_aatype(c.sequence)
    pb, pb_mask = pseudo_beta(aatype, c.all_atom_positions, c.all_atom_mask)
    for i, aa in enumerate(c.sequence):
        atom = ATOM_ORDER["CA" if aa == "G" else "CB"]
        np.testing.assert_array_equal(pb[i], c.all_atom_positions[i, atom])
        assert pb_mask[i] == c.all_atom_mask[i, atom]


def test_template_search_finds_the_homologue_in_another_entry(all_chains):
    """2CRB and 4ZEY are the same domain (94% identical where aligned); a chain is never its own
    template, nor is any chain of the same entry; unrelated chains are not hits."""
    by_name = {c.name: c for c in all_chains}
    hits = search_templates(by_name["2crb_A"], all_chains)
    assert [h.name for h in hits] == ["4zey_A"]
    hit = hits[0]
    assert 0.9 < hit.identity < 1.0
    aligned = hit.aatype != 21
    assert aligned.sum() > 60
    # the aligned template residue carries 4ZEY's own atoms: its CA-CA distances are those of the template
    ca = hit.all_atom_positions[aligned, ATOM_ORDER["CA"]]
    steps = np.linalg.norm(np.diff(ca, axis=0), axis=-1)[hit.all_atom_mask[aligned, 1][1:] > 0]
    assert np.median(steps) == pytest.approx(3.8, abs=0.1)
    assert search_templates(by_name["2q2k_A"], all_chains) == []  # only its own entry's chain B is similar


def test_self_template_masks_the_sequence(chain_2q2k_a):
    c = chain_2q2k_a
    hit = self_template(c)
    assert (hit.aatype == 20).all()
    kept = {ATOM_TYPES[k] for k in np.nonzero(hit.all_atom_mask.any(0))[0]}
    assert kept == {"N", "CA", "C", "O", "CB"}
    keep = hit.all_atom_mask > 0
    np.testing.assert_array_equal(hit.all_atom_positions[keep], c.all_atom_positions[keep])
    feats = hit_features(hit)
    assert feats["template_torsion_angles_mask"][:, 3:].sum() == 0  # no chi angles for an unknown residue


def test_batches_carry_the_extra_msa_rows_and_templates(tmp_path):
    """2Q2K only: chain A's alignment has 4 rows; with 2 MSA rows the other 2 become extra rows."""
    root = aligned_chain_root(tmp_path)
    batches = ProteinStructureBatches(root, 32, 2, seed=0, max_extra_msa=3, max_templates=2, template_source="self")
    plain = ProteinStructureBatches(root, 32, 2, seed=0)
    msa, deletions = msa_from_a3m(ROOT / "alignments" / "2q2k_A.a3m", batches.entries[0].chain.sequence)
    seen_a = False
    for k in range(4):
        inputs, targets = batches.batch(k, 1)
        base, _ = plain.batch(k, 1)
        for key, value in base.items():  # the extra features change nothing else
            np.testing.assert_array_equal(inputs[key].numpy(), value.numpy(), err_msg=key)
        assert inputs["extra_msa"].shape == (1, 3, 32) and inputs["template_aatype"].shape == (1, 2, 32)
        assert set(TEMPLATE_KEYS) <= inputs.keys()
        np.testing.assert_array_equal(inputs["template_mask"].numpy(), [[1.0, 0.0]])
        start, n = int(inputs["residue_index"][0, 0]), int(inputs["seq_mask"].sum())
        chain = batches.entries[batches.entry_of_sample(k)].chain
        window = slice(start, start + n)
        # the self-template is the chain's own structure over the crop
        np.testing.assert_array_equal(inputs["template_all_atom_positions"][0, 0, :n, :3].numpy(), chain.backbone[window])
        if chain.name != "2q2k_A":
            assert inputs["extra_msa_mask"].sum() == 0  # a single-sequence MSA has no extra rows
            continue
        seen_a = True
        mask = inputs["extra_msa_mask"][0].numpy()
        assert mask[:2, :n].all() and mask[2:].sum() == 0 and mask[:, n:].sum() == 0  # 2 real rows, padding
        full = [tuple(r) for r in msa[:, window]]
        sampled = tuple(targets["true_msa"][0, 1, :n].numpy())  # the second MSA row, before BERT masking
        extra = [tuple(r) for r in inputs["extra_msa"][0, :2, :n].numpy()]
        assert sorted(extra + [sampled]) == sorted(full[1:])  # rows 1-3 of the alignment: sampled or extra
        rows = [full.index(r) for r in extra]
        d = deletions[rows][:, window]
        np.testing.assert_allclose(inputs["extra_has_deletion"][0, :2, :n].numpy(), np.minimum(d, 1.0))
        np.testing.assert_allclose(inputs["extra_deletion_value"][0, :2, :n].numpy(), 2 / np.pi * np.arctan(d / 3),
                                   rtol=1e-6)  # fp32 of a float64 arctan
    assert seen_a
