"""Parsed protein files are cached by content (memtrain.data.cache): a second start reads the
cache, an edited file is parsed again, a damaged entry is parsed again, and what comes back equals
what the parser returns."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from memtrain.data import cache, protein_features, sequences
from memtrain.data.sequences import default_protein_root

ROOT = default_protein_root()
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"real protein data not found at {ROOT} (set MEMTRAIN_DATA_DIR)")


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "parsed"


def _counting(parse):
    calls = []

    def wrapped(*args):
        calls.append(args[0])
        return parse(*args)

    return wrapped, calls


def test_sequences_are_parsed_once_per_content(cache_root, tmp_path, monkeypatch):
    data = tmp_path / "proteins"
    shutil.copytree(ROOT / "mmcif", data / "mmcif")
    parse, calls = _counting(sequences._file_sequences)
    monkeypatch.setattr(sequences, "_file_sequences", parse)
    first = sequences.load_protein_sequences(data, sources=("mmcif",))
    n_files = len(calls)
    assert n_files > 0 and len(list(cache_root.glob("*.json"))) == n_files
    assert sequences.load_protein_sequences(data, sources=("mmcif",)) == first
    assert len(calls) == n_files  # all from the cache
    edited = sorted((data / "mmcif").glob("*.cif"))[0]
    edited.write_text(edited.read_text() + "\n")  # same sequences, other bytes: parsed again
    assert sequences.load_protein_sequences(data, sources=("mmcif",)) == first
    assert calls[n_files:] == [edited]


def test_chains_round_trip_through_the_cache(cache_root, monkeypatch):
    path = sorted((ROOT / "mmcif").glob("*.cif"))[0]
    parse, calls = _counting(protein_features.read_chains)
    key = ("memtrain.data.protein_features",)
    fresh = cache.cached_records(path, "chains", protein_features.Chain, parse, key)
    cached = cache.cached_records(path, "chains", protein_features.Chain, parse, key)
    assert len(calls) == 1 and len(cached) == len(fresh) > 0
    for a, b in zip(fresh, cached):
        for f in dataclasses.fields(protein_features.Chain):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and np.array_equal(x, y), f.name
            else:
                assert x == y, f.name


def test_a_damaged_entry_is_parsed_again(cache_root):
    path = sorted((ROOT / "mmcif").glob("*.cif"))[0]
    key = ("memtrain.data.protein_features",)
    parse, calls = _counting(protein_features.read_chains)
    cache.cached_records(path, "chains", protein_features.Chain, parse, key)
    (entry,) = cache_root.glob("*.npz")
    entry.write_bytes(b"not an npz file")
    assert len(cache.cached_records(path, "chains", protein_features.Chain, parse, key)) > 0
    assert len(calls) == 2
    assert len(cache.cached_records(path, "chains", protein_features.Chain, parse, key)) > 0
    assert len(calls) == 2  # rewritten by the second parse


def test_the_key_changes_with_the_parser_source(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_text(">a\nACD\n")
    one = cache.content_key(path, "fasta", ("memtrain.data.sequences",))
    assert one == cache.content_key(path, "fasta", ("memtrain.data.sequences",))
    assert one != cache.content_key(path, "fasta", ("memtrain.data.sequences", "memtrain.data.mmcif"))
    assert one != cache.content_key(path, "a3m", ("memtrain.data.sequences",))
