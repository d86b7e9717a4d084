"""PipelineStrategy: pipeline parallelism (memtrain.distributed.pipeline, which describes the
split, the micro-batches and the order of the wrappers) as a `memtrain.engine.strategy.Strategy`."""

from __future__ import annotations

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from memtrain.config.parallel_options import parallel_option
from memtrain.config.pipeline_schedules import SCHEDULES, stage_ids
from memtrain.distributed.pipeline import RankModules, grad_norm
from memtrain.engine.strategy import TorchStrategy, activation_context
from memtrain.models.spec import ModelSpec
from memtrain.optim.builder import build_lr_scheduler, build_optimizer
from memtrain.precision.amp import Precision


class PipelineStrategy(TorchStrategy):
    """A Strategy (memtrain.engine.strategy) that runs each trainer micro-batch through a
    pipeline schedule; checkpoints and everything else as TorchStrategy."""

    def __init__(self, cfg: DictConfig, model: nn.Module, spec: ModelSpec, mesh: DeviceMesh,
                 precision: Precision, device: torch.device):
        from torch.distributed import pipelining

        self.cfg, self.spec, self.precision, self.device, self.mesh = cfg, spec, precision, device, mesh
        p = cfg.parallel
        rule = SCHEDULES[p.pp_schedule]
        pp_mesh = mesh["pp"]
        self.pp_group, pp = pp_mesh.get_group(), pp_mesh.size()
        num_stages = pp * p.pp_stages_per_rank
        ids = stage_ids(pp_mesh.get_local_rank(), pp, p.pp_stages_per_rank, rule.style)
        stages = spec.pipeline_fn(model, ids, num_stages)
        self.module = RankModules(stages)  # unwrapped, under the model's parameter names
        self.stages = [pipelining.PipelineStage(self._wrap(stage), i, num_stages, device, group=self.pp_group)
                       for stage, i in zip(stages, ids)]
        self.is_last = any(i == num_stages - 1 for i in ids)
        last = [stage for stage, i in zip(stages, ids) if i == num_stages - 1]
        # a last stage whose model output is not a tensor returns tensors and rebuilds the output for the loss
        self.loss_outputs = getattr(last[0], "loss_outputs", None) if last else None
        schedule = getattr(pipelining, rule.torch_name)
        self.schedule = schedule(self.stages if rule.multi_stage else self.stages[0], n_microbatches=p.pp_microbatches,
                                 loss_fn=self._loss, scale_grads=False)
        self.model = self.module
        self.optimizer = build_optimizer(cfg.optimizer, self.module, device.type)
        self.lr_scheduler = build_lr_scheduler(cfg, self.optimizer)
        self._scale = 1.0

    def _wrap(self, stage: nn.Module) -> nn.Module:
        """The model's own parallelism inside the stage, then data parallelism over the stage:
        FSDP2 over dp_shard (and dp_replicate: HSDP). Replicas alone (parallel=pp or ddp with
        dp_replicate > 1) are FSDP2 on the (dp_replicate, dp_shard=1) mesh, i.e. replicated
        parameters with all-reduced gradients, since the schedules' per-micro-batch backward does
        not fit DDP's reducer (its first-iteration bucket rebuild counts every micro-batch)."""
        cfg, mesh = self.cfg, self.mesh
        # the model's own parallelism (spec.parallelize) was applied by the trainer to the whole
        # model before the split, and pp with tp/cp is refused by validation for now
        if parallel_option(cfg).fsdp or mesh["dp_replicate"].size() > 1:
            from memtrain.distributed.fsdp import apply_fsdp

            return apply_fsdp(stage, self.spec.blocks(stage), mesh, param_dtype=self.precision.compute_dtype,
                              reduce_dtype=torch.float32, reshard_after_forward=cfg.parallel.reshard_after_forward,
                              cpu_offload=False, pin_memory=False)
        return stage

    def _loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Called by the schedule on the last stage for each pipeline micro-batch (and once more
        while the stages infer their shapes on the first step)."""
        if self.loss_outputs is not None:
            outputs = self.loss_outputs(outputs)
        loss, _ = self.spec.loss_fn(outputs, targets)
        return loss * self._scale

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor, scale: float | torch.Tensor,
                         sync: bool) -> torch.Tensor:
        """One schedule step over the pipeline micro-batches of this trainer micro-batch. The
        stages reduce data-parallel gradients at the end of every step (`sync` is not used: a
        reduction of accumulated gradients is still exact). Returns the summed loss on every
        pipeline rank."""
        self._scale, losses = scale, []
        with self.precision.autocast(), activation_context(self.cfg.offload, self.device):
            self.schedule.step(inputs, target=targets, losses=losses, return_outputs=False)
        # the schedule's losses are the scaled ones, one per pipeline micro-batch (last stage only)
        loss = torch.stack(losses).detach().float().sum() / scale if losses else torch.zeros((), device=self.device)
        dist.all_reduce(loss, group=self.pp_group)  # from the last stage to the others
        return loss

    def step(self) -> tuple[torch.Tensor, bool]:
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm, clip = grad_norm(params, self.pp_group), self.cfg.trainer.grad_clip
        skipped = not bool(torch.isfinite(norm))  # the step's one host read (memtrain.engine.step)
        if clip > 0 and not skipped:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, skipped
