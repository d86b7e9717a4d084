"""Tests for the mmCIF reader, on the real PDB files and on small hand-written CIF texts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memtrain.data.errors import DataFormatError
from memtrain.data.mmcif import parse_cif, polymer_sequences, read_mmcif_sequences
from memtrain.data.sequences import default_protein_root
from tests.conftest import write_file

MMCIF_DIR = default_protein_root() / "mmcif"
PDB_IDS = ("1psm", "2crb", "2q2k", "3u8v", "3zee", "4i6p", "4zey", "5kc1")

requires_data = pytest.mark.skipif(
    not MMCIF_DIR.is_dir(),
    reason=f"real protein data not found at {MMCIF_DIR} (set MEMTRAIN_DATA_DIR)",
)


@requires_data
@pytest.mark.parametrize("pdb_id", PDB_IDS)
def test_every_structure_has_a_protein_sequence(pdb_id: str) -> None:
    records = read_mmcif_sequences(MMCIF_DIR / f"{pdb_id}.cif")
    assert records, f"no protein entity in {pdb_id}"
    for name, seq in records:
        assert name.startswith(f"{pdb_id}_")
        assert seq.isalpha() and seq.isupper()


@requires_data
def test_1psm_sequence_read_by_hand() -> None:
    assert read_mmcif_sequences(MMCIF_DIR / "1psm.cif") == [
        ("1psm_1", "EAYKKAKQASQDAEQAAKDAENASKEAEEAAKEAVNLK")
    ]


@requires_data
def test_multiline_text_field_sequence_is_joined() -> None:
    # 2crb stores the sequence as a ';' text field over two lines.
    assert read_mmcif_sequences(MMCIF_DIR / "2crb.cif") == [
        (
            "2crb_1",
            "GSSGSSGMEGPLNLAHQQSRRADRLLAAGKYEEAISCHRKATTYLSEAMKLTESEQAHLSLELQRDSHMKQLLLIQERWK"
            "RAKREERLKAHSGPSSG",
        )
    ]


@requires_data
def test_entity_poly_loop_keeps_only_the_protein_entity() -> None:
    # 2q2k has a DNA entity (1) and a protein entity (2) in an _entity_poly loop.
    cif = parse_cif((MMCIF_DIR / "2q2k.cif").read_text())
    assert cif["_entity_poly.entity_id"] == ["1", "2"]
    assert cif["_entity_poly.type"] == ["polydeoxyribonucleotide", "polypeptide(L)"]
    assert cif["_entity_poly.pdbx_strand_id"] == ["F", "A,B"]
    assert cif["_entity_poly.pdbx_target_identifier"] == ["?", "?"]
    assert polymer_sequences(cif) == {
        "2": "MGSSHHHHHHSSGLVPGSHMDKKETKHLLKIKKEDYPQIFDFLENVPRGTKTAHIREALRRYIEEIGENP"
    }
    # Double-quoted values holding single quotes.
    assert "5-IODO-2'-DEOXYURIDINE-5'-MONOPHOSPHATE" in cif["_chem_comp.name"]


@requires_data
def test_atom_site_loop_is_parsed_column_wise() -> None:
    path = MMCIF_DIR / "2crb.cif"
    text = path.read_text()
    started = time.perf_counter()
    cif = parse_cif(text, source=str(path))
    elapsed = time.perf_counter() - started
    atom_lines = [line for line in text.splitlines() if line.startswith(("ATOM ", "HETATM "))]
    columns = [name for name in cif if name.startswith("_atom_site.")]
    assert len(cif["_atom_site.Cartn_x"]) == len(atom_lines)
    assert all(len(cif[name]) == len(atom_lines) for name in columns)
    first = atom_lines[0].split()
    assert [cif[name][0] for name in columns] == first
    float(cif["_atom_site.Cartn_x"][-1])
    assert elapsed < 2.0, f"parse_cif took {elapsed:.2f}s on a 2.7 MB file"


def test_quote_closes_only_before_whitespace() -> None:
    cif = parse_cif(
        "data_t\n"
        "_a 'a'b'\n"
        "_b \"x\"y\"\n"
        "_d 'two words'   # trailing comment\n"
        "_e \"it's\"\n"
        "_f 'has # inside'\n"
        "_g a#b\n"
    )
    assert cif == {
        "_a": ["a'b"],
        "_b": ['x"y'],
        "_d": ["two words"],
        "_e": ["it's"],
        "_f": ["has # inside"],
        "_g": ["a#b"],
    }


def test_doubled_quote_is_not_an_escape() -> None:
    # CIF 1.1 has no quote doubling: in 'O5'' A' the second quote (followed by a space) closes
    # the string, so the text holds the two values O5' and A'.
    assert parse_cif("data_t\nloop_\n_a\n_b\n'O5'' A'\n") == {"_a": ["O5'"], "_b": ["A'"]}


def test_loop_rows_may_span_lines_and_hold_text_fields() -> None:
    text = (
        "# leading comment\n"
        "data_t\n"
        "_cell.length_a 10.5\n"
        "loop_\n"
        "_x.id\n"
        "_x.name\n"
        "_x.note\n"
        "1 alpha .\n"
        "2\n"
        "'beta gamma'\n"
        ";first line\n"
        "second line\n"
        ";\n"
        "3 \"delta\" ?\n"
        "#\n"
        "_y.last ;not_a_text_field\n"
        "data_second\n"
        "_z.ignored 1\n"
    )
    assert parse_cif(text) == {
        "_cell.length_a": ["10.5"],
        "_x.id": ["1", "2", "3"],
        "_x.name": ["alpha", "beta gamma", "delta"],
        "_x.note": [".", "first line\nsecond line", "?"],
        "_y.last": [";not_a_text_field"],
    }


def test_quoted_reserved_words_are_values() -> None:
    assert parse_cif("data_t\n_a 'loop_'\n_b '_c'\n") == {"_a": ["loop_"], "_b": ["_c"]}


def test_polymer_sequences_without_entity_poly_is_empty() -> None:
    assert polymer_sequences(parse_cif("data_t\n_cell.length_a 1\n")) == {}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("data_t\nloop_\n_x.a\n_x.b\n1 2\n3\n", 2, "3 values"),
        ("data_t\n_x.a\n;unterminated\ntext\n", 3, "unterminated text field"),
        ("data_t\n_x.a\n_x.b 1\n", 2, "_x.a has no value"),
        ("data_t\n_x.a 1\n_x.b\n", 3, "_x.b has no value"),
        ("data_t\n_x.a 1 2\n", 2, "without an item name"),
        ("data_t\n_x.a 'open\n", 2, "unterminated quoted string"),
        ("data_t\n_x.a 1\n_x.a 2\n", 3, "duplicate item"),
        ("_x.a 1\n", 1, "data_"),
    ],
)
def test_malformed_text_names_source_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(DataFormatError) as info:
        parse_cif(text, source="broken.cif")
    assert f"broken.cif, line {line}:" in str(info.value)
    assert fragment in str(info.value)


def test_unterminated_text_field_in_file_names_the_file(tmp_path: Path) -> None:
    path = write_file(
        tmp_path,
        "bad_text.cif",
        "data_bad\n_entity_poly.entity_id 1\n_entity_poly.pdbx_seq_one_letter_code_can\n;MKV\n",
    )
    with pytest.raises(DataFormatError, match="line 4") as info:
        read_mmcif_sequences(path)
    assert str(path) in str(info.value)


def test_loop_with_wrong_value_count_in_file_names_the_file(tmp_path: Path) -> None:
    path = write_file(
        tmp_path,
        "bad_loop.cif",
        "data_bad\nloop_\n_entity_poly.entity_id\n_entity_poly.type\n"
        "_entity_poly.pdbx_seq_one_letter_code_can\n1 'polypeptide(L)' MKV\n2 'polypeptide(L)'\n",
    )
    with pytest.raises(DataFormatError, match="line 2") as info:
        read_mmcif_sequences(path)
    assert str(path) in str(info.value)


def test_binary_cif_names_the_file(tmp_path: Path) -> None:
    path = write_file(tmp_path, "binary.cif", bytes(range(256)) * 4)
    with pytest.raises(DataFormatError) as info:
        read_mmcif_sequences(path)
    assert str(path) in str(info.value)
