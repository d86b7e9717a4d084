"""Per-device memory and communication under pipeline parallelism (parallel.pp > 1).

Parameters: each pipeline rank holds the blocks of its stages, plus the embedding on the rank of
the first stage and the final norm and head on the rank of the last (the model's `pipeline_fn`,
run on the meta device). The estimate reports the rank with the largest total.

Activations: a pipeline micro-batch is trainer.micro_batch_size / pp_microbatches samples; a
stage keeps what its blocks save for backward for every micro-batch it has run forward and not
yet backward ("in flight"). With m micro-batches, pp ranks, v stages per rank and rank r:

  gpipe             all m forwards before any backward: m micro-batches of the stage (Huang et
                    al. 2019, sec. 2.2: O(m) activations per stage without re-materialization)
  1f1b              pp - r micro-batches in warm-up, then one forward per backward: at most
                    min(m, pp - r), pp on the first rank (Narayanan et al. 2021, sec. 2.2.1)
  interleaved_1f1b  (v - 1) g + 2 (pp - 1 - r) + 1 stage-chunks in flight, g = micro-batches per
                    round (pp when m >= pp): on rank 0 pp + (pp - 1) / v micro-batches of the
                    rank's layers (Narayanan et al. 2021, sec. 2.2.2; Korthikanti et al. 2022,
                    sec. 4.2.3), as torch's schedule warms up
  zero_bubble       ZB-1P: (v - 1) g + (pp - 1 - r) + 1 chunks, the 1F1B peak on rank 0 (Qi et
                    al. 2024, sec. 3: "ZB-H1 ... the same peak memory as 1F1B")
  zbv               ZB-V: 2 pp chunks of 1/(2 pp) of the model on every rank, again pp
                    micro-batches of the rank's layers (Qi et al. 2024, sec. 6)

each capped at all m micro-batches of all v stages. Chunks in flight are counted as spread evenly
over the rank's stages. Zero-bubble schedules also hold, between a stage's input-gradient (B) and
weight-gradient (W) passes, the gradients of its outputs; these are not modeled.

Communication: every stage boundary carries the residual stream of a micro-batch forward and its
gradient backward (point-to-point send/recv); per optimizer step a rank sends, for each of its
stages, one activation per micro-batch unless it is the last stage and one gradient unless it is
the first: trainer.grad_accum x trainer.micro_batch_size x (seq x width) values per boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from memtrain.config.parallel_options import parallel_option
from memtrain.distributed.mesh import ParallelDims
from memtrain.distributed.pipeline_schedules import SCHEDULES, stage_ids
from memtrain.config.cfgview import with_values
from memtrain.models import get_spec
from memtrain.models.meta import build_on_meta
from memtrain.precision.amp import dtype_of


def chunks_in_flight(schedule: str, pp: int, m: int, v: int, rank: int) -> int:
    """Stage-chunk micro-batches whose activations rank `rank` holds at its peak."""
    if schedule == "gpipe":
        return m
    if schedule == "1f1b":
        return min(m, pp - rank)
    cap = m * v
    if schedule == "zbv":
        return min(cap, 2 * pp)
    per_round = m // max(1, m // pp)
    hops = 2 if schedule == "interleaved_1f1b" else 1
    return min(cap, (v - 1) * per_round + hops * (pp - 1 - rank) + 1)


@dataclass
class RankPipeline:
    rank: int
    stages: list[int]
    units: list[list[torch.Size]]  # parameter shapes: the stages' own (non-block) ones, then one list per block
    activations: int  # peak bytes saved for backward, with the recompute buffer
    sent_bytes: int  # pipeline send bytes per optimizer step


def rank_units(cfg: DictConfig, ids: list[int], num_stages: int) -> list[list[torch.Size]]:
    """Parameter shapes of the stages `ids`: their own (non-block) ones, then one list per block;
    cached per model and split (memtrain plan estimates many configurations of one pipeline)."""
    from memtrain.config.cfgview import node_key

    key = (cfg.model.arch, node_key(cfg.model), tuple(ids), num_stages)
    if key not in _RANK_UNITS:
        if len(_RANK_UNITS) >= 256:
            _RANK_UNITS.clear()
        _RANK_UNITS[key] = _rank_units(cfg.model, ids, num_stages)
    return [list(u) for u in _RANK_UNITS[key]]


_RANK_UNITS: dict[tuple, tuple] = {}


def _rank_units(mcfg: DictConfig, ids: list[int], num_stages: int) -> tuple[tuple[torch.Size, ...], ...]:
    spec = get_spec(mcfg.arch)
    model = build_on_meta(spec.build_model, mcfg)
    stages = spec.pipeline_fn(model, ids, num_stages)
    blocks = [b for stage in stages for b in spec.blocks(stage)]
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    seen, own = set(), []
    for stage in stages:
        for p in stage.parameters():
            if id(p) not in in_blocks and id(p) not in seen:
                seen.add(id(p))
                own.append(p.shape)
    return (tuple(own), *(tuple(p.shape for p in b.parameters()) for b in blocks))


def pipeline_ranks(cfg: DictConfig, dims: ParallelDims, activation_bytes) -> list[RankPipeline]:
    """Every pipeline rank's parameters, peak activations and sent bytes. `activation_bytes`
    is the estimator's (config, dims) -> (per block, outside blocks, recompute buffer)."""
    p = cfg.parallel
    pp, v, m = dims.pp, p.pp_stages_per_rank, p.pp_microbatches
    num_stages = pp * v
    small = with_values(cfg, {"trainer.micro_batch_size": cfg.trainer.micro_batch_size // m})
    per_block, outside, buffer = activation_bytes(small, dims)
    per_stage = len(per_block) // num_stages
    # the residual stream crosses a boundary: in the compute dtype under FSDP's mixed precision,
    # else in the parameters' dtype (autocast keeps the residual additions there)
    dtype = cfg.precision.compute_dtype if parallel_option(p).fsdp else cfg.precision.param_dtype
    boundary = get_spec(cfg.model.arch).activation_bytes(cfg, 1, 1)["block_input"] * dtype_of(dtype).itemsize
    ranks = []
    for r in range(pp):
        ids = stage_ids(r, pp, v, SCHEDULES[p.pp_schedule].style)
        stage_bytes = [sum(per_block[s * per_stage:(s + 1) * per_stage]) + (outside if s == num_stages - 1 else 0)
                       for s in ids]
        chunks = chunks_in_flight(p.pp_schedule, pp, m, v, r)
        activations = int(chunks * sum(stage_bytes) / v) + buffer
        boundaries = sum((s != num_stages - 1) + (s != 0) for s in ids)
        sent = int(boundaries * boundary * cfg.trainer.grad_accum)
        ranks.append(RankPipeline(r, ids, rank_units(cfg, ids, num_stages), activations, sent))
    return ranks


def pipeline_estimate(cfg: DictConfig, dims: ParallelDims, n_params: int, model_states, activation_bytes, estimate_cls):
    """The estimator's MemoryEstimate for the pipeline rank with the largest device total; the
    largest per-rank send volume under comm_bytes["pp"]."""
    best = None
    ranks = pipeline_ranks(cfg, dims, activation_bytes)
    for rank in ranks:
        states = model_states(cfg, rank.units, dims)
        total = states.params + states.grads + states.optimizer + states.gathered + rank.activations
        if best is None or total > best[0]:
            best = (total, rank, states)
    total, rank, states = best
    return estimate_cls(
        params=states.params, grads=states.grads, optimizer=states.optimizer, activations=rank.activations,
        total=total, n_params=n_params, gathered=states.gathered, host=states.host, nvme=states.nvme,
        world_size=dims.world_size, dp_replicate=dims.dp_replicate, dp_shard=dims.dp_shard, pp=dims.pp,
        comm_bytes={**_dp_comm(cfg, dims, rank), "pp": {"send_recv_activations": max(r.sent_bytes for r in ranks)}},
    )


def _dp_comm(cfg: DictConfig, dims: ParallelDims, rank: RankPipeline) -> dict:
    """The data-parallel dimensions' communication for this rank's stages (memtrain.memory.comm)."""
    from memtrain.memory.comm import comm_bytes
    from memtrain.memory.estimator import flat, numel

    return comm_bytes(cfg, dims, numel(flat(rank.units)))
