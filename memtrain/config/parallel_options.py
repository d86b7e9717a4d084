"""The parallel options (`parallel.name`, conf/parallel/*.yaml) and the offloads (`offload.name`,
conf/offload/*.yaml): one registry of records, each declaring what its option does and what it
composes with. Validation, the estimator, the planner, the cost model and the runtime ask the
record (`parallel_option(cfg).zero_stage >= 2`, `.backend is Backend.DEEPSPEED`,
`offload_option(cfg).optimizer is Place.HOST`), never the option's name. Light (no torch), so a
config error is reported without importing the backends.

    option        backend    data parallel  ZeRO stage  offloads of model states  model-parallel dims
    single        torch      none           0           -                         -
    ddp           torch      replicate      0           -                         cp, pp
    fsdp          torch      shard          3 (FSDP2)   params_cpu                tp, cp, pp
    hsdp          torch      hybrid         3 (FSDP2)   params_cpu                tp, cp, pp
    zero1, zero2  deepspeed  shard          1, 2        optimizer_cpu             -
    zero3         deepspeed  shard          3           optimizer_cpu, params_cpu, nvme
    dap, pp, tp, cp, spatial: torch, no data parallelism of their own, their own dimension

Every option takes activations_cpu (torch.autograd.graph.save_on_cpu) and none.

A new data-parallel option is one `ParallelOption` record in PARALLEL_REGISTRY plus its YAML in
conf/parallel/. What the code then does with it follows from the record: the torch strategy wraps
the model in DDP for data_parallel=replicate and in FSDP2 for a torch option that shards parameters,
the DeepSpeed strategy runs every deepspeed option at its zero_stage, and the estimator, planner and
cost model count its memory and communication from the same fields. A new *kind* of backend (a
third value of `Backend`, or a torch option that shards only optimizer states) also needs its
strategy in memtrain/engine and its memory model in memtrain/memory, and the fields here that they
read. A new offload is one `OffloadOption` record plus conf/offload/<name>.yaml, and its name in the
`offloads` of the parallel options whose backends implement it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum
from typing import Any

from memtrain.config.errors import ConfigError


class Backend(str, Enum):
    """Which library runs the option's data parallelism and optimizer step."""

    TORCH = "torch"  # torch.distributed: DDP, FSDP2 (fully_shard), DTensor model parallelism
    DEEPSPEED = "deepspeed"  # deepspeed.initialize with a ZeRO config (memtrain.distributed.zero)


class DataParallel(str, Enum):
    """What the option does with the data-parallel ranks (parallel.dp_replicate, parallel.dp_shard)."""

    NONE = "none"  # no data parallelism of its own (a model-parallel option, or one process)
    REPLICATE = "replicate"  # a full copy of the model states per rank, gradients all-reduced (DDP)
    SHARD = "shard"  # model states sharded over the data-parallel ranks (FSDP2, ZeRO)
    HYBRID = "hybrid"  # sharded within dp_shard groups, replicated across dp_replicate (HSDP)


class MetaBuild(str, Enum):
    """How an option builds a model no rank may hold whole (trainer.init_device=meta)."""

    NONE = "none"  # it wraps a model every rank holds whole (DDP, ZeRO-1/2, one process, DAP, ...)
    FULLY_SHARD = "fully_shard"  # FSDP2: built on the meta device, sharded, each rank's shards materialised
    ZERO_INIT = "zero_init"  # DeepSpeed ZeRO-3: built inside deepspeed.zero.Init, partitioned module by module


class Place(str, Enum):
    """Where an offload keeps what it moves."""

    DEVICE = "device"
    HOST = "host"
    NVME = "nvme"


