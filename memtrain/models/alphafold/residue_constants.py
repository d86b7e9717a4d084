"""Defined in memtrain.protein.residue_constants (shared with the data pipeline); re-exported here."""

from memtrain.protein.residue_constants import *  # noqa: F401,F403  (re-exported)
