"""Crafted pickles that run a shell command when unpickled by the standard unpickler, in the forms
an attacker would use against an allow-list: a dotted name reached by attribute walk under pickle
protocol 4, `builtins.getattr` / `__import__` chains, a plain `__reduce__` of os.system. Each is
checked to run its command under pickle.loads (so a loader test that refuses it could fail)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def dotted_stack_global(command: str, module: str = "torch.distributed.checkpoint.metadata") -> bytes:
    """STACK_GLOBAL (module, 'os.system'): protocol 4 walks the dotted name to os.system."""
    return b"\x80\x04" + _str(module) + _str("os.system") + b"\x93" + _str(command) + b"\x85R."


def dotted_global(command: str, module: str = "torch.distributed.checkpoint.metadata") -> bytes:
    """The same through the text GLOBAL opcode."""
    return b"\x80\x04c" + module.encode() + b"\nos.system\n" + _str(command) + b"\x85R."


def builtins_getattr(command: str) -> bytes:
    """getattr(__import__('os'), 'system')(command)."""
    return (b"\x80\x04cbuiltins\ngetattr\ncbuiltins\n__import__\n" + _str("os") + b"\x85R" + _str("system")
            + b"\x86R" + _str(command) + b"\x85R.")


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def reduce_system(command: str) -> bytes:
    """What pickle.dumps writes for an object whose __reduce__ returns (os.system, (command,))."""
    return pickle.dumps(_RunsCommand(command), protocol=4)


def reduce_system_protocol2(command: str) -> bytes:
    """The same as torch.save writes pickles (protocol 2: GLOBAL 'posix system', no framing)."""
    return pickle.dumps(_RunsCommand(command), protocol=2)


FORMS = {"dotted-stack-global": dotted_stack_global, "dotted-global": dotted_global,
         "builtins-getattr": builtins_getattr, "reduce": reduce_system, "reduce-protocol-2": reduce_system_protocol2}


def touch(marker: Path) -> str:
    return f"touch {marker}"


def assert_runs_code(payload: bytes, marker: Path) -> None:
    """Precondition of every refusal test: the standard unpickler does run this payload."""
    pickle.loads(payload)
    assert marker.exists(), "the payload should run its command under pickle.loads"
    marker.unlink()


def torch_file_with_pickle(payload: bytes) -> bytes:
    """A torch.save zip archive whose data.pkl is `payload` (what torch.load unpickles)."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = payload if info.filename.endswith("/data.pkl") else source.read(info.filename)
            target.writestr(info.filename, data)
    return out.getvalue()
