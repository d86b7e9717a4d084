"""Exceptions raised by the data readers."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data file is malformed; the message names the file and, where known, the line."""
