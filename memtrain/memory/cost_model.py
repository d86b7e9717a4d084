"""A simple, stated cost model of one optimizer step, per device, for `memtrain plan`.

    step = compute + recompute + exposed data-parallel communication + model-parallel (dap, tp,
           cp, pp) communication + offload traffic and host optimizer + fixed per-block latency

compute: forward FLOPs x 3 (the backward pass costs two forwards) at hardware.mfu of the peak of the
compute dtype (fp32: the non-tensor-core peak, torch's default without TF32). recompute: one more
forward of every checkpointed block (activation_checkpoint=full or selective every_k). Model parallelism
divides a block's FLOPs by dap x tp x cp and the blocks by pp; pipeline stages add the schedule's
bubble (bubble_fraction). MeZO (a zeroth-order optimizer) runs two forwards and no backward.
Communication: the bytes each device sends per step in every mesh dimension, from
memtrain.memory.comm (est.comm_bytes), over NVLink when the dimension's groups stay inside a node
and over the network when they span nodes (spans_nodes). DDP/ZeRO overlap the data-parallel part
with the backward, FSDP with the whole step, so only the part longer than that is exposed; ZeRO's
gradient reduction overlaps only where memtrain's DeepSpeed config sets overlap_comm (it does not),
ZeRO-1/2's parameter all-gather follows the optimizer step (exposed_dp_seconds); DAP, tp, cp and pp
communication sits on the critical path. The planner ranks by progress_s: step time x the
optimizer steps one first-order step's progress takes (STEPS_RELATIVE: MeZO 100).
Offload moves bytes over PCIe and runs the optimizer on the host (hardware.cpu_optimizer_*).
The constants and their sources are in docs/planner.md; the model ranks options, it does not
promise absolute times.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from omegaconf import DictConfig

from memtrain.config.errors import as_enum
from memtrain.config.parallel_options import Backend, Place, offload_option, parallel_option
from memtrain.config.schema import ACMode, DType, SelectivePolicy
from memtrain.distributed.mesh import ParallelDims
from memtrain.models.activation_checkpoint import checkpointed_block_ids
from memtrain.memory.estimator import MemoryEstimate
from memtrain.config.cfgview import node_key
from memtrain.models import get_spec
from memtrain.models.flops import forward_flops
from memtrain.precision.amp import dtype_of

GiB = 2**30


@dataclass
class StepCost:
    compute_s: float
    recompute_s: float
    dp_comm_s: float  # exposed (not hidden behind compute)
    axial_comm_s: float
    offload_s: float
    latency_s: float
    steps_relative: float = 1.0  # optimizer steps for one first-order step's progress (STEPS_RELATIVE)

    @property
    def total_s(self) -> float:
        """Seconds of one optimizer step."""
        return self.compute_s + self.recompute_s + self.dp_comm_s + self.axial_comm_s + self.offload_s + self.latency_s

    @property
    def progress_s(self) -> float:
        """Seconds for one first-order step's worth of training: what the planner ranks by."""
        return self.total_s * self.steps_relative

    def as_dict(self) -> dict:
        return {**asdict(self), "total_s": self.total_s, "progress_s": self.progress_s}


def peak_flops(hw: DictConfig, compute_dtype: DType | str) -> float:
    """The hardware group's peak FLOP/s for `compute_dtype` (a DType or its name)."""
    return 1e12 * {DType.bfloat16: hw.peak_tflops_bf16, DType.float16: hw.peak_tflops_fp16,
                   DType.float32: hw.peak_tflops_fp32}[as_enum(compute_dtype, DType)]


def offload_bytes(cfg: DictConfig, n_params: int, dims: ParallelDims) -> tuple[float, float]:
    """(bytes over PCIe per rank per step, parameters this rank's host optimizer updates)."""
    opt, off = parallel_option(cfg), offload_option(cfg)
    c = dtype_of(cfg.precision.compute_dtype).itemsize
    part = n_params / max(dims.dp, 1)
    if off.optimizer is Place.HOST and off.params is Place.DEVICE:  # gradients out, updated parameters back
        return 2 * part * c, part
    if off.params is Place.HOST and opt.backend is Backend.DEEPSPEED:  # also the parameter partition for forward and backward
        return 4 * part * c, part
    if off.params is Place.HOST:  # FSDP2 CPUOffloadPolicy: fp32 shards in twice, gradients out
        return 3 * part * dtype_of(cfg.precision.param_dtype).itemsize, part
    # activations_cpu: counted by step_cost from the host activations; nvme: not modelled
    return 0.0, 0.0


