"""Deprecated module path, kept for one release: Ulysses and Ring attention are context parallelism
and live in memtrain.distributed.context_parallel (Megatron's sequence parallelism is parallel.tp_sp)."""

from memtrain.distributed.context_parallel import (  # noqa: F401
    RingAttention,
    SequenceShardedBatches,
    UlyssesAttention,
    ring_attention,
    shard_positions,
)
