"""Protein sequence readers (FASTA, A3M, mmCIF) and an amino-acid tokenizer."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from memtrain.data.cache import cached_sequences
from memtrain.data.errors import DataFormatError, DataNotFoundError
from memtrain.data.mmcif import read_mmcif_sequences

DATA_DIR_ENV = "MEMTRAIN_DATA_DIR"

_SEQUENCE_LINE = re.compile(r"[A-Za-z*.\-]*")
_SOURCE_SUFFIXES = {"fasta": (".fasta", ".fa"), "a3m": (".a3m",), "mmcif": (".cif",)}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    except PermissionError as exc:
        raise DataFormatError(f"{path}: permission denied (this user cannot read the file)") from exc


def walk_files(root: Path) -> list[Path]:
    """Every file under `root`, recursively, in sorted path order. A folder that cannot be listed
    is an error naming it (pathlib's rglob would skip it silently and report no data)."""
    def refuse(exc: OSError) -> None:
        if isinstance(exc, PermissionError):
            raise DataFormatError(f"{exc.filename}: permission denied (this user cannot list the folder)") from exc
        raise exc

    files = []
    for folder, _, names in os.walk(root, onerror=refuse, followlinks=True):  # as rglob: into linked folders
        files += [Path(folder) / name for name in names if (Path(folder) / name).is_file()]
    return sorted(files)


def _read_records(path: str | Path, skip_leading_comments: bool) -> list[tuple[str, str]]:
    """Read ``>header`` / sequence-line records, checking the sequence characters."""
    path = Path(path)
    records: list[tuple[str, str]] = []
    header: str | None = None
    header_line = 0
    chunks: list[str] = []

    def finish() -> None:
        if header is None:
            return
        if not chunks:
            raise DataFormatError(f"{path}, line {header_line}: record {header!r} has no sequence")
        records.append((header, "".join(chunks)))

    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if line.startswith(">"):
            finish()
            header, header_line, chunks = line[1:].strip(), number, []
            continue
        if header is None and skip_leading_comments and line.startswith("#"):
            continue
        sequence = "".join(line.split())
        if not sequence:
            continue
        if header is None:
            raise DataFormatError(
                f"{path}, line {number}: sequence data before the first '>' header"
            )
        if not _SEQUENCE_LINE.fullmatch(sequence):
            bad = next(char for char in sequence if not _SEQUENCE_LINE.fullmatch(char))
            raise DataFormatError(f"{path}, line {number}: invalid sequence character {bad!r}")
        chunks.append(sequence)
    finish()
    return records


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """Read a FASTA file as ``(header, sequence)`` records (header without '>').

    Sequence lines are joined and whitespace is removed; letters, '-', '*' and '.' are allowed.
    An empty file gives no records.
    """
    return _read_records(path, skip_leading_comments=False)


def read_a3m(path: str | Path) -> list[tuple[str, str]]:
    """Read an A3M alignment as ``(header, aligned row)`` records; the first is the query.

    Rows are returned as stored: lowercase insertions and '-' gaps are kept (see :func:`ungap`).
    ``#`` lines before the first record (as written by some search tools) are skipped.
    """
    return _read_records(path, skip_leading_comments=True)


def ungap(row: str) -> str:
    """The unaligned sequence of an alignment row: gaps ('-', '.') removed, uppercased."""
    return row.replace("-", "").replace(".", "").upper()


class ProteinTokenizer:
    """Maps protein sequences to token ids and back.

    Ids 0-4 are the special tokens ``<pad> <bos> <eos> <unk> <mask>``, ids 5-24 the 20 standard
    amino acids ``ACDEFGHIKLMNPQRSTVWY`` and ids 25-29 the ambiguous or rare ``X B Z U O``.
    """

    SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>")
    AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY" + "XBZUO"

    def __init__(self) -> None:
        self._tokens = list(self.SPECIAL_TOKENS) + list(self.AMINO_ACIDS)
        self._ids = {token: index for index, token in enumerate(self._tokens)}

    @property
    def pad_id(self) -> int:
        return self._ids["<pad>"]

    @property
    def bos_id(self) -> int:
        return self._ids["<bos>"]

    @property
    def eos_id(self) -> int:
        return self._ids["<eos>"]

    @property
    def unk_id(self) -> int:
        return self._ids["<unk>"]

    @property
    def mask_id(self) -> int:
        return self._ids["<mask>"]

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def encode(self, seq: str, add_special: bool = True) -> list[int]:
        """Token ids of ``seq`` (case-insensitive; unknown characters become ``<unk>``)."""
        unk = self.unk_id
        ids = [self._ids.get(char, unk) for char in seq.upper()]
        return [self.bos_id, *ids, self.eos_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> str:
        """The amino-acid string of ``ids``, special tokens dropped."""
        residues = []
        for token_id in map(int, ids):
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"token id {token_id} is outside the vocabulary (size {self.vocab_size})"
                )
            if token_id >= len(self.SPECIAL_TOKENS):
                residues.append(self._tokens[token_id])
        return "".join(residues)


def default_protein_root() -> Path:
    """``$MEMTRAIN_DATA_DIR/proteins``, or ``shared/data/proteins`` next to the repository."""
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return Path(data_dir) / "proteins"
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / "proteins"


_PARSERS = ("memtrain.data.sequences", "memtrain.data.mmcif")  # a change to either re-parses the files


def _file_sequences(path: Path, kind: str) -> list[str]:
    if kind == "fasta":
        return [ungap(seq).rstrip("*") for _, seq in read_fasta(path)]
    if kind == "a3m":
        return [ungap(row) for _, row in read_a3m(path)]
    return [seq for _, seq in read_mmcif_sequences(path)]


def load_protein_sequences(
    root: str | Path,
    sources: Sequence[str] = ("fasta", "a3m", "mmcif"),
    max_sequences: int | None = None,
) -> list[str]:
    """Collect unique protein sequences from the files under ``root``.

    Files are visited recursively in sorted path order: ``*.fasta``/``*.fa`` (sequences ungapped,
    uppercased, a final '*' removed), ``*.a3m`` (every row ungapped) and ``*.cif`` (protein
    entities), each only if its kind is in ``sources``. Empty sequences are dropped and repeats
    keep their first occurrence; at most ``max_sequences`` are returned.
    """
    unknown = set(sources) - _SOURCE_SUFFIXES.keys()
    if unknown:
        raise ValueError(
            f"unknown sequence sources {sorted(unknown)}; choose from {sorted(_SOURCE_SUFFIXES)}"
        )
    if max_sequences is not None and max_sequences < 1:
        raise ValueError(f"max_sequences must be positive, got {max_sequences}")
    root = Path(root)
    if not root.exists():
        raise DataNotFoundError(
            f"protein data directory {root} does not exist; set data.root to the folder of the sequence files, "
            f"or the environment variable {DATA_DIR_ENV} (read when data.root is unset) to a directory that "
            "holds a 'proteins' folder", str(root))
    if not root.is_dir():
        raise NotADirectoryError(f"protein data root {root} is not a directory")

    kind_of_suffix = {suffix: kind for kind in sources for suffix in _SOURCE_SUFFIXES[kind]}
    unique: dict[str, None] = {}  # insertion-ordered set
    for path in walk_files(root):
        kind = kind_of_suffix.get(path.suffix.lower())
        if kind is None:
            continue
        for seq in cached_sequences(path, kind, _file_sequences, _PARSERS):
            if seq:
                unique.setdefault(seq)
                if len(unique) == max_sequences:
                    return list(unique)
    if not unique:
        raise DataFormatError(f"{root}: no protein sequences found (sources: {', '.join(sources)})")
    return list(unique)