# Pipeline bubble: the fraction of a schedule's time the average rank idles, with m pipeline
# micro-batches on pp ranks and v stages per rank. GPipe and 1F1B: (pp-1)/(m+pp-1) (Huang et al.
# 2019 sec. 2.2; Narayanan et al. 2021 sec. 2.2.1). Interleaved 1F1B divides the bubble time by v
# (Narayanan et al. 2021 sec. 2.2.2). ZB-H1 ("zero_bubble") keeps a third of 1F1B's bubble and
# ZB-V none, with the forward, input-gradient and weight-gradient passes of equal time (Qi et al.
# 2024, sec. 3.1 and 6).
BUBBLE_SHARE = {"gpipe": 1.0, "1f1b": 1.0, "zero_bubble": 1.0 / 3, "zbv": 0.0}


def bubble_fraction(schedule: str, pp: int, m: int, v: int) -> float:
    if pp <= 1:
        return 0.0
    idle = (pp - 1) / v if schedule == "interleaved_1f1b" else (pp - 1) * BUBBLE_SHARE[schedule]
    return idle / (m + idle)


def spans_nodes(dims: ParallelDims, dim: str, gpus_per_node: int) -> bool:
    """Whether a mesh dimension's groups cross nodes: ranks are laid out in DIMS order (the last
    dimension innermost), so `dim`'s group spans degree x (product of the later degrees) ranks."""
    from memtrain.distributed.mesh import DIMS

    inner = 1
    for d in DIMS[DIMS.index(dim) + 1:]:
        inner *= getattr(dims, d)
    return inner * getattr(dims, dim) > gpus_per_node


# dimensions whose collectives overlap with compute (gradient buckets, FSDP prefetch); the model-
# parallel ones (tp, cp, pp, dap) sit on the critical path
DATA_PARALLEL = ("dp_replicate", "dp_shard")


def comm_seconds(cfg: DictConfig, est: MemoryEstimate, dims: ParallelDims) -> dict[str, float]:
    """Seconds per step of every mesh dimension's communication: memtrain.memory.comm's bytes sent
    per device (est.comm_bytes, the families' model-parallel terms included), over NVLink when the dimension stays inside a node and
    over the network when it spans nodes."""
    hw = cfg.hardware
    out = {}
    volumes = {dim: sum(c.values()) for dim, c in est.comm_bytes.items()}
    for dim, nbytes in volumes.items():
        gbps = hw.inter_node_gbps if spans_nodes(dims, dim, hw.gpus) else hw.intra_node_gbps
        out[dim] = nbytes / (1e9 * gbps)
    return out


def zero_overlap_comm(cfg: DictConfig, dims: ParallelDims) -> bool:
    """Whether the DeepSpeed config memtrain runs (memtrain.distributed.zero.deepspeed_config)
    overlaps gradient reduction with the backward (zero_optimization.overlap_comm)."""
    from memtrain.distributed.zero import deepspeed_config

    key = (node_key(cfg.parallel), node_key(cfg.offload))
    if key not in _OVERLAP:
        _OVERLAP[key] = bool(deepspeed_config(cfg, dims, "cuda")["zero_optimization"]["overlap_comm"])
    return _OVERLAP[key]


_OVERLAP: dict[tuple[str, str], bool] = {}


def exposed_dp_seconds(cfg: DictConfig, est: MemoryEstimate, dims: ParallelDims, compute: float,
                       recompute: float) -> float:
    """Seconds of data-parallel communication not hidden behind compute, collective by collective:

    - DDP's gradient all-reduce (buckets during the backward): hidden behind the backward;
    - FSDP2/HSDP's parameter all-gathers (prefetched) and gradient reduce-scatters: behind the
      whole forward, backward and recompute;
    - DeepSpeed ZeRO: the gradient reduce-scatter overlaps the backward only with
      zero_optimization.overlap_comm, which memtrain's DeepSpeed config sets to false, so it is
      exposed; ZeRO-1/2's all-gather of the updated parameters runs after the optimizer step
      (exposed); ZeRO-3's parameter all-gathers are prefetched during forward and backward (hidden
      behind them)."""
    hw, opt = cfg.hardware, parallel_option(cfg)
    whole, backward, never = 0.0, 0.0, 0.0
    deepspeed = opt.backend is Backend.DEEPSPEED
    overlap = zero_overlap_comm(cfg, dims) if deepspeed else False
    for dim in DATA_PARALLEL:
        gbps = hw.inter_node_gbps if spans_nodes(dims, dim, hw.gpus) else hw.intra_node_gbps
        for collective, nbytes in est.comm_bytes.get(dim, {}).items():
            t = nbytes / (1e9 * gbps)
            if deepspeed:
                if collective.startswith("all_gather"):  # ZeRO-3 prefetches; ZeRO-1/2 gather after the step
                    whole += t if opt.shards_params else 0.0
                    never += 0.0 if opt.shards_params else t
                elif overlap:
                    backward += t
                else:
                    never += t
            elif opt.fsdp:
                whole += t
            else:
                backward += t
    return never + max(0.0, backward - 2 / 3 * compute) + max(0.0, whole - (compute + recompute))


