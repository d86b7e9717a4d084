"""Training checkpoints: the folder layout, the one commit routine every backend uses, and safe
loading of torch.distributed.checkpoint (DCP) folders.

A checkpoint is a folder step_<N>/ holding the backend's files (DCP's shards and `.metadata`, or
DeepSpeed's files) plus meta.json (step, counters, the run's resolved config). Every backend writes
into `.tmp-step_<N>/` and hands it to `Checkpointer.commit`, which makes it step_<N>/ so that at
every instant a complete step_<N>/ (or the one it replaces) is on disk:

    1. write meta.json into .tmp-step_<N>/, fsync its files and the folder
    2. if step_<N>/ exists (re-saving a step): rename it to .old-step_<N>/
    3. rename .tmp-step_<N>/ to step_<N>/, fsync the parent
    4. delete .old-step_<N>/ (meta.json first, so a half-deleted folder never looks complete)
    5. prune: stale .tmp-*, .old-* whose step_<N>/ is complete, step_<N>/ left without meta.json by
       a deletion cut short, checkpoints beyond keep_last

`checkpoints()` treats a complete .old-step_<N>/ as step N when step_<N>/ is missing (a crash between
2 and 3), and pruning never deletes the newest complete checkpoint. A folder is complete when it
holds meta.json, which is written last.

Loading never unpickles arbitrary objects: DCP's `.metadata` goes through memtrain.safe_pickle's exact
(module, qualname) allow-list, byte items (optimizer hyper-parameters, loss-scaler state) through
torch's weights-only loader, and tensor data through torch.load(weights_only=True) as DCP does.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from memtrain.config.aliases import upgrade_stored_config
from memtrain.errors import FileSystemError, UserError, file_system_error
from memtrain.safe_pickle import exact_names, load_pickle, torch_load_bytes

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
META_FILE = "meta.json"
MAX_META_BYTES = 16 * 2**20  # meta.json holds the step, counters and the config: kilobytes


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: missing, incomplete, corrupt, unsafe, or not matching the
    run that wants to resume from it. The message names the checkpoint (or file)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# -- what DCP's .metadata may name ----------------------------------------------------------------

_DCP_CLASSES = [
    dcp_metadata.Metadata, dcp_metadata.MetadataIndex, dcp_metadata.ChunkStorageMetadata,
    dcp_metadata.TensorStorageMetadata, dcp_metadata.BytesStorageMetadata, dcp_metadata.TensorProperties,
    dcp_metadata.StorageMeta, dcp_metadata._MEM_FORMAT_ENCODING, dcp_filesystem._StorageInfo,
    torch.Size, torch.serialization._get_layout, pathlib.PosixPath, pathlib.PurePosixPath,
]
DCP_METADATA_NAMES: dict[tuple[str, str], Any] = {
    **exact_names(*_DCP_CLASSES),
    # torch pickles a dtype as the module attribute torch.<name>
    **{("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
    # paths pickled by another Python version (3.13 moved them to pathlib._local)
    ("pathlib", "PosixPath"): pathlib.PosixPath, ("pathlib._local", "PosixPath"): pathlib.PosixPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath, ("pathlib._local", "PurePosixPath"): pathlib.PurePosixPath,
}


def read_dcp_metadata(path: str | Path) -> Metadata:
    """DCP's `.metadata` of checkpoint folder `path`, read with the exact allow-list."""
    file = Path(path) / ".metadata"
    try:
        with open(file, "rb") as stream:
            metadata = load_pickle(stream, DCP_METADATA_NAMES, str(file))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a complete checkpoint: {file.name} is missing (DCP's index of the "
                              "shards); the folder was damaged or written by something else") from None
    except OSError as exc:
        raise file_system_error(exc, "cannot read the checkpoint file") from exc
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{file}: not DCP metadata (it holds a {type(metadata).__name__})")
    _check_dcp_metadata(metadata, Path(path), file)
    return metadata


