"""Host memory (RAM) per rank and per node, at start-up and in steady state (memtrain estimate).

A rank's host memory goes through two peaks. At start-up the Trainer builds the whole model on
trainer.device in param_dtype on every rank (memtrain.engine.trainer), then the strategy wraps it:
DDP broadcasts rank 0's parameters through a flattened copy of them, FSDP2 shards them, DeepSpeed
(deepspeed.initialize) flattens and partitions them and makes its ZeRO buffers; the optimizer's
state does not exist yet (torch optimizers make it at the first step). In steady state (the
steps) the offloaded model states are all there (memtrain.memory.zero_memory), with the
activations saved on the host under offload=activations_cpu.

Each term is one rank's bytes, with `phase` "startup" or "steady" and `kind` "persistent" (kept),
"transient" (freed before the phase ends), "build" (start-up, before the wrapping: the whole
model, alone in memory) or "in-step" (steady state: live in the backward or the optimizer step
only). The start-up peak is the larger of the build terms and the persistent terms plus the
largest transient; the steady-state peak adds every in-step term to the persistent ones (an
upper bound: the backward's and the step's buffers do not all coexist), and `steady_resident`
is what stays between steps (persistent terms only). With trainer.device=cuda only the host-side terms count: memtrain builds the
model on the GPU, so no rank holds a host copy of the whole model (DeepSpeed's
estimate_zero2/3_model_states_mem_needs_all_cold assumes the model is built on the host on every
rank, x1.5 for buffers: it is the figure for a model loaded on the CPU first). With
trainer.device=cpu the "device" is the host, so every term counts, and reduce buckets count only
the pages the gradients fill (at most N b): RSS grows with pages written, and torch.empty does not
write.

With trainer.init_device=meta (or auto resolving to it: memtrain.config.init_device, with the
hardware group's memory as the budget unless trainer.init_budget_gb is set) no rank holds the whole
model: under fsdp/hsdp it is built on the meta device, sharded, and only each rank's shards are
materialised. Either way the start-up term "model built whole" (N x param_dtype per rank: on the GPU for device=cuda, in RAM for device=cpu) is not
there. Under parallel=zero3 meta builds the model inside deepspeed.zero.Init (memtrain.engine.
zero_strategy.build_partitioned), which partitions each module as soon as it is built: "ZeRO-3's
partitions made beside the whole model" gives way to the largest module built whole (its fp32
parameters and their cast) while the partitions already exist. "DDP broadcast copy" is eager-only
(DDP takes no meta build). The steady-state terms do not change.

Not counted, and excluded from the measurement: each process's own runtime (the interpreter,
torch, DeepSpeed, gloo/NCCL, on a GPU the CUDA context: ~0.3 GiB on CPU after imports, measured
in scripts/bench/host_memory.py), the data set and the pinned-memory caching allocator's rounding
(pin_memory rounds each block up to a power of two on CUDA).

Checked: resident host memory of 2 gloo ranks on CPU, start-up and steps, for zero2 +
optimizer_cpu, zero3 + params_cpu, zero3 + optimizer_cpu (tests/distributed/test_host_memory.py;
scripts/bench/host_memory.py also runs ddp, fsdp and zero2 for reference).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from omegaconf import DictConfig

from memtrain.config.errors import as_enum
from memtrain.config.parallel_options import Backend, DataParallel, Place, offload_option, parallel_option
from memtrain.config.schema import Device, InitDevice
from memtrain.precision.amp import dtype_of

STARTUP, STEADY = "startup", "steady"
PERSISTENT, TRANSIENT, BUILD, IN_STEP = "persistent", "transient", "build", "in-step"
FP32 = 4


@dataclass(frozen=True)
class HostTerm:
    """One rank's host bytes of one kind: `label` what it is, `nbytes` its size, `phase` "startup"
    or "steady", `kind` "persistent", "transient" (live only for a moment of its phase) or "build" (live
    before the strategy's wrapping, when nothing else of the model exists)."""

    label: str
    nbytes: int
    phase: str
    kind: str


@dataclass
class HostEstimate:
    """Host bytes per rank and per node (ranks per node = launcher.nproc_per_node) at the start-up
    peak and the steady-state peak, with the terms they are made of (`terms`, per rank)."""

    startup_per_rank: int
    steady_per_rank: int
    steady_resident_per_rank: int  # held between steps: the persistent steady-state terms
    ranks_per_node: int
    device_is_host: bool  # trainer.device=cpu: the device terms are in host memory too
    terms: list = field(default_factory=list)
    # trainer.init_device as the Trainer would resolve it ("eager" or "meta"; auto decided)
    init_device: str = "eager"

    @property
    def startup_per_node(self) -> int:
        return self.startup_per_rank * self.ranks_per_node

    @property
    def steady_per_node(self) -> int:
        return self.steady_per_rank * self.ranks_per_node

    def as_dict(self) -> dict:
        return {**asdict(self), "startup_per_node": self.startup_per_node, "steady_per_node": self.steady_per_node}


def phase_peak(terms: list[HostTerm], phase: str) -> int:
    """A phase's peak: the larger of its build terms (summed) and its persistent terms plus its
    largest transient term."""
    mine = [t for t in terms if t.phase == phase]
    persistent = sum(t.nbytes for t in mine if t.kind in (PERSISTENT, IN_STEP))
    wrapped = persistent + max((t.nbytes for t in mine if t.kind == TRANSIENT), default=0)
    return max(wrapped, sum(t.nbytes for t in mine if t.kind == BUILD))


def device_is_host(cfg: DictConfig) -> bool:
    """Whether the run trains on the CPU (trainer.device=cpu), so its 'device' memory is host
    memory. trainer.device=auto counts as the GPU of the hardware group the estimate is for,
    whatever the machine running `memtrain estimate` has."""
    return as_enum(cfg.trainer.device, Device) is Device.cpu


def host_estimate(cfg: DictConfig, est) -> HostEstimate:
    """Host bytes for the estimate `est` (memtrain.memory.estimator.MemoryEstimate) of config
    `cfg`: start-up and steady-state terms per rank (see the module docstring for each term)."""
    on_host = device_is_host(cfg)
    terms: list[HostTerm] = []

    def add(label: str, nbytes: int, phase: str, kind: str = PERSISTENT) -> None:
        if nbytes:
            terms.append(HostTerm(label, int(nbytes), phase, kind))

    n = est.n_params
    param_bytes = dtype_of(cfg.precision.param_dtype).itemsize
    opt, off = parallel_option(cfg), offload_option(cfg)

    # -- start-up: the model built whole, then wrapped ----------------------------------------------
    build = n * param_bytes
    chosen = init_device(cfg, n, on_host)
    whole = chosen is InitDevice.eager
    if on_host and whole:
        add("model built whole on each rank (param_dtype)", build, STARTUP, BUILD)
    if opt.backend is Backend.DEEPSPEED:
        _zero_startup(cfg, est, on_host, whole, add)
    elif on_host:
        if opt.data_parallel is DataParallel.REPLICATE:
            # DDP's _sync_module_states broadcasts the parameters in flattened buckets: a copy of them all
            add("DDP broadcast copy of the parameters", build, STARTUP, BUILD)
        add("parameters (as sharded/replicated)", est.params, STARTUP)
    elif opt.fsdp and off.params is Place.HOST:
        add("parameter shards (CPUOffloadPolicy)", _fsdp_host_param_bytes(cfg, est), STARTUP)

    # -- steady state: the steps ----------------------------------------------------------------------
    if opt.backend is Backend.DEEPSPEED:
        for t in est.model_state_terms:
            if t["where"] == "host" or (on_host and t["where"] == "device"):
                nbytes = t["nbytes"]
                if on_host and t["label"] == "reduce bucket (IPG)":
                    nbytes = min(nbytes, n * dtype_of(cfg.precision.compute_dtype).itemsize)
                add(f"{t['label']} ({t['where']}, {t['phase']})", nbytes, STEADY,
                    PERSISTENT if t["phase"] == "persistent" else IN_STEP)
    else:
        if on_host:
            add("parameters, gradients, optimizer states", est.params + est.grads + est.optimizer, STEADY)
            add("gathered parameters", est.gathered, STEADY, IN_STEP)
        host_states = est.host - _host_activation_bytes(cfg, est)
        add("offloaded model states (params, grads, optimizer)", host_states, STEADY)
    if on_host:
        add("activations", est.activations, STEADY, IN_STEP)
    add("activations saved on the host (activations_cpu)", _host_activation_bytes(cfg, est), STEADY)

    return HostEstimate(
        startup_per_rank=phase_peak(terms, STARTUP),
        steady_per_rank=phase_peak(terms, STEADY),
        steady_resident_per_rank=sum(t.nbytes for t in terms if t.phase == STEADY and t.kind == PERSISTENT),
        ranks_per_node=int(cfg.launcher.nproc_per_node),
        device_is_host=on_host,
        terms=[asdict(t) for t in terms],
        init_device=chosen.name,  # a name: estimate --json writes it
    )


def init_device(cfg: DictConfig, n_params: int, on_host: bool) -> InitDevice:
    """trainer.init_device resolved as the Trainer would on the hardware group's machine (InitDevice.eager
    or InitDevice.meta): auto's budget is trainer.init_budget_gb, else hardware.host_mem_gb for trainer.device=cpu
    (the whole node's memory: the host is the device) or hardware.gpu_mem_gb."""
    from memtrain.config.init_device import GIB, budget_bytes, choose_init_device
    from memtrain.config.families import get_spec

    device_gb = cfg.hardware.host_mem_gb if on_host else cfg.hardware.gpu_mem_gb
    return choose_init_device(cfg, n_params, budget_bytes(cfg, device_gb * GIB),
                              get_spec(cfg.model.arch).init_weights is not None)


def _zero_startup(cfg: DictConfig, est, on_host: bool, whole: bool, add) -> None:
    """deepspeed.initialize's host bytes: every ZeRO term allocated at init (all persistent ones
    but the optimizer's state, which torch makes at the first step, and, on the CPU, the reduce
    bucket, written only in the backward), plus its transients (DeepSpeed 0.19.8):
    stage 1/2 without offload: initialize_optimizer_states sets a zeroed fp32 gradient partition
    (P 4) and drops it; stage 3: the parameter partitions are made while the whole parameters
    still exist (partition_parameters.py; under trainer.init_device=meta zero.Init makes them module
    by module while the model is built, only the module being built whole besides, `whole` False),
    and initialize_optimizer_states makes a zeroed fp32
    buffer of the largest sub-group (min(P, sub_group_size) 4) on DeepSpeed's self.device (the
    host under optimizer offload), freed when it returns."""
    from memtrain.memory.zero_memory import zero_settings

    stage, off = parallel_option(cfg).zero_stage, offload_option(cfg)
    dims_dp = est.dp_shard * est.dp_replicate
    part = -(-est.n_params // dims_dp)
    low = dtype_of(cfg.precision.compute_dtype).itemsize
    optimizer_on_host = off.optimizer is not Place.DEVICE
    init = [t for t in est.model_state_terms
            if t["phase"] == "persistent" and t["label"] != "optimizer state" and t["label"] != "reduce bucket (IPG)"
            and (t["where"] == "host" or (on_host and t["where"] == "device"))]
    for t in init:
        add(f"{t['label']} ({t['where']})", t["nbytes"], STARTUP)
    if stage < 3:
        if on_host and not optimizer_on_host:
            add("zeroed fp32 gradient partition of initialize_optimizer_states", part * FP32, STARTUP, TRANSIENT)
        return
    if on_host and whole:
        add("parameter partitions, made beside the whole model", part * low, STARTUP, BUILD)
    elif on_host:
        # zero.Init (trainer.init_device=meta): the partitions are the model from the start; each
        # module is whole only while it is built, in fp32 and cast (memtrain.engine.zero_strategy),
        # its largest parameter standing for it (a weight; its bias is far smaller). Both are build
        # terms: the fp32 master partition and the gradient buffer come later, in deepspeed.initialize
        from memtrain.memory.estimator import param_shapes

        largest = max((math.prod(s) for s in param_shapes(cfg)), default=0)
        add("parameter partitions, made while zero.Init builds the model", part * low, STARTUP, BUILD)
        add("largest module built whole inside zero.Init (fp32 and its cast)", largest * (FP32 + low), STARTUP, BUILD)
    if on_host or optimizer_on_host:
        # made before the gradient partition buffer (P b, _setup_for_real_optimizer), which it
        # never meets: counted net of it
        sub_group = zero_settings(cfg, dims_dp)["sub_group_size"]
        add("fp32 gradient buffer of initialize_optimizer_states, net of the gradient partition buffer made after it",
            max(0, min(part, sub_group) * FP32 - part * low), STARTUP, TRANSIENT)
    if off.params is Place.HOST and not on_host:
        # partition_parameters.py makes each parameter's partition on the host, then stage3.py
        # copies them into one flat host buffer per parameter group
        add("parameter partitions before the flat host buffer", part * low, STARTUP, TRANSIENT)


def _host_activation_bytes(cfg: DictConfig, est) -> int:
    """The activations offload=activations_cpu keeps on the host (the rest of est.host)."""
    if offload_option(cfg).activations is not Place.HOST:
        return 0
    return sum(est.activations_per_block) + est.activations_outside_blocks


def _fsdp_host_param_bytes(cfg: DictConfig, est) -> int:
    """FSDP2 CPUOffloadPolicy: the parameter shards, on the host from fully_shard on."""
    from memtrain.memory.estimator import flat, model_state_bytes, param_units, shard

    params, _, _ = model_state_bytes(cfg, [shard(s, est.dp_shard) for s in flat(param_units(cfg))])
    return params
