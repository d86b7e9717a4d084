"""memtrain: a training launcher for memory-efficient training of scientific transformers."""
