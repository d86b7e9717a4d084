"""Chunking (OpenFold's chunk_layer): defined in memtrain.models.chunking (the model layer, whose
AlphaFold modules chunk); re-exported here."""

from memtrain.models.chunking import chunk_layer  # noqa: F401  (re-exported)
