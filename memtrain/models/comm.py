"""What a family's communication terms are given (memtrain.models.spec.ModelSpec.comm_bytes) and the
ring factor they share with the data-parallel terms of memtrain.memory.comm.

Bytes *sent* by one device per optimizer step with the bandwidth-optimal collectives: a ring
all-reduce of N bytes over n ranks sends 2 (n-1)/n N, an all-gather or reduce-scatter of N (the
whole tensor) sends (n-1)/n N, an all-to-all of a local tensor of N bytes sends (n-1)/n N, a
point-to-point pass sends N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from omegaconf import DictConfig

from memtrain.config.parallel import ParallelDims

FP32 = 4  # bytes of an fp32 element


@dataclass
class CommContext:
    params: int  # parameter elements held by this device before data-parallel sharding (after tp)
    param_bytes: int  # bytes of a parameter / gradient element as kept (param_dtype)
    compute_bytes: int  # bytes of an activation element (compute dtype)
    micro_batches: int  # micro-batches per optimizer step (trainer.grad_accum)


def ring(n: int) -> float:
    """(n - 1) / n: the share of a tensor one of n ranks sends in a ring collective."""
    return (n - 1) / n


# (config, degrees, context) -> {mesh dimension: {collective: bytes sent per device per optimizer
# step}} for the model-parallel dimensions of degree > 1 a family declares
FamilyCommFn = Callable[[DictConfig, ParallelDims, CommContext], dict[str, dict[str, float]]]
