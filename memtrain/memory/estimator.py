"""Analytic per-device memory model behind `memtrain estimate`.

Model states are exact: parameter shapes come from building the model on the meta device (no
memory is touched), and each optimizer's state is counted tensor by tensor as torch allocates it.
Activations come from the ModelSpec's analytic count of the tensors saved for the backward pass,
combined here with the activation-checkpointing policy.

Data parallelism divides the model states by the sharding degree as ZeRO does (Rajbhandari et al.
2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", sec. 5 and Figure 1);
offloading moves bytes from the device to host memory (`host`) or to disk (`nvme`). Every count is
per rank; the world size is launcher.nnodes x launcher.nproc_per_node.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import torch
from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, as_enum
from memtrain.config.schema import ACMode, SelectivePolicy
from memtrain.distributed.mesh import ParallelDims
from memtrain.distributed.options import Backend, Place, offload_option, parallel_option
from memtrain.memory import optimizer_memory
from memtrain.models.activation_checkpoint import checkpointed_block_ids
from memtrain.config.cfgview import node_key
from memtrain.memory.comm import comm_bytes
from memtrain.memory.phases import optimizer_temporaries, step_phases, zero_phase_terms
from memtrain.memory.precision_memory import (
    precision_activation_parts,
    precision_state_bytes,
)
from memtrain.models import get_spec
from memtrain.models.family import model_parallel_degrees
from memtrain.models.meta import build_on_meta
from memtrain.precision.amp import dtype_of

STEP_BYTES = 4  # torch optimizers keep `step` as a float32 scalar tensor per parameter
FP32 = 4


def _adam_state(shape: torch.Size, param_bytes: int) -> int:
    """exp_avg and exp_avg_sq in the parameter's dtype."""
    return 2 * math.prod(shape) * param_bytes + STEP_BYTES


def _adafactor_state(shape: torch.Size, param_bytes: int) -> int:
    """Factored second moment for matrices (row_var [..., R, 1], col_var [..., 1, C]); a full
    variance for vectors (Shazeer & Stern 2018, Algorithm 4). No first moment."""
    if len(shape) > 1:
        rows = math.prod(shape[:-1])
        cols = math.prod(shape[:-2]) * shape[-1]
        return (rows + cols) * param_bytes + STEP_BYTES
    return math.prod(shape) * param_bytes + STEP_BYTES


OPTIMIZER_STATE = {"AdamW": _adam_state, "Adam": _adam_state, "Adafactor": _adafactor_state}


@dataclass
class ModelStates:
    """One rank's model-state bytes, by where they live."""

    params: int = 0
    grads: int = 0
    optimizer: int = 0
    gathered: int = 0  # device: unsharded parameters and gradients of the units being computed
    host: int = 0
    nvme: int = 0
    terms: tuple = ()  # DeepSpeed ZeRO: every term, labelled (memtrain.memory.zero_memory.ZeroTerm)


@dataclass
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    activations: int
    total: int  # on the device: params + grads + optimizer + gathered + activations
    n_params: int
    activations_per_block: list[int] = field(default_factory=list)
    activations_outside_blocks: int = 0
    recompute_buffer: int = 0  # one block's activations, live while it is recomputed in backward
    gathered: int = 0  # fsdp/hsdp: parameters and gradients all-gathered for the blocks being computed
    host: int = 0  # bytes in host memory per rank (offloaded model states and activations)
    nvme: int = 0  # bytes on disk per rank (offload=nvme)
    world_size: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    pp: int = 1
    # {mesh dimension: {collective: bytes sent per device per optimizer step}} (memtrain.memory.comm)
    comm_bytes: dict = field(default_factory=dict)
    precision_state: int = 0  # fp8 delayed scaling's amax histories
    # {phase: device bytes at its peak} over one step (memtrain.memory.phases.PHASES), and their max
    phases: dict = field(default_factory=dict)
    peak: int = 0
    # DeepSpeed ZeRO: one rank's tensors, each {label, nbytes, where, phase, slot}
    # (memtrain.memory.zero_memory); empty for the other parallel options
    model_state_terms: list = field(default_factory=list)
    # the degrees this estimate was made for, resolved once (ParallelDims.from_config) and read by
    # the cost model; not part of the JSON, which keeps world_size, dp_replicate, dp_shard and pp
    dims: Optional[ParallelDims] = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("dims")
        return out