def _check_dcp_metadata(metadata: Metadata, folder: Path, file: Path) -> None:
    """What DCP will trust in `.metadata`: item types, and shard locations that stay inside the
    checkpoint folder and inside the shard files (a crafted path or length would read elsewhere,
    or read without end from a device file)."""
    items = metadata.state_dict_metadata
    if not isinstance(items, dict) or not all(
            isinstance(k, str) and isinstance(v, (dcp_metadata.TensorStorageMetadata, dcp_metadata.BytesStorageMetadata))
            for k, v in items.items()):
        raise CheckpointError(f"{file}: malformed DCP metadata (state_dict_metadata is not a map of item names to "
                              "tensor or byte entries)")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise CheckpointError(f"{file}: malformed DCP metadata (no shard locations)")
    sizes: dict[str, int] = {}
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith(".") \
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length)):
            raise CheckpointError(f"{file}: malformed DCP metadata (shard location {name!r} at {offset!r}+{length!r}: "
                                  "a shard is a file of the checkpoint folder, read at a non-negative offset)")
        if name not in sizes:
            shard = folder / name
            try:
                sizes[name] = shard.stat().st_size if shard.is_file() else -1
            except OSError:
                sizes[name] = -1
            if sizes[name] < 0:
                raise CheckpointError(f"cannot load checkpoint {folder}: its shard file {name} is missing; the folder "
                                      "is incomplete or damaged")
        if offset + length > sizes[name]:
            raise CheckpointError(f"cannot load checkpoint {folder}: {name} is shorter ({sizes[name]} bytes) than its "
                                  f"metadata says ({offset + length}); the shard is truncated")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with `.metadata` read through the exact allow-list (read before the load
    starts, so a refusal is reported as it is, not after DCP's fallback to per-rank metadata)."""

    def __init__(self, path: str | Path, metadata: Metadata | None = None):
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # per-rank metadata files: not written by memtrain
            raise CheckpointError(f"{self.path}: per-rank DCP metadata is not supported")
        metadata = self._metadata if self._metadata is not None else read_dcp_metadata(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that byte items (non-tensor values: optimizer
    hyper-parameters, loss-scaler state) are read with torch's weights-only loader instead of
    torch.load(weights_only=False)."""

    def __init__(self, reader: FileSystemReader):
        super().__init__()
        self.reader = reader

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        info = self.reader.storage_data.get(read_item.storage_index)
        file = Path(self.reader.path) / info.relative_path if info is not None else Path(self.reader.path)
        obj = torch_load_bytes(value, f"{file} (item {read_item.dest_index.fqn!r})")
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes (torch 2.11-2.13)
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


# -- meta.json ------------------------------------------------------------------------------------


def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of checkpoint folder `path` as a dict with an integer 'step', its "config" with the keys an
    older release named otherwise under their new names (memtrain.config.aliases); CheckpointError (naming
    the file) when it is missing, unreadable or not what memtrain writes."""
    path = Path(path)
    file = path / META_FILE
    try:
        if file.exists() and not file.is_file():
            raise CheckpointError(f"{file}: not a regular file")
        with open(file, "rb") as stream:
            data = stream.read(MAX_META_BYTES + 1)
        if len(data) > MAX_META_BYTES:
            raise CheckpointError(f"{file}: larger than {MAX_META_BYTES} bytes; memtrain writes a few kilobytes here")
        text = data.decode()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a complete memtrain checkpoint (no {META_FILE}): a checkpoint folder "
                              "is step_<N>/ as written by memtrain train") from None
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, OSError):
            raise file_system_error(exc, "cannot read the checkpoint file") from exc
        raise CheckpointError(f"{file}: not a text file ({exc.reason}); the checkpoint is corrupt") from exc
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                              "the checkpoint is corrupt") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or isinstance(meta.get("step"), bool) \
            or meta["step"] < 0:
        raise CheckpointError(f"{file}: not a memtrain checkpoint record (expected a JSON object with a "
                              "non-negative integer 'step')")
    upgrade_stored_config(meta.get("config"), str(file))  # a config an older release stored, under today's group names
    return meta


# -- saving and finding ---------------------------------------------------------------------------


def _no_dist() -> bool:
    """One process: no group (a tool reading a checkpoint, e.g. `memtrain export`) or a run's
    one-rank group. DCP then takes its single-process path: no collectives, so a one-rank run on
    a GPU creates no NCCL communicator for its checkpoints."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every call without a process group, even with no_dist=True; a one-process
    run is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _is_rank0() -> bool:
    return _no_dist() or dist.get_rank() == 0


def _barrier() -> None:
    if not _no_dist():
        dist.barrier()


def is_complete(path: Path) -> bool:
    return (path / META_FILE).is_file()


def _step_of(name: str) -> tuple[int, bool] | None:
    """(step, is_aside) for 'step_<N>' and '.old-step_<N>'; None for anything else."""
    aside = name.startswith(_OLD_PREFIX)
    match = _STEP_DIR.match(name[len(_OLD_PREFIX):] if aside else name)
    return (int(match.group(1)), aside) if match else None


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder, meta.json first: a deletion cut short never looks complete."""
    with contextlib.suppress(FileNotFoundError):
        (path / META_FILE).unlink()
    shutil.rmtree(path, ignore_errors=True)


def commit_folder(tmp: Path, final: Path) -> None:
    """Make the complete folder `tmp` (meta.json written) the checkpoint `final`, replacing a
    previous `final` without ever leaving no complete copy of it (see the module docstring)."""
    _fsync_tree(tmp)
    aside = final.with_name(_OLD_PREFIX + final.name)
    if final.exists():
        if is_complete(final):
            if aside.exists():  # an older copy from an interrupted commit: `final` supersedes it
                remove_checkpoint(aside)
            _rename(final, aside)
            _fsync_dir(final.parent)
        else:  # not a checkpoint (damaged by hand); `aside`, if complete, stays the fallback until now
            shutil.rmtree(final)
    _rename(tmp, final)
    _fsync_dir(final.parent)
    if aside.exists():
        remove_checkpoint(aside)


