"""Activation checkpointing: defined in memtrain.models.activation_checkpoint (the model layer, which
the trainer applies and the estimator counts); re-exported here."""

from memtrain.models.activation_checkpoint import (  # noqa: F401  (re-exported)
    apply_activation_checkpointing,
    checkpointed_block_ids,
)