def param_units(cfg: DictConfig) -> list[list[torch.Size]]:
    """Parameter shapes by FSDP unit, from a build on the meta device: first the root's own
    parameters (those outside the blocks, tied ones once), then one list per block. Cached per
    model config (memtrain plan estimates many configurations of one model)."""
    key = (cfg.model.arch, node_key(cfg.model))
    units = _PARAM_UNITS.get(key)
    if units is None:
        if len(_PARAM_UNITS) >= 64:
            _PARAM_UNITS.clear()
        units = _PARAM_UNITS[key] = _param_units(cfg.model)
    return [list(u) for u in units]


_PARAM_UNITS: dict[tuple[str, str], tuple[tuple[torch.Size, ...], ...]] = {}


def _param_units(mcfg: DictConfig) -> tuple[tuple[torch.Size, ...], ...]:
    spec = get_spec(mcfg.arch)
    model = build_on_meta(spec.build_model, mcfg)
    blocks = spec.blocks(model)
    in_blocks = {id(p) for p in blocks.parameters()}
    root = tuple(p.shape for p in model.parameters() if id(p) not in in_blocks)
    return (root, *(tuple(p.shape for p in block.parameters()) for block in blocks))


def flat(units: list[list[torch.Size]]) -> list[torch.Size]:
    return [s for unit in units for s in unit]


def param_shapes(cfg: DictConfig) -> list[torch.Size]:
    """Shapes of the model's parameters (tied ones once)."""
    return flat(param_units(cfg))


def numel(shapes: list[torch.Size]) -> int:
    return sum(map(math.prod, shapes))


