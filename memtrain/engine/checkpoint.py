"""Training checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is a folder step_<N>/ holding DCP's shards and metadata plus meta.json. It is written
under a temporary name and renamed into place only when complete, so a crash mid-save never
touches the last good checkpoint; half-written folders are ignored and cleaned up. Loading
never unpickles arbitrary objects: DCP's metadata goes through an allow-listed unpickler and
tensor data through torch.load(weights_only=True).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the classes DCP's metadata is made of."""

    _ALLOWED = {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module, name) in self._ALLOWED
            or module == "torch.distributed.checkpoint.metadata"
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
        )
        if not allowed:
            raise CheckpointError(f"refusing to load {module}.{name} from checkpoint metadata")
        return super().find_class(module, name)


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every call without a process group, even with no_dist=True; a one-process
    run is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _is_rank0() -> bool:
    return _no_dist() or dist.get_rank() == 0


class Checkpointer:
    """Saves and finds checkpoints in `folder`, keeping the newest `keep_last`."""

    def __init__(self, folder: str | Path, keep_last: int = 2):
        self.folder, self.keep_last = Path(folder), keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if _STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
        final = self.folder / f"step_{step:08d}"
        tmp = self.folder / f"{_TMP_PREFIX}step_{step:08d}"
        if _is_rank0():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if not _no_dist():
            dist.barrier()
        with _single_process_quiet():
            dcp.save(state, storage_writer=FileSystemWriter(tmp), no_dist=_no_dist())
        if _is_rank0():
            (tmp / "meta.json").write_text(json.dumps({"step": step, **(meta or {})}, indent=2))
            _fsync_tree(tmp)
            if final.exists():  # re-saving the same step: move the old one aside first
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.folder)
            self._prune()
        if not _no_dist():
            dist.barrier()
        return final

    def load(self, path: str | Path, state: dict[str, Any]) -> dict[str, Any]:
        """Load `state` (in place, DCP semantics) from checkpoint `path`; returns its meta.json."""
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise CheckpointError(f"{path} is not a complete memtrain checkpoint (no meta.json)")
        try:
            with _single_process_quiet():
                dcp.load(state, storage_reader=SafeFileSystemReader(path), no_dist=_no_dist())
        except CheckpointException as exc:
            raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from exc
        return json.loads(meta_file.read_text())

    def _prune(self) -> None:
        for stale in self.folder.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.keep_last > 0:
            for old in self.checkpoints()[: -self.keep_last]:
                shutil.rmtree(old)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)
