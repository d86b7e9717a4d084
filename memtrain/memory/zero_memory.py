"""What DeepSpeed ZeRO stages 1-3 allocate per rank (memtrain estimate, parallel=zero1|zero2|zero3).

`zero_terms` lists one rank's tensors, each labelled by what it is, where it lives and when, as
DeepSpeed 0.19.8 allocates them under the config memtrain runs (memtrain.distributed.zero.
deepspeed_config: contiguous_gradients on, overlap_comm off, no bucket or prefetch setting, so
DeepSpeed's defaults below apply; `ZERO_DEFAULTS` names each default and tests check it against
DeepSpeed's own config model). N is the model's parameter count, P = ceil(N / N_dp) one rank's
partition, L the largest parameter (elements), b the model dtype's bytes (bf16/fp16: 2, fp32: 4;
DeepSpeed's gradient accumulation dtype defaults to it), s the optimizer's fp32 state:

stage 1 and 2 (runtime/zero/stage_1_and_2.py, DeepSpeedZeroOptimizer)
    parameters                   N b        bit16_groups_flat: every parameter, one flat buffer
    fp32 master partition        P 4        single_partition_of_fp32_groups (a copy also in fp32)
    optimizer state              s(P)       the torch optimizer's state of the flat partition
    reduced gradient partition   P b        grads_in_partition: this rank's reduced gradients,
                                            from the first reduction to the step
    fp32 gradient partition      P 4        step(): flatten(averaged_gradients).to(fp32), the
                                            partition's .grad while the optimizer steps (a new
                                            tensor in fp32 too)
    reduce bucket (IPG)          R b        backward only: setup_buckets() allocates
                                            reduce_bucket_size elements per backward, released
                                            in the epilogue (two with overlap_comm)
    autograd gradient            L b        backward only: one parameter's gradient before the
                                            hook copies it into the bucket
  Stage 2 frees the gradients of other ranks' partitions as each bucket is reduced; stage 1
  keeps them only as views of the bucket, so both hold the same storages (measured).

stage 3 (runtime/zero/stage3.py, DeepSpeedZeroOptimizer_Stage3)
    parameter partition          P b        each parameter's ds_tensor
    fp32 master partition        P 4        fp32_partitioned_groups_flat
    optimizer state              s(P)
    gradient partition buffer    P b        grad_partitions_flat_buffer, allocated at init
    reduce bucket (IPG)          R b        allocated at init and kept (not per backward)
    fp32 gradient partition      min(P, sub_group_size) 4
                                            step(): the largest sub-group's fp32 gradient
    gathered parameters          W b        forward and backward: parameters all-gathered whole
                                            (see `gathered_numel`)
    autograd gradient            L b        backward: one parameter's gradient before it is
                                            reduced into the bucket

Offload (ZeRO-Offload, Ren et al. 2021; ZeRO-Infinity, Rajbhandari et al. 2021). optimizer_cpu:
the fp32 master partition, the optimizer state and the fp32 gradient partition (kept, not per
step) on the host, plus a low-precision copy of the partition there (stage 1/2:
param_buffer_of_bit16_for_cpu_offload_groups) and a host gradient staging buffer of L elements;
the device keeps the parameters, the bucket and, for stage 1/2, a staging buffer of L elements
(temp_grad_buffer_for_gpu_offload) instead of the reduced gradient partition; stage 3 makes its
gradient partition buffer (P b) on the host too. params_cpu (stage
3): the parameter partition on the host too. nvme (stage 3): parameter partition and optimizer
state on disk, the fp32 gradients on the host; DeepSpeed's swap buffers are not counted.

Checked: the six on-device cases (stages 1-3 x fp32/bf16, 2 ranks) against the storages DeepSpeed
holds inside the optimizer step (tests/distributed/test_zero.py, docs/planner.md). The offload
terms against the resident host memory of gloo ranks, start-up and steps (memtrain.memory.
host_memory, tests/distributed/test_host_memory.py); the gathered working set comes from the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from memtrain.config.parallel_options import Place, offload_option
from memtrain.memory import optimizer_memory
from memtrain.precision.amp import dtype_of

FP32 = 4

# DeepSpeed 0.19.8's defaults (runtime/zero/config.py, DeepSpeedZeroConfig) for the keys memtrain's
# config leaves unset, by their config names
ZERO_DEFAULTS = {
    "reduce_bucket_size": 500_000_000,
    "allgather_bucket_size": 500_000_000,
    "sub_group_size": 1_000_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_max_live_parameters": 1_000_000_000,
    "stage3_max_reuse_distance": 1_000_000_000,
    "overlap_comm": False,
}

# when a term is live
PERSISTENT, BACKWARD, STEP, FORWARD_BACKWARD = "persistent", "backward", "step", "forward+backward"
# what a term counts as in memtrain estimate's table
PARAMS, GRADS, OPTIMIZER, TRANSIENT = "params", "grads", "optimizer", "gathered"


@dataclass(frozen=True)
class ZeroTerm:
    """One rank's tensor(s) of one kind: `label` says what it is, `nbytes` its size, `where`
    "device", "host" or "nvme", `phase` when it is live (persistent, backward, step,
    forward+backward), `slot` the estimate's column it adds to (params, grads, optimizer,
    gathered)."""

    label: str
    nbytes: int
    where: str
    phase: str
    slot: str


def zero_settings(cfg: DictConfig, n_dp: int) -> dict[str, Any]:
    """The zero_optimization section DeepSpeed runs: memtrain's generated one over DeepSpeed's
    defaults (ZERO_DEFAULTS)."""
    from memtrain.distributed.mesh import ParallelDims
    from memtrain.distributed.zero import deepspeed_config

    dims = ParallelDims(dp_replicate=1, dp_shard=n_dp, tp=1, pp=1, cp=1, dap=1, world_size=n_dp)
    return {**ZERO_DEFAULTS, **deepspeed_config(cfg, dims, "cuda")["zero_optimization"]}


def gathered_numel(n: int, largest: int, zero: dict[str, Any]) -> int:
    """Elements of ZeRO-3's gathered working set at its peak, the turn from forward to backward
    (partitioned_param_coordinator.py). A module's parameters are not released after use when they
    are used again within stage3_max_reuse_distance elements of the trace; the trace runs forward
    then backward, so a parameter with s elements of forward after it is used again 2 s later:
    the last max_reuse_distance / 2 elements stay gathered. On top: the module being computed (at
    most the largest parameter) and the prefetch of up to stage3_prefetch_bucket_size elements,
    capped by stage3_max_live_parameters less what is already gathered; never more than N."""
    kept = zero["stage3_max_reuse_distance"] // 2
    prefetch = min(zero["stage3_prefetch_bucket_size"], max(0, zero["stage3_max_live_parameters"] - kept))
    return min(n, kept + prefetch + largest)


def zero_terms(cfg: DictConfig, shapes: list[torch.Size], stage: int, n_dp: int) -> list[ZeroTerm]:
    """One rank's tensors under ZeRO `stage` over `n_dp` data-parallel ranks, for parameters of
    these shapes (see the module docstring for each term and its source)."""
    zero = zero_settings(cfg, n_dp)
    b = dtype_of(cfg.precision.compute_dtype).itemsize  # DeepSpeed's model dtype (bf16/fp16/fp32)
    n = sum(math.prod(s) for s in shapes)
    part = -(-n // n_dp)
    largest = max((math.prod(s) for s in shapes), default=0)
    state = optimizer_memory.state_bytes(cfg, [torch.Size((part,))], FP32)  # one flat fp32 partition
    bucket = zero["reduce_bucket_size"] * b * (2 if zero["overlap_comm"] and stage < 3 else 1)
    off = offload_option(cfg)
    opt_where = off.optimizer.value  # "device", "host" or "nvme"
    terms: list[ZeroTerm] = []

    def add(label, nbytes, where, phase, slot):
        terms.append(ZeroTerm(label, int(nbytes), where, phase, slot))

    optimizer_on_host = off.optimizer is not Place.DEVICE
    if stage < 3:
        add("parameters (flat, model dtype)", n * b, "device", PERSISTENT, PARAMS)
        if optimizer_on_host:
            add("fp32 master partition", part * FP32, "host", PERSISTENT, OPTIMIZER)
            add("optimizer state", state, "host", PERSISTENT, OPTIMIZER)
            add("fp32 gradient partition", part * FP32, "host", PERSISTENT, GRADS)
            add("partition copy (model dtype)", part * b, "host", PERSISTENT, PARAMS)
            add("gradient staging (largest parameter)", largest * b, "host", PERSISTENT, GRADS)
            add("gradient staging (largest parameter)", largest * b, "device", PERSISTENT, GRADS)
        else:
            add("fp32 master partition", part * FP32, "device", PERSISTENT, OPTIMIZER)
            add("optimizer state", state, "device", PERSISTENT, OPTIMIZER)
            add("reduced gradient partition", part * b, "device", STEP, GRADS)
            add("fp32 gradient partition", part * FP32, "device", STEP, GRADS)
        add("reduce bucket (IPG)", bucket, "device", BACKWARD, TRANSIENT)
        add("autograd gradient (largest parameter)", largest * b, "device", BACKWARD, TRANSIENT)
        return terms

    params_where = off.params.value
    add("parameter partition", part * b, params_where, PERSISTENT, PARAMS)
    if optimizer_on_host:
        add("fp32 master partition", part * FP32, opt_where, PERSISTENT, OPTIMIZER)
        add("optimizer state", state, opt_where, PERSISTENT, OPTIMIZER)
        add("fp32 gradient partition", part * FP32, "host", PERSISTENT, GRADS)
        # grad_partitions_flat_buffer is made on DeepSpeed's self.device, the host under optimizer
        # offload (stage3.py: self.device = cpu when offload_optimizer); measured in host RSS
        add("gradient partition buffer", part * b, "host", PERSISTENT, GRADS)
    else:  # none, params_cpu (memtrain's config offloads only the parameters: the optimizer stays)
        add("fp32 master partition", part * FP32, "device", PERSISTENT, OPTIMIZER)
        add("optimizer state", state, "device", PERSISTENT, OPTIMIZER)
        add("gradient partition buffer", part * b, "device", PERSISTENT, GRADS)
        add("fp32 gradient partition", min(part, zero["sub_group_size"]) * FP32, "device", STEP, GRADS)
    add("reduce bucket (IPG)", bucket, "device", PERSISTENT, TRANSIENT)
    add("gathered parameters (working set)", gathered_numel(n, largest, zero) * b, "device", FORWARD_BACKWARD,
        TRANSIENT)
    add("autograd gradient (largest parameter)", largest * b, "device", BACKWARD, TRANSIENT)
    return terms


def in_step_bytes(terms: list[ZeroTerm], where: str = "device") -> int:
    """Bytes live inside the optimizer step (persistent and step terms) at `where`."""
    return sum(t.nbytes for t in terms if t.where == where and t.phase in (PERSISTENT, STEP))
