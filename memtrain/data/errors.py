"""Exceptions raised by the data readers."""

from __future__ import annotations

import errno

from memtrain.errors import UserError


class DataFormatError(UserError, ValueError):
    """A data file is malformed; the message names the file and, where known, the line."""


class DataNotFoundError(UserError, FileNotFoundError):
    """The data a run reads is not there (a missing folder, or one without any file of the kind
    read); the message names the folder and the setting that chose it (data.root, or
    $MEMTRAIN_DATA_DIR when data.root is unset). A FileNotFoundError, with `filename` the folder."""

    def __init__(self, message: str, folder: str):
        super().__init__(message)
        self.message, self.errno, self.filename = message, errno.ENOENT, folder

    def __str__(self) -> str:  # the message alone (OSError's would be "[Errno 2] None: 'folder'")
        return self.message
