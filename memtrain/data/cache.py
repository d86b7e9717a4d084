"""A cache of parsed data files, keyed by the file's content and the parser's source.

Parsing the protein files (mmCIF with Biopython, A3M, FASTA) is repeated on every start of a run;
this keeps each file's parsed form under `$MEMTRAIN_CACHE_DIR/parsed` (default
~/.cache/memtrain/parsed), named by the SHA-256 of the file's bytes, the parse kind and the source
of the parsing modules. An edited file, or an edited parser, has another key and is parsed again.

Entries are JSON (sequences) or .npz read with allow_pickle=False (chains): loading an entry
never runs code. An entry that cannot be read is parsed again and rewritten; a cache folder that
cannot be written is skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

CACHE_ENV = "MEMTRAIN_CACHE_DIR"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "memtrain") / "parsed"


def _source_digest(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in modules:
        digest.update(Path(sys.modules[name].__file__).read_bytes())
    return digest.hexdigest()


def content_key(path: Path, kind: str, parser_modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"\0{kind}\0{_source_digest(parser_modules)}".encode())
    return digest.hexdigest()


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
        os.close(fd)
    except OSError:  # a read-only or missing home: run without the cache
        return
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_sequences(path: Path, kind: str, parse: Callable[[Path, str], list[str]],
                     parser_modules: tuple[str, ...]) -> list[str]:
    """parse(path, kind), or its cached result for this content (a list of sequences)."""
    entry = cache_dir() / f"{content_key(path, kind, parser_modules)}.json"
    try:
        value = json.loads(entry.read_text())
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
    except (OSError, ValueError):
        pass  # absent or unreadable: parsed again below
    sequences = parse(path, kind)
    _write_atomically(entry, lambda tmp: tmp.write_text(json.dumps(sequences)))
    return sequences


def _encode(items: list) -> dict[str, np.ndarray] | None:
    """Dataclass instances as named arrays (strings as unicode arrays, None left out), or None
    when a field holds something else."""
    arrays = {"count": np.asarray(len(items))}
    for i, item in enumerate(items):
        for f in dataclasses.fields(item):
            value = getattr(item, f.name)
            if value is None:
                continue
            if isinstance(value, (str, int, float, bool, np.ndarray, np.generic)):
                arrays[f"{i}.{f.name}"] = np.asarray(value)
            else:
                return None
    return arrays


def _decode(cls: type, data) -> list:
    names = [f.name for f in dataclasses.fields(cls)]
    items = []
    for i in range(int(data["count"])):
        kwargs = {}
        for name in names:
            key = f"{i}.{name}"
            if key in data:
                value = data[key]
                kwargs[name] = value.item() if value.ndim == 0 else value
        items.append(cls(**kwargs))
    return items


def cached_records(path: Path, kind: str, cls: type, parse: Callable[[Path], list],
                   parser_modules: tuple[str, ...]) -> list:
    """parse(path), a list of `cls` dataclass instances, or its cached result for this content."""
    entry = cache_dir() / f"{content_key(path, kind, parser_modules)}.npz"
    try:
        with np.load(entry, allow_pickle=False) as data:
            return _decode(cls, data)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, unreadable or from another layout: parsed again below
    items = parse(path)
    arrays = _encode(items)
    if arrays is not None:
        _write_atomically(entry, lambda tmp: np.savez(tmp, **arrays))
    return items