def shard(shape: torch.Size, n: int) -> torch.Size:
    """One rank's piece of a tensor split on dim 0 over n ranks, rounded up: ceil(rows / n) rows.
    Exact for FSDP2, which pads every shard to that size; DeepSpeed splits one flat buffer evenly,
    so for it this overstates by less than a row per tensor."""
    return torch.Size((-(-shape[0] // n), *shape[1:])) if shape else shape


def optimizer_bytes(cfg: DictConfig, shapes: list[torch.Size], state_bytes: int) -> int:
    """The optimizer's state for parameters of these shapes, its tensors `state_bytes` wide."""
    return optimizer_memory.state_bytes(cfg, shapes, state_bytes)  # every optimizer's formula


def model_state_bytes(cfg: DictConfig, shapes: list[torch.Size]) -> tuple[int, int, int]:
    """(parameters, gradients, optimizer states) in bytes, as torch holds them: parameters in
    param_dtype (autocast keeps them, casting per op), gradients and optimizer states alike."""
    param_bytes = dtype_of(cfg.precision.param_dtype).itemsize
    grads = 0 if optimizer_memory.zeroth_order(cfg) else numel(shapes) * param_bytes  # MeZO: no .grad
    return numel(shapes) * param_bytes, grads, optimizer_bytes(cfg, shapes, param_bytes)


def fsdp_gathered_bytes(cfg: DictConfig, units: list[list[torch.Size]]) -> int:
    """FSDP2's unsharded working set: parameters all-gathered in the compute dtype
    (MixedPrecisionPolicy.param_dtype) for the block being computed and the next one, prefetched
    (the largest block twice), and the root's (embeddings, final norm, output), which FSDP2 keeps
    unsharded from the forward through the backward; plus the largest unit's gradient, unsharded
    in float32 (reduce_dtype) for its reduce-scatter. With parallel.reshard_after_forward=false
    every unit stays gathered from its forward to its backward: all parameters at once."""
    compute = dtype_of(cfg.precision.compute_dtype).itemsize
    sizes = [numel(u) for u in units]
    root, blocks = sizes[0], sizes[1:]
    params = min(root + 2 * max(blocks, default=0), sum(sizes)) if cfg.parallel.reshard_after_forward else sum(sizes)
    return params * compute + max(sizes) * FP32


def torch_states(cfg: DictConfig, units: list[list[torch.Size]], dims: ParallelDims) -> ModelStates:
    """single, ddp, dap: every rank holds all the model states (model_state_bytes); DDP and DAP
    replicate them.

    fsdp, hsdp (FSDP2 fully_shard per block and root): parameters, gradients and optimizer states
    sharded over dp_shard (ZeRO stage 3's P_os+g+p, sec. 5.3) and replicated over dp_replicate
    (hsdp), counted per tensor on the rank-0 shard (`shard`), plus `fsdp_gathered_bytes`.
    offload=params_cpu (CPUOffloadPolicy): the sharded states and the optimizer step live on the
    host; the device keeps only the gathered working set."""
    if not parallel_option(cfg).fsdp:
        return ModelStates(*model_state_bytes(cfg, flat(units)))
    params, grads, optimizer = model_state_bytes(cfg, [shard(s, dims.dp_shard) for s in flat(units)])
    gathered = fsdp_gathered_bytes(cfg, units)
    if offload_option(cfg).params is Place.HOST:
        return ModelStates(gathered=gathered, host=params + grads + optimizer)
    return ModelStates(params, grads, optimizer, gathered)


def zero_states(cfg: DictConfig, units: list[list[torch.Size]], stage: int, n_dp: int) -> ModelStates:
    """DeepSpeed ZeRO stage 1, 2 or 3 over the N_dp data-parallel ranks (Rajbhandari et al. 2020,
    sec. 5: stage 1 partitions the optimizer states, stage 2 also the gradients, stage 3 also the
    parameters), counted tensor by tensor as DeepSpeed allocates them under the config memtrain
    runs (memtrain.memory.zero_memory, which labels each term). The device terms add to the
    table's columns by what they are: parameters; gradients (the reduced gradient partition and the
    fp32 gradient partition of the step); optimizer states (fp32 master partition and the
    optimizer's state); transient (the reduce bucket, ZeRO-3's gathered parameters, one autograd
    gradient). Host and disk terms add to `host` and `nvme`."""
    from memtrain.memory import zero_memory

    terms = zero_memory.zero_terms(cfg, flat(units), stage, n_dp)
    slots = {"params": 0, "grads": 0, "optimizer": 0, "gathered": 0}
    host = nvme = 0
    for t in terms:
        if t.where == "device":
            slots[t.slot] += t.nbytes
        elif t.where == "host":
            host += t.nbytes
        else:
            nvme += t.nbytes
    return ModelStates(**slots, host=host, nvme=nvme, terms=tuple(terms))


def model_states(cfg: DictConfig, units: list[list[torch.Size]], dims: ParallelDims) -> ModelStates:
    opt, offload = parallel_option(cfg), offload_option(cfg).name  # ConfigErrors for unknown options
    if offload not in opt.offloads:
        raise ConfigError("offload.name", f"offload={offload} does not apply to parallel={opt.name}", allowed=opt.offloads)
    if opt.backend is Backend.DEEPSPEED:
        return zero_states(cfg, units, stage=opt.zero_stage, n_dp=dims.dp)
    return torch_states(cfg, units, dims)


def activation_parts(cfg: DictConfig, dims: ParallelDims) -> dict[str, float]:
    """The spec's activation parts (ModelSpec.activation_bytes) for one rank: with QAT's or FP8's
    change, split over the dap, tp, cp or spatial ranks that share a block."""
    spec = get_spec(cfg.model.arch)
    compute = dtype_of(cfg.precision.compute_dtype).itemsize
    # FSDP's mixed-precision policy and DeepSpeed both compute with low-precision parameters, so
    # the residual stream is in the compute dtype and there are no autocast weight copies
    casts_params = parallel_option(cfg).computes_with_cast_params
    residual = compute if casts_params else dtype_of(cfg.precision.param_dtype).itemsize
    parts = spec.activation_bytes(cfg, compute, residual)
    parts = precision_activation_parts(cfg, parts, compute, residual)  # QAT copies, FP8 1-byte saves
    # the model-parallel degrees the model's family declares (a ConfigError for any other above 1)
    split = model_parallel_degrees(cfg.model.arch, dims)
    if split["dap"] > 1:
        # DAP splits the Evoformer's representations over the dap ranks (padded to a multiple);
        # what runs outside the blocks is replicated on every rank
        parts = {**parts, "block": parts["block"] / split["dap"], "block_input": parts["block_input"] / split["dap"]}
    parts = model_parallel_activations(parts, cfg, dims)
    if split["spatial"] > 1:
        # the blocks run on latitude slabs; the fields outside them (embedding, loss) are whole on every rank
        parts = {**parts, "block": parts["block"] / split["spatial"], "block_input": parts["block_input"] / split["spatial"]}
    return parts


def activation_bytes(cfg: DictConfig, dims: ParallelDims, parts: dict[str, float] | None = None) -> tuple[list[int], int, int]:
    """(saved bytes per block, saved bytes outside the blocks, recompute buffer) for one micro-batch;
    `parts` as activation_parts returns them (computed when not given)."""
    spec = get_spec(cfg.model.arch)
    parts = activation_parts(cfg, dims) if parts is None else parts
    ac = cfg.activation_checkpoint
    mode, policy = as_enum(ac.mode, ACMode), as_enum(ac.policy, SelectivePolicy)
    n_blocks = spec.num_blocks(cfg.model)
    recomputed = set(checkpointed_block_ids(n_blocks, mode, policy, ac.every_k))
    per_block = []
    for i in range(n_blocks):
        if i in recomputed:
            per_block.append(parts["block_input"])
        elif mode is ACMode.selective and policy is SelectivePolicy.attention:
            per_block.append(parts["block"] - parts["attention_core_freed"])
        else:
            per_block.append(parts["block"])
    if recomputed:
        buffer = parts["block"]
    elif mode is ACMode.selective and policy is SelectivePolicy.attention:
        buffer = parts["attention_core_freed"]
    else:
        buffer = 0
    # further stacks of blocks (the spec's block_stacks: AlphaFold's extra-MSA and template pair
    # stacks), run before the main blocks: checkpointed by the same policy, each counted from its
    # own first block, and split over the dap ranks like the main blocks; the recompute buffer is
    # the largest block recomputed
    stack_blocks = []
    share = model_parallel_degrees(cfg.model.arch, dims)["dap"]
    for stack in parts.get("stacks", []):
        ids = set(checkpointed_block_ids(stack["n_blocks"], mode, policy, ac.every_k))
        stack_blocks += [(stack["block_input"] if i in ids else stack["block"]) / share for i in range(stack["n_blocks"])]
        if ids:
            buffer = max(buffer, stack["block"] / share)
    return [int(b) for b in stack_blocks + per_block], int(parts["outside_blocks"]), int(buffer)


def tp_units(units: list[list[torch.Size]], tp: int) -> list[list[torch.Size]]:
    """One tensor-parallel rank's parameters: every matrix (column- or row-parallel projections,
    the vocabulary-parallel embedding and output) split tp ways; vectors (norm scales) replicated."""
    if tp == 1:
        return units
    return [[torch.Size((-(-s[0] // tp), *s[1:])) if len(s) >= 2 else s for s in unit] for unit in units]


def model_parallel_activations(parts: dict[str, float], cfg: DictConfig, dims: ParallelDims) -> dict[str, float]:
    """Saved activations under tensor and context parallelism. tp: the tensors inside the column/row
    parallel regions (q, k, v, attention, FFN hidden) split tp ways; the spec's `tp_replicated`
    share of a block (norms and their inputs) and the block input split too only with tp_sp
    (Korthikanti et al. 2022, Table 2). Outside the blocks only the spec's `vocab_parallel` share
    is split (the fused, vocabulary-parallel loss head's weight gradient); plain logits are
    all-gathered for the loss. cp: every per-token tensor, inside and outside the blocks, is split cp
    ways (Ulysses holds all positions of H / cp heads inside attention: the same bytes)."""
    parts = dict(parts)
    if dims.tp > 1:
        repl = parts.get("tp_replicated", 0.0)
        split_repl = cfg.parallel.tp_sp
        parts["block"] = (parts["block"] - repl) / dims.tp + (repl / dims.tp if split_repl else repl)
        if split_repl:
            parts["block_input"] /= dims.tp
        vocab = parts.get("vocab_parallel", 0.0)  # a vocabulary-parallel loss head's share
        parts["outside_blocks"] -= vocab - vocab / dims.tp
    if dims.cp > 1:
        for key in ("block", "block_input", "attention_core_freed", "outside_blocks"):
            parts[key] /= dims.cp
    return parts


# (dims, model, parallel, precision, optimizer, offload) -> (ModelStates, parameters): the model
# states depend on nothing else, and memtrain plan asks for the same ones across micro-batches,
# checkpointing and chunking (a model with thousands of tensors costs milliseconds per count)
_STATES: dict[tuple, tuple[ModelStates, int]] = {}
STATE_GROUPS = ("model", "parallel", "precision", "optimizer", "offload")


def _model_states_of(cfg: DictConfig, dims: ParallelDims) -> tuple[ModelStates, int]:
    key = (dims, *(node_key(cfg[g]) for g in STATE_GROUPS))
    hit = _STATES.get(key)
    if hit is None:
        units = tp_units(param_units(cfg), dims.tp)
        if len(_STATES) >= 4096:
            _STATES.clear()
        hit = _STATES[key] = (model_states(cfg, units, dims), numel(flat(units)))
    states, n = hit
    return replace(states), n  # a copy: the cached one stays as it is (terms are frozen)


def estimate(cfg: DictConfig) -> MemoryEstimate:
    """Per-rank bytes. offload=activations_cpu (torch.autograd.graph.save_on_cpu): the tensors saved
    for the backward pass live on the host, and the device holds one unit's activations at a time,
    the largest block's (or the head's) while it is computed, recomputed or unpacked."""
    dims = ParallelDims.from_config(cfg.parallel, cfg.launcher.nnodes * cfg.launcher.nproc_per_node)
    if dims.pp > 1:  # the pipeline rank with the largest total (memtrain.memory.pipeline_memory)
        from memtrain.memory.pipeline_memory import pipeline_estimate

        units = tp_units(param_units(cfg), dims.tp)
        est = pipeline_estimate(cfg, dims, numel(flat(units)), model_states, activation_bytes, MemoryEstimate)
        est.peak = est.total  # the pipeline schedule's phases are not followed: the sum stands for the peak
        est.dims = dims
        return est
    states, n_params = _model_states_of(cfg, dims)
    parts = activation_parts(cfg, dims)
    per_block, outside, buffer = activation_bytes(cfg, dims, parts)
    saved = sum(per_block) + outside
    precision_state = precision_state_bytes(cfg)
    if offload_option(cfg).activations is Place.HOST:
        activations, host_activations = max(*per_block, outside, buffer), saved
    else:
        activations, host_activations = saved + buffer, 0
    if optimizer_memory.zeroth_order(cfg):  # forward passes under no_grad: inference's working set
        activations, host_activations, buffer = optimizer_memory.inference_activation_bytes(per_block, outside), 0, 0
    if optimizer_memory.zeroth_order(cfg):  # no backward and no gradients: the forward's working set
        phases = {"forward": states.params + states.optimizer + states.gathered + activations + precision_state,
                  "backward": 0, "optimizer_step": states.params + states.optimizer + precision_state}
    else:
        extras = _step_extras(cfg, dims)
        model = {"params": states.params, "grads": states.grads, "optimizer": states.optimizer,
                 "gathered": states.gathered}
        if states.terms:  # DeepSpeed ZeRO: its tensors come labelled by phase
            model = zero_phase_terms(states.terms)
            extras["zero_fp32_grads"] = model.pop("zero_fp32_grads")
        phases = step_phases(
            cfg, **model,
            precision_state=precision_state, per_block=per_block, outside=outside, buffer=buffer,
            block_input=int(parts["block_input"]), unit_sizes=[numel(u) for u in tp_units(param_units(cfg), dims.tp)],
            device_activations=activations if offload_option(cfg).activations is Place.HOST else None,
            loss_forward=int(parts.get("loss_forward_transient", 0)),
            loss_backward=int(parts.get("loss_backward_transient", 0)), **extras)
    return MemoryEstimate(
        phases=phases,
        peak=max(phases.values()),
        params=states.params,
        grads=states.grads,
        optimizer=states.optimizer,
        activations=activations,
        total=states.params + states.grads + states.optimizer + states.gathered + activations + precision_state,
        n_params=n_params,
        activations_per_block=per_block,
        activations_outside_blocks=outside,
        recompute_buffer=buffer,
        gathered=states.gathered,
        host=states.host + host_activations,
        nvme=states.nvme,
        world_size=dims.world_size,
        dp_replicate=dims.dp_replicate,
        dp_shard=dims.dp_shard,
        comm_bytes=comm_bytes(cfg, dims, n_params),
        precision_state=precision_state,
        model_state_terms=[asdict(t) for t in states.terms],
        dims=dims,
    )


def _step_extras(cfg: DictConfig, dims: ParallelDims) -> dict[str, int]:
    """The optimizer step's device temporaries (memtrain.memory.phases): the update's own on the
    rank's parameters (FSDP: its shards; ZeRO: one flat fp32 partition). None on the device where
    the step runs on the host (offload=optimizer_cpu, params_cpu, nvme)."""
    opt = parallel_option(cfg)
    if offload_option(cfg).model_states_offloaded:
        return {"zero_fp32_grads": 0, "temporaries": 0}
    shapes = flat(tp_units(param_units(cfg), dims.tp))
    if opt.backend is Backend.DEEPSPEED:  # the fp32 gradient partition comes from zero_memory's terms
        part = -(-numel(shapes) // dims.dp)
        return {"zero_fp32_grads": 0, "temporaries": optimizer_temporaries(cfg, [torch.Size((part,))], FP32)}
    if opt.fsdp:
        shapes = [shard(s, dims.dp_shard) for s in shapes]
    return {"zero_fp32_grads": 0,
            "temporaries": optimizer_temporaries(cfg, shapes, dtype_of(cfg.precision.param_dtype).itemsize)}
