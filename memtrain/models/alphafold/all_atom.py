"""Defined in memtrain.protein.all_atom (shared with the data pipeline); re-exported here."""

from memtrain.protein.all_atom import *  # noqa: F401,F403  (re-exported)