@dataclasses.dataclass(frozen=True)
class ParallelOption:
    """One parallel option (parallel.name) and what it declares.

    zero_stage: what is sharded over the data-parallel ranks, in ZeRO's terms (Rajbhandari et al.
    2020, sec. 5): 0 nothing, 1 optimizer states, 2 also gradients, 3 also parameters (FSDP2 is 3).
    offloads: the offload options (offload.name) it takes, each with a memory model in the estimator.
    model_dims: the model-parallel mesh dimensions (memtrain.models.family) it composes with; a
    degree other than 1 on any other is refused. Which of them a model implements is its family's.
    dp_dims: the data-parallel mesh dimensions it takes; a degree other than 1 on the other is refused.
    needs_process_group: whether it communicates over ranks (DDP, FSDP, DeepSpeed... want their
    wrappers even on one rank); single does not: it runs one process, every degree 1. (Every run
    has a process group and a mesh, single's a one-rank one: memtrain.distributed.launch.)
    compiles: whether trainer.compile (regional compilation, applied by the torch strategies) composes.
    zeroth_order: whether zeroth-order optimizers (MeZO: whole replicated parameters perturbed in
    place) run under it."""

    name: str
    backend: Backend
    data_parallel: DataParallel
    zero_stage: int
    offloads: tuple[str, ...]
    model_dims: tuple[str, ...]
    dp_dims: tuple[str, ...]
    needs_process_group: bool = True
    compiles: bool = True
    zeroth_order: bool = False

    @property
    def shards_optimizer(self) -> bool:
        return self.zero_stage >= 1

    @property
    def shards_grads(self) -> bool:
        return self.zero_stage >= 2

    @property
    def shards_params(self) -> bool:
        return self.zero_stage >= 3

    @property
    def composes_with_pipeline(self) -> bool:
        return "pp" in self.model_dims

    @property
    def fsdp(self) -> bool:
        """FSDP2 (fully_shard): parameters, gradients and optimizer states as DTensor shards, gathered
        in the compute dtype, gradients reduced in fp32."""
        return self.backend is Backend.TORCH and self.shards_params

    @property
    def flat_partitions(self) -> bool:
        """DeepSpeed ZeRO: the optimizer sees flat 1-D fp32 partitions (its master copy), whatever
        the model's dtype."""
        return self.backend is Backend.DEEPSPEED

    @property
    def computes_with_cast_params(self) -> bool:
        """The forward runs on parameters cast to the compute dtype (FSDP's mixed-precision policy,
        DeepSpeed's low-precision model), so the residual stream is in the compute dtype."""
        return self.fsdp or self.backend is Backend.DEEPSPEED

    @property
    def meta_build(self) -> MetaBuild:
        """How trainer.init_device=meta builds under this option: FSDP2 shards a model built on the
        meta device; ZeRO-3 partitions each module as zero.Init builds it; the others need it whole."""
        if self.fsdp:
            return MetaBuild.FULLY_SHARD
        if self.backend is Backend.DEEPSPEED and self.shards_params:
            return MetaBuild.ZERO_INIT
        return MetaBuild.NONE

    @property
    def params_released_after_module_forward(self) -> bool:
        """DeepSpeed ZeRO-3 partitions a module's parameters again as soon as its forward returns."""
        return self.backend is Backend.DEEPSPEED and self.shards_params


@dataclasses.dataclass(frozen=True)
class OffloadOption:
    """One offload option (offload.name): where it keeps the saved activations, the optimizer
    states (and the optimizer step) and the parameters."""

    name: str
    activations: Place = Place.DEVICE
    optimizer: Place = Place.DEVICE
    params: Place = Place.DEVICE

    @property
    def model_states_offloaded(self) -> bool:
        return self.optimizer is not Place.DEVICE or self.params is not Place.DEVICE

    @property
    def uses_nvme(self) -> bool:
        return Place.NVME in (self.activations, self.optimizer, self.params)

    @property
    def moves_anything(self) -> bool:
        return self.model_states_offloaded or self.activations is not Place.DEVICE


_EVERY = ("none", "activations_cpu")
_BOTH_DP = ("dp_replicate", "dp_shard")
_T, _D = Backend.TORCH, Backend.DEEPSPEED
_N, _R, _S, _H = DataParallel.NONE, DataParallel.REPLICATE, DataParallel.SHARD, DataParallel.HYBRID

