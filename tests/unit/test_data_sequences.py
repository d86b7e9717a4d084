"""Tests for the FASTA/A3M readers, the protein tokenizer and the sequence loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from memtrain.data.errors import DataFormatError
from memtrain.data.mmcif import read_mmcif_sequences
from memtrain.data.sequences import (
    ProteinTokenizer,
    default_protein_root,
    load_protein_sequences,
    read_a3m,
    read_fasta,
    ungap,
)
from tests.conftest import write_file

ROOT = default_protein_root()

requires_data = pytest.mark.skipif(
    not ROOT.is_dir(), reason=f"real protein data not found at {ROOT} (set MEMTRAIN_DATA_DIR)"
)

# The one record of short.fasta, read by hand.
SHORT_FASTA_QUERY = "MAAHKGAEHHHKAAEHHEQAAKHHHAAAEHHEKGEHEQAAHHADTAYAHHKHAEEHAAQAAKHDAEHHAPKPH"


# --- FASTA -----------------------------------------------------------------------------------


@requires_data
def test_short_fasta_exact_records() -> None:
    assert read_fasta(ROOT / "short.fasta") == [("query", SHORT_FASTA_QUERY)]


def test_fasta_joins_lines_and_strips_whitespace(tmp_path: Path) -> None:
    path = write_file(
        tmp_path,
        "multi.fasta",
        ">sp|P1| first protein \nMKV LLA\r\n  GGW*\n\n>second\nac-d.\n",
    )
    assert read_fasta(path) == [("sp|P1| first protein", "MKVLLAGGW*"), ("second", "ac-d.")]


def test_empty_fasta_has_no_records(tmp_path: Path) -> None:
    assert read_fasta(write_file(tmp_path, "empty.fasta", "")) == []


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("MKV\n>late header\nMKV\n", "line 1: sequence data before"),
        (">a\nMKV\n>empty\n>c\nMKV\n", "line 3: record 'empty' has no sequence"),
        (">a\nMKV\n>trailing empty\n", "line 3: record 'trailing empty' has no sequence"),
        (">a\nMKV\nMK1V\n", "line 3: invalid sequence character '1'"),
    ],
)
def test_malformed_fasta_names_file_and_line(tmp_path: Path, content: str, fragment: str) -> None:
    path = write_file(tmp_path, "bad.fasta", content)
    with pytest.raises(DataFormatError) as info:
        read_fasta(path)
    assert f"{path}, {fragment}" in str(info.value)


def test_binary_fasta_names_the_file(tmp_path: Path) -> None:
    path = write_file(tmp_path, "binary.fasta", b">x\n\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")
    with pytest.raises(DataFormatError) as info:
        read_fasta(path)
    assert str(path) in str(info.value)


# --- A3M -------------------------------------------------------------------------------------


@requires_data
def test_2q2k_alignment_query_matches_the_structure() -> None:
    records = read_a3m(ROOT / "alignments" / "2q2k_A.a3m")
    assert len(records) == 4
    header, query = records[0]
    assert header == "query"
    structure = dict(read_mmcif_sequences(ROOT / "mmcif" / "2q2k.cif"))
    assert ungap(query) == structure["2q2k_2"]
    # Hits keep their gaps and lowercase insertions as stored.
    assert records[1][1].startswith("-------------------MDKKETQ")
    assert records[3][1].endswith("GDTpP")
    assert ungap(records[3][1]).endswith("GDTPP")


@requires_data
def test_bfd_alignment_depth_and_alphabet() -> None:
    records = read_a3m(ROOT / "alignments" / "bfd_uniclust_hits.a3m")
    assert len(records) == 1024
    assert records[0] == ("query", SHORT_FASTA_QUERY)
    for header, row in records:
        seq = ungap(row)
        assert seq and seq.isalpha() and seq.isupper(), header


def test_a3m_skips_leading_comment_lines(tmp_path: Path) -> None:
    path = write_file(tmp_path, "hits.a3m", "#73\t1\n>101\nMKV-L\n>hit\n-KVaL\n")
    assert read_a3m(path) == [("101", "MKV-L"), ("hit", "-KVaL")]


def test_ungap() -> None:
    assert ungap("-MK.v--aL") == "MKVAL"


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_vocabulary() -> None:
    tok = ProteinTokenizer()
    assert tok.vocab_size == 30
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.encode("ACDEFGHIKLMNPQRSTVWYXBZUO", add_special=False) == list(range(5, 30))


def test_tokenizer_round_trip_and_specials() -> None:
    tok = ProteinTokenizer()
    ids = tok.encode("mkvLA")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert len(ids) == 7
    assert tok.decode(ids) == "MKVLA"
    assert tok.decode(tok.encode(SHORT_FASTA_QUERY)) == SHORT_FASTA_QUERY
    padded = [*ids, tok.pad_id, tok.pad_id, tok.mask_id]
    assert tok.decode(padded) == "MKVLA"


def test_tokenizer_unknown_letters() -> None:
    tok = ProteinTokenizer()
    assert tok.encode("AJ*", add_special=False) == [tok.encode("A", add_special=False)[0], 3, 3]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([30])


# --- loader ----------------------------------------------------------------------------------


@requires_data
def test_load_real_root_is_large_unique_and_deterministic() -> None:
    first = load_protein_sequences(ROOT)
    assert len(first) > 500
    assert len(set(first)) == len(first)
    assert all(seq and seq.isalpha() and seq.isupper() for seq in first)
    assert load_protein_sequences(ROOT) == first
    # Sorted walk: alignments/ comes first, so the first sequence is the 2q2k query.
    assert first[0] == ungap(read_a3m(ROOT / "alignments" / "2q2k_A.a3m")[0][1])
    assert "EAYKKAKQASQDAEQAAKDAENASKEAEEAAKEAVNLK" in first


@requires_data
def test_load_respects_sources_and_limit() -> None:
    structures = load_protein_sequences(ROOT, sources=("mmcif",))
    assert len(structures) == 8
    assert load_protein_sequences(ROOT, max_sequences=5) == load_protein_sequences(ROOT)[:5]


def test_load_deduplicates_in_path_order(tmp_path: Path) -> None:
    write_file(tmp_path, "b.fasta", ">x\nMKV\n>y\nGGA*\n")
    (tmp_path / "a").mkdir()
    write_file(tmp_path / "a", "hits.a3m", ">q\nMK-V\n>h\nggA\n>h2\n---\n")
    write_file(tmp_path, "notes.txt", "not a sequence file")
    assert load_protein_sequences(tmp_path) == ["MKV", "GGA"]
    assert load_protein_sequences(tmp_path, sources=("fasta",)) == ["MKV", "GGA"]


def test_load_missing_root_mentions_env_var(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match="MEMTRAIN_DATA_DIR") as info:
        load_protein_sequences(missing)
    assert str(missing) in str(info.value)


def test_load_empty_root_names_it(tmp_path: Path) -> None:
    write_file(tmp_path, "readme.md", "nothing here")
    with pytest.raises(DataFormatError) as info:
        load_protein_sequences(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_rejects_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pdb"):
        load_protein_sequences(tmp_path, sources=("pdb",))


def test_default_root_follows_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMTRAIN_DATA_DIR", str(tmp_path))
    assert default_protein_root() == tmp_path / "proteins"
    monkeypatch.delenv("MEMTRAIN_DATA_DIR")
    repo_root = Path(__file__).resolve().parents[2]
    assert default_protein_root() == repo_root.parent / "shared" / "data" / "proteins"