class Checkpointer:
    """Saves and finds checkpoints in `folder`, keeping the newest `keep_last` (0: all)."""

    def __init__(self, folder: str | Path, keep_last: int = 2):
        self.folder, self.keep_last = Path(folder), keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first: step_<N>/, or .old-step_<N>/ while a commit that
        replaces step_<N>/ is cut short between its two renames."""
        if not self.folder.is_dir():
            return []
        found: dict[int, dict[bool, Path]] = {}
        for p in self.folder.iterdir():
            parsed = _step_of(p.name)
            if parsed is not None and is_complete(p):
                found.setdefault(parsed[0], {})[parsed[1]] = p
        return [by_kind.get(False, by_kind.get(True)) for _, by_kind in sorted(found.items())]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    # -- the save protocol shared by every backend: begin -> write into the folder -> commit --

    def begin(self, step: int) -> Path:
        """A fresh temporary folder for step `step` (made by rank 0; every rank returns after it exists)."""
        tmp = self.folder / f"{_TMP_PREFIX}{step_dir_name(step)}"
        if _is_rank0():
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            except OSError as exc:
                raise file_system_error(exc, "cannot create the checkpoint folder") from exc
        _barrier()
        return tmp

    def commit(self, step: int, tmp: Path, meta: dict[str, Any]) -> Path:
        """Once every rank has written its files into `tmp`: meta.json, the atomic replace, pruning."""
        final = self.folder / step_dir_name(step)
        _barrier()
        if _is_rank0():
            _write_meta(tmp, {"step": step, **meta})
            commit_folder(tmp, final)
            self._prune()
        _barrier()
        return final

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
        """`state` (DCP semantics: each rank its shards) as checkpoint step_<N>/."""
        tmp = self.begin(step)
        with _single_process_quiet():
            dcp.save(state, storage_writer=FileSystemWriter(tmp), no_dist=_no_dist())
        return self.commit(step, tmp, meta or {})

    def load(self, path: str | Path, state: dict[str, Any]) -> dict[str, Any]:
        """Load `state` (in place, DCP semantics) from checkpoint `path`; returns its meta.json."""
        path = Path(path)
        meta = read_meta(path)
        reader = SafeFileSystemReader(path, read_dcp_metadata(path))
        try:
            with _single_process_quiet():
                dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(reader), no_dist=_no_dist())
        except CheckpointException as exc:
            raise _load_error(path, exc) from None
        except UserError:
            raise
        return meta

    def _prune(self) -> None:
        """Rank 0, after a commit: drop interrupted saves and superseded copies, then all but the
        newest keep_last checkpoints. Never removes the newest complete checkpoint."""
        for stale in self.folder.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        for aside in self.folder.glob(f"{_OLD_PREFIX}*"):
            parsed = _step_of(aside.name)
            final = self.folder / aside.name[len(_OLD_PREFIX):]
            if parsed is None:
                continue
            if is_complete(final):
                remove_checkpoint(aside)
            elif is_complete(aside):  # a commit cut short between its renames: put the copy back
                if final.exists():
                    shutil.rmtree(final)
                _rename(aside, final)
                _fsync_dir(self.folder)
        for leftover in self.folder.iterdir():  # a deletion cut short (meta.json goes first): never a checkpoint
            parsed = _step_of(leftover.name)
            if parsed is not None and not parsed[1] and not is_complete(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
        if self.keep_last > 0:
            for old in self.checkpoints()[: -self.keep_last]:
                remove_checkpoint(old)


def _load_error(path: Path, exc: CheckpointException) -> UserError:
    """The first rank's failure of a DCP load as one paragraph naming the checkpoint (an error that
    already names its file, e.g. a refused pickle, is passed on as it is)."""
    failures = [f[0] if isinstance(f, tuple) else f for f in exc.failures.values()]
    for failure in failures:
        if isinstance(failure, UserError):
            return failure
    first = failures[0] if failures else exc
    text = " ".join(str(first).split())[:400]
    if isinstance(first, FileNotFoundError):
        return CheckpointError(f"cannot load checkpoint {path}: the file {first.filename} is missing; the folder is "
                               "incomplete or damaged")
    if isinstance(first, OSError) and not isinstance(first, FileSystemError):
        return file_system_error(first, "cannot read the checkpoint file")
    return CheckpointError(f"cannot load checkpoint {path}: {type(first).__name__}: {text}. The checkpoint is "
                           "truncated or corrupt, or its tensors do not fit this run's model and optimizer")


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