# Optimizer steps needed for the same training progress as a first-order optimizer's step. MeZO
# (SPSA) estimates the gradient from two forwards along one random direction: Malladi et al. 2023
# ("Fine-Tuning Language Models with Just Forward Passes") run it for 100K steps where fine-tuning
# with Adam runs 1K (their RoBERTa-large experiments), so the planner counts 100 steps for one. A
# stated assumption from the paper's step budgets, not a convergence law.
STEPS_RELATIVE = {"MeZO": 100.0}


def steps_relative(cfg: DictConfig) -> float:
    from memtrain.memory.optimizer_memory import optimizer_name

    return STEPS_RELATIVE.get(optimizer_name(cfg), 1.0)


def step_cost(cfg: DictConfig, est: MemoryEstimate) -> StepCost:
    """Per-device seconds of one optimizer step (see the module's docstring)."""
    from memtrain.memory.optimizer_memory import zeroth_order

    hw, dims = cfg.hardware, est.dims  # the degrees the estimate resolved
    if dims is None:
        raise ValueError("step_cost needs an estimate made by memtrain.memory.estimator.estimate (its dims)")
    spec = get_spec(cfg.model.arch)
    n_blocks = spec.num_blocks(cfg.model)
    accum = cfg.trainer.grad_accum
    block, outside, core = forward_flops(cfg)
    # model parallelism splits each block's work: DAP the Evoformer's representations, tp the heads
    # and hidden units, cp the tokens; what runs outside the blocks is replicated under DAP and split
    # under tp (vocabulary-parallel output) and cp (its tokens)
    split = dims.dap * dims.tp * dims.cp
    block, core, outside = block / split, core / split, outside / (dims.tp * dims.cp)
    rate = peak_flops(hw, cfg.precision.compute_dtype) * hw.mfu
    # pipeline stages: a rank runs its n_blocks / pp blocks (and, the last rank, the head)
    forward = n_blocks / dims.pp * block + outside
    ac = cfg.activation_checkpoint
    mode, policy = as_enum(ac.mode, ACMode), as_enum(ac.policy, SelectivePolicy)
    recomputed = len(checkpointed_block_ids(n_blocks, mode, policy, ac.every_k)) / dims.pp * block
    if mode is ACMode.selective and policy is SelectivePolicy.attention:
        recomputed = n_blocks / dims.pp * core
    zo = zeroth_order(cfg)
    if zo:  # MeZO: two forwards (theta + eps z, theta - eps z), no backward, nothing recomputed,
        # and four passes over the parameters (perturb, perturb back, restore, update: read + write)
        compute = accum * 2 * forward / rate + 4 * 2 * est.n_params * 4 / (1e9 * hw.hbm_gbps)
        recompute = 0.0
    else:
        compute = accum * 3 * forward / rate
        recompute = accum * recomputed / rate
    stretch, launches = 1.0, accum * (2 if zo else 3) * n_blocks / dims.pp
    if dims.pp > 1:  # idle ranks in the schedule's bubble stretch the step
        f = bubble_fraction(cfg.parallel.pp_schedule, dims.pp, cfg.parallel.pp_microbatches,
                            cfg.parallel.pp_stages_per_rank)
        stretch = 1 / (1 - f)
        compute, recompute = compute * stretch, recompute * stretch
        launches *= cfg.parallel.pp_microbatches  # every pipeline micro-batch runs the stage's blocks

    comm = comm_seconds(cfg, est, dims)
    if zo:  # the replicas only all-reduce a scalar projected gradient, not the gradients
        comm = {d: t for d, t in comm.items() if d not in DATA_PARALLEL}
    exposed = 0.0 if zo else exposed_dp_seconds(cfg, est, dims, compute, recompute)
    axial = sum(t for d, t in comm.items() if d not in DATA_PARALLEL)

    pcie, host_params = offload_bytes(cfg, est.n_params, dims)
    ranks_per_node = min(dims.world_size, hw.gpus)
    offload = pcie / (1e9 * hw.pcie_gbps) + host_params * ranks_per_node / (1e9 * hw.cpu_optimizer_gparams_per_s)
    if offload_option(cfg).activations is Place.HOST:
        offload = 2 * est.host / (1e9 * hw.pcie_gbps)
    latency = launches * stretch * hw.block_latency_us * 1e-6
    return StepCost(compute, recompute, exposed, axial, offload, latency, steps_relative(cfg))