PARALLEL_REGISTRY: tuple[ParallelOption, ...] = (
    ParallelOption("single", _T, _N, 0, _EVERY, (), (), needs_process_group=False, zeroth_order=True),
    ParallelOption("ddp", _T, _R, 0, _EVERY, ("cp", "pp"), _BOTH_DP, zeroth_order=True),
    ParallelOption("fsdp", _T, _S, 3, ("none", "params_cpu", "activations_cpu"), ("tp", "cp", "pp"), _BOTH_DP),
    ParallelOption("hsdp", _T, _H, 3, ("none", "params_cpu", "activations_cpu"), ("tp", "cp", "pp"), _BOTH_DP),
    ParallelOption("zero1", _D, _S, 1, ("none", "optimizer_cpu", "activations_cpu"), (), _BOTH_DP, compiles=False),
    ParallelOption("zero2", _D, _S, 2, ("none", "optimizer_cpu", "activations_cpu"), (), _BOTH_DP, compiles=False),
    ParallelOption("zero3", _D, _S, 3, ("none", "optimizer_cpu", "params_cpu", "nvme", "activations_cpu"), (),
                   _BOTH_DP, compiles=False),
    ParallelOption("dap", _T, _N, 0, _EVERY, ("dap",), ("dp_replicate",)),
    ParallelOption("pp", _T, _N, 0, _EVERY, ("pp",), _BOTH_DP),
    ParallelOption("tp", _T, _N, 0, _EVERY, ("tp",), ()),
    ParallelOption("cp", _T, _N, 0, _EVERY, ("cp",), ()),
    ParallelOption("spatial", _T, _N, 0, _EVERY, ("spatial",), ()),
)
OFFLOAD_REGISTRY: tuple[OffloadOption, ...] = (
    OffloadOption("none"),
    OffloadOption("activations_cpu", activations=Place.HOST),  # torch.autograd.graph.save_on_cpu
    OffloadOption("optimizer_cpu", optimizer=Place.HOST),  # ZeRO-Offload
    OffloadOption("params_cpu", params=Place.HOST),  # FSDP2 CPUOffloadPolicy (states and step), ZeRO-3 offload_param
    OffloadOption("nvme", optimizer=Place.NVME, params=Place.NVME),  # ZeRO-Infinity
)
_PARALLEL = {o.name: o for o in PARALLEL_REGISTRY}
_OFFLOAD = {o.name: o for o in OFFLOAD_REGISTRY}
PARALLEL_OPTIONS = tuple(_PARALLEL)
OFFLOAD_OPTIONS = tuple(_OFFLOAD)


def _name_of(cfg_or_name: Any, group: str) -> str:
    if isinstance(cfg_or_name, str):
        return cfg_or_name
    node = cfg_or_name[group] if isinstance(cfg_or_name, Mapping) and group in cfg_or_name else cfg_or_name
    return str(node["name"])


def parallel_option(cfg_or_name: Any) -> ParallelOption:
    """The record of a parallel option: by name, from a whole config (cfg.parallel.name) or from its
    parallel node. An unknown name is a ConfigError at 'parallel.name'."""
    name = _name_of(cfg_or_name, "parallel")
    if name not in _PARALLEL:
        raise ConfigError("parallel.name", f"unknown parallel mode {name!r}", allowed=PARALLEL_OPTIONS)
    return _PARALLEL[name]


def offload_option(cfg_or_name: Any) -> OffloadOption:
    """The record of an offload option: by name, from a whole config (cfg.offload.name) or from its
    offload node. An unknown name is a ConfigError at 'offload.name'."""
    name = _name_of(cfg_or_name, "offload")
    if name not in _OFFLOAD:
        raise ConfigError("offload.name", f"unknown offload {name!r}", allowed=OFFLOAD_OPTIONS)
    return _OFFLOAD[name]


def parallel_options_for(offload: str) -> tuple[str, ...]:
    """The parallel options that work with offload option `offload` (() for an unknown one)."""
    return tuple(o.name for o in PARALLEL_REGISTRY if offload in o.offloads)


def parallel_options_with(dim: str) -> tuple[str, ...]:
    """The parallel options that compose with model-parallel dimension `dim`, the one named after it
    first (parallel=tp for tp)."""
    options = [o.name for o in PARALLEL_REGISTRY if dim in o.model_dims]
    return tuple(sorted(options, key=lambda p: p != dim))


def offloads_without_model_states() -> tuple[str, ...]:
    """The offload options that leave parameters, gradients and optimizer states on the device."""
    return tuple(o.name for o in OFFLOAD_REGISTRY if not o.model_states_offloaded)
