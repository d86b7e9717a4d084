"""The one base class of every failure a user can cause and fix.

A `UserError`'s message is one paragraph that names the config key or the file at fault (and, where
it helps, what would be accepted). The command line prints it and exits with code 2, without a
traceback, whether it is raised while the config is checked, while a job runs, or in a worker of a
multi-process job. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os

EXIT_USER_ERROR = 2  # bad input: a config key, a value, a file (like argparse and the config checks)


class UserError(Exception):
    """A failure caused by the input (config, checkpoint, data file, file system), not by memtrain."""


class FileSystemError(UserError):
    """An operating-system error on a path the user chose (a run directory, data.root, an export
    folder): the path and the system's reason, in one paragraph. `errno` and `filename` as OSError's."""

    def __init__(self, message: str, errno_: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno, self.filename = errno_, filename


def file_system_error(exc: OSError, doing: str) -> FileSystemError:
    """`exc` (PermissionError, IsADirectoryError, ENAMETOOLONG, EROFS, ENOSPC, ...) as one paragraph:
    '<doing> <path>: <reason>'. `doing` says what was attempted, e.g. 'cannot create the run folder'."""
    path = exc.filename if exc.filename is not None else "?"
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    hint = {
        errno.EACCES: " (permission denied: choose a folder this user can read and write)",
        errno.EROFS: " (a read-only file system)",
        errno.ENOSPC: " (the disk is full)",
        errno.ENAMETOOLONG: " (a path component is longer than the file system allows)",
    }.get(exc.errno or 0, "")
    return FileSystemError(f"{doing} {path}: {reason}{hint}", exc.errno, exc.filename)


def print_user_error(message: str) -> int:
    """Print `message` (one paragraph) to stderr as the command line reports a user error, prefixed
    "memtrain:" ("memtrain (rank R):" in a multi-process job), and return EXIT_USER_ERROR."""
    from rich.console import Console
    from rich.markup import escape

    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
    prefix = f"memtrain (rank {rank}):" if rank is not None and world != "1" else "memtrain:"
    Console(stderr=True).print(f"[bold red]{prefix}[/] {escape(message)}", highlight=False, soft_wrap=True)
    return EXIT_USER_ERROR
