"""Reading pickled data from disk without running code: every loader in memtrain goes through here.

Unpickling calls whatever callables the file names (`GLOBAL`/`STACK_GLOBAL` + `REDUCE`), so a
checkpoint is code unless the names it may use are fixed in advance. Two readers, one rule:

* `load_pickle(stream, allowed, source)`: a plain pickle (DCP's `.metadata`) read by `SafeUnpickler`,
  which resolves a name only if the exact `(module, qualname)` pair is a key of `allowed` and returns
  the object stored there. It never imports a module and never walks attributes: under pickle
  protocol 4 the standard `find_class` resolves a dotted name such as
  ('torch.distributed.checkpoint.metadata', 'os.system') by attribute walk, which is how an
  allow-list of "anything under this module" runs a shell command. Keys must have no dots.
* `torch_load(file, allowed_globals, source)`: a torch.save file (tensor files, DCP byte items,
  DeepSpeed's files, exported weights) read with torch's `weights_only` unpickler, which resolves
  names by exact lookup among torch's tensor-rebuilding functions and the classes listed in
  `allowed_globals` (passed to `torch.serialization.safe_globals`).

A refused or unreadable file raises `UnsafePickleError` or `CorruptFileError`, one paragraph naming
the file (and the name it asked for); both are `UserError`s, so the command line reports them with
exit code 2 and no traceback.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import warnings
from typing import IO, Any, Iterable, Mapping

import torch

from memtrain.errors import UserError

Name = tuple[str, str]  # (module, qualname) as written in the pickle


class UnsafePickleError(UserError):
    """A file asks for a name outside the allow-list: loading it could run code, so it is refused."""


class CorruptFileError(UserError):
    """A file that should hold pickled data cannot be read as such (truncated, garbage, wrong type)."""


def exact_names(*objects: Any) -> dict[Name, Any]:
    """{(obj.__module__, obj.__qualname__): obj} for classes and functions defined at module level."""
    names = {}
    for obj in objects:
        key = (obj.__module__, obj.__qualname__)
        if "." in key[1]:
            raise ValueError(f"{key[0]}.{key[1]} is not defined at module level; it cannot be allow-listed")
        names[key] = obj
    return names


def _refusal(source: str, clause: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"refusing to load {source}: {clause}; unpickling it could run code. The file is corrupt or was "
        "crafted: do not load it, delete it or restore it from a trusted copy")


class SafeUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only the exact (module, qualname) pairs in `allowed`."""

    def __init__(self, file: IO[bytes], allowed: Mapping[Name, Any], source: str):
        super().__init__(file)
        bad = [f"{m}.{n}" for m, n in allowed if "." in n]
        if bad:
            raise ValueError(f"allow-list keys must be top-level names, got {bad}")
        self.allowed, self.source = allowed, source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[module, name]
        except KeyError:
            raise _refusal(self.source, f"it names {module}.{name}, which is not one of the classes this kind of "
                                       "file is made of") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _refusal(self.source, f"it asks for a persistent object {pid!r}, which this kind of file never holds")


# what garbage makes the C unpickler raise (truncated data, bad opcodes, wrong memo indices, ...)
_GARBAGE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            UnicodeDecodeError, OverflowError, RecursionError)


def load_pickle(stream: IO[bytes], allowed: Mapping[Name, Any], source: str) -> Any:
    """Unpickle `stream` (named `source` in errors) with only the names in `allowed`."""
    try:
        return SafeUnpickler(stream, allowed, source).load()
    except UnsafePickleError:
        raise
    except _GARBAGE as exc:
        raise CorruptFileError(f"cannot read {source}: not a valid pickle of this kind ({type(exc).__name__}: "
                               f"{exc}); the file is truncated or corrupt") from exc


def torch_load(file: str | pathlib.Path | IO[bytes], allowed_globals: Iterable[Any] = (), source: str | None = None,
               map_location: Any = None) -> Any:
    """torch.load(weights_only=True) with exactly `allowed_globals` added to torch's own safe list;
    errors name `source` (default: the path)."""
    source = source or str(file)
    with torch.serialization.safe_globals(list(allowed_globals)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused below if it matters
        try:
            return torch.load(file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:  # torch wraps every weights-only refusal in this
            raise _refusal(source, f"torch's weights-only loader refused it ({_weights_only_reason(str(exc))})") from None
        except (RuntimeError, EOFError, ValueError) as exc:  # torch's zip reader on a truncated or foreign file
            raise CorruptFileError(f"cannot read {source}: not a complete torch.save file "
                                   f"({' '.join(str(exc).split())[:300]})") from exc


def _weights_only_reason(message: str) -> str:
    """The specific part of torch's weights-only error, without its advice to load unsafely."""
    reason = message.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0]
    reason = reason.split(" was not an allowed global")[0].split(" Please use `torch.serialization")[0]
    return " ".join(reason.split()).rstrip(".")[:300] or "an unsupported object"


def torch_load_bytes(data: bytes | io.BytesIO, source: str, allowed_globals: Iterable[Any] = ()) -> Any:
    """`torch_load` of an in-memory torch.save blob (e.g. a DCP byte item)."""
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    return torch_load(stream, allowed_globals, source)
