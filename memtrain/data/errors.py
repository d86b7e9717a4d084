"""Exceptions raised by the data readers."""

from __future__ import annotations

from memtrain.errors import UserError


class DataFormatError(UserError, ValueError):
    """A data file is malformed; the message names the file and, where known, the line."""
