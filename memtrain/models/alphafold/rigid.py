"""Defined in memtrain.protein.rigid (shared with the data pipeline); re-exported here."""

from memtrain.protein.rigid import *  # noqa: F401,F403  (re-exported)
