"""Pipeline schedules and the config checks of pipeline parallelism: light (no torch), so that
validation does not import torch.distributed.pipelining (memtrain.distributed.pipeline runs them)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from memtrain.config.errors import require
from memtrain.config.parallel_options import offload_option, offloads_without_model_states, parallel_option, parallel_options_with


@dataclass(frozen=True)
class ScheduleRule:
    torch_name: str  # class in torch.distributed.pipelining
    min_stages_per_rank: int
    max_stages_per_rank: int | None  # None: no upper bound
    style: str  # stage placement: "loop" (stage s on rank s mod pp) or "v" (ZB-V)

    @property
    def multi_stage(self) -> bool:
        return self.max_stages_per_rank != 1


SCHEDULES = {
    "gpipe": ScheduleRule("ScheduleGPipe", 1, 1, "loop"),
    "1f1b": ScheduleRule("Schedule1F1B", 1, 1, "loop"),
    "interleaved_1f1b": ScheduleRule("ScheduleInterleaved1F1B", 2, None, "loop"),
    "zero_bubble": ScheduleRule("ScheduleInterleavedZeroBubble", 2, None, "loop"),
    "zbv": ScheduleRule("ScheduleZBVZeroBubble", 2, 2, "v"),
}
PIPELINE_PARALLEL = parallel_options_with("pp")  # parallel options pipeline stages compose with
PIPELINE_OFFLOAD = offloads_without_model_states()  # the stages hold their own model states


def stage_ids(pp_rank: int, pp: int, stages_per_rank: int, style: str) -> list[int]:
    """The stages rank `pp_rank` runs: looped (rank r holds r, r + pp, r + 2 pp, ...) or V-shaped
    (rank r holds r and 2 pp - 1 - r), as torch.distributed.pipelining places them."""
    if style == "v":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(stages_per_rank)]


def validate_pipeline(cfg: DictConfig, pp: int, num_blocks: int) -> None:
    """Refuse a pipeline configuration that cannot run: pp is the resolved pipeline degree. Whether
    the model has a pipeline split at all is its family's declaration (memtrain.models.family)."""
    p = cfg.parallel
    require(p.pp_schedule in SCHEDULES, "parallel.pp_schedule", f"unknown pipeline schedule {p.pp_schedule!r}",
            allowed=SCHEDULES)
    if pp == 1:
        return
    rule, v, m = SCHEDULES[p.pp_schedule], p.pp_stages_per_rank, p.pp_microbatches
    require(parallel_option(p).composes_with_pipeline, "parallel.pp",
            f"pipeline parallelism (pp={pp}) does not compose with parallel={p.name}", allowed_label="It composes with parallel",
            allowed=PIPELINE_PARALLEL)
    require(v >= rule.min_stages_per_rank and (rule.max_stages_per_rank is None or v <= rule.max_stages_per_rank),
            "parallel.pp_stages_per_rank",
            f"pp_schedule={p.pp_schedule} runs " + (
                f"exactly {rule.min_stages_per_rank}" if rule.max_stages_per_rank == rule.min_stages_per_rank
                else f"at least {rule.min_stages_per_rank}") + f" stage(s) per rank, got pp_stages_per_rank={v}")
    stages = pp * v
    require(num_blocks % stages == 0, "parallel.pp",
            f"the model's {num_blocks} blocks do not split evenly into parallel.pp x parallel.pp_stages_per_rank "
            f"= {pp} x {v} = {stages} stages")
    require(m >= 1, "parallel.pp_microbatches", f"must be at least 1, got {m}")
    mbs = cfg.trainer.micro_batch_size
    require(mbs % m == 0, "parallel.pp_microbatches",
            f"trainer.micro_batch_size={mbs} must be divisible by parallel.pp_microbatches={m}")
    if p.pp_schedule == "1f1b":
        require(m >= stages, "parallel.pp_microbatches",
                f"pp_schedule=1f1b needs at least as many micro-batches as stages ({stages}), got pp_microbatches={m}")
    if rule.multi_stage:
        rounds = max(1, m // pp)
        require(m % rounds == 0, "parallel.pp_microbatches",
                f"pp_schedule={p.pp_schedule} runs micro-batches in rounds of parallel.pp={pp}: pp_microbatches={m} "
                f"must be fewer than pp or a multiple of {rounds} rounds")
    require(not cfg.precision.loss_scaling, "precision.loss_scaling",
            "dynamic loss scaling is not wired through the pipeline schedules; use precision=bf16 or fp32 with parallel.pp")
    require(cfg.trainer.resume == "none", "trainer.resume",
            "resuming a pipeline-parallel run is not supported yet (its checkpoints are saved, but the "
            "optimizer's parameter groups differ per pipeline rank); use trainer.resume=none with parallel.pp")
    require(not offload_option(cfg).model_states_offloaded, "offload.name",
            f"offload={cfg.offload.name} does not work with parallel.pp={pp}", allowed_label="It works with",
            allowed=PIPELINE_OFFLOAD)
