"""The training loop: build (model -> memory wrappers -> optimizer), then train_step in a loop
with logging and checkpoints. Everything model-specific comes from the ModelSpec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from memtrain.config.errors import as_enum, to_container
from memtrain.config.parallel_options import Backend, MetaBuild, Place, offload_option, parallel_option
from memtrain.engine import preemption
from memtrain.engine.checkpoint import Checkpointer, step_dir_name
from memtrain.distributed.launch import init_distributed, shutdown
from memtrain.distributed.mesh import ParallelDims, dp_rank
from memtrain.engine.step import RankSums, StepResult, build_step_fn, to_device  # noqa: F401 (StepResult, to_device: re-exported)
from memtrain.engine.parallelize import parallelize
from memtrain.config.init_device import budget_bytes, choose_init_device, meta_refusal
from memtrain.config.schema import Device, InitDevice
from memtrain.engine.init_device import materialize
from memtrain.machine import device_memory_bytes
from memtrain.engine.metrics import MetricsLogger, StepMetrics, format_line
from memtrain.engine.preemption import Preemption
from memtrain.engine.resume import ResumeCheck, check_resume, checkpoint_format, describe_casts, resume_path
from memtrain.errors import UserError
from memtrain.models import get_spec
from memtrain.models.meta import build_on_meta
from memtrain.precision.amp import Precision


def resolve_device(device: Device | str) -> torch.device:
    """The torch device of trainer.device (a Device or its name): auto is CUDA where it is visible."""
    device = as_enum(device, Device)
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)


# consecutive skipped steps after which a run counts as diverged: fp16's dynamic loss scale needs
# at most 64 halvings from the largest precision.init_scale allowed (2^64) to reach 1
MAX_CONSECUTIVE_SKIPS = 100


class Diverged(UserError):
    """Every recent step had non-finite gradients: nothing is being learned."""


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path, console: Console | None = None):
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.run_dir = Path(run_dir)
        self.spec = get_spec(cfg.model.arch)
        self.device = resolve_device(self.tcfg.device)
        # a process group and a mesh on every run, one rank too (DeepSpeed also reads LOCAL_RANK)
        self._closed = False
        self.env = init_distributed(cfg.parallel.backend, self.device,
                                    local_rank_env=parallel_option(cfg).backend is Backend.DEEPSPEED)
        try:
            self._build(cfg, console)
        except BaseException:
            shutdown(self.env)  # a failed build leaves no process group (nor its environment) behind
            raise

    def _build(self, cfg: DictConfig, console: Console | None) -> None:
        if self.device.type == "cuda" and self.env.world_size > 1:
            self.device = torch.device("cuda", self.env.local_rank)
        self.console = console or Console(quiet=not self.env.is_main)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", self.tcfg.keep_last)
        # a checkpoint to resume from is checked against this run before anything is built
        path = resume_path(cfg, self.run_dir)
        self.resume: ResumeCheck | None = check_resume(path, cfg, self.env.world_size) if path is not None else None
        # the degrees, resolved once here: everything after reads them from the mesh or from self.dims
        self.dims = ParallelDims.from_config(cfg.parallel, self.env.world_size)
        self.mesh = self.dims.build_mesh(self.device.type)
        self.sums = RankSums.of(self.mesh)  # the flattened batch and data-parallel meshes
        self.dp_rank = dp_rank(self.mesh)
        shapes = self._choose_init_device(cfg)  # the model on the meta device for FSDP2's meta build
        meta = shapes is not None
        torch.manual_seed(self.tcfg.seed)  # every rank builds the same initial weights

        self.precision = Precision.from_config(cfg.precision, self.device.type)
        if self.init_device is InitDevice.meta and not meta:  # ZeRO-3: zero.Init partitions each module as it is built
            from memtrain.engine.zero_strategy import build_partitioned

            model = build_partitioned(cfg, self.spec, self.dims, self.precision, self.device)  # cast there
        else:
            if meta:  # shapes only: each rank's shards are materialised after the wrapping
                model = shapes
            else:
                with torch.device(self.device):
                    model = self.spec.build_model(cfg.model)
            model.to(dtype=self.precision.param_dtype)
        # precision swaps -> loss head -> model parallelism -> checkpointing -> compile -> data parallelism
        self.strategy = parallelize(model, cfg, self.spec, self.mesh, self.dims, self.precision, self.device,
                                    materialize=self._materialize if meta else None)
        # backpropagation through the strategy, or forward passes only (an optimizer with zeroth_order)
        self.step_fn = build_step_fn(self.strategy, self.spec, self.precision, self.sums, self.tcfg.seed, self.device)
        self.data = self.spec.build_data(cfg)
        if self.spec.shard_batches is not None:
            self.data = self.spec.shard_batches(self.data, self.mesh, cfg)
        # held-out evaluation every trainer.eval_every steps (ModelSpec.build_evaluator)
        self.evaluator = self.spec.build_evaluator(cfg) if self.tcfg.eval_every > 0 else None
        # SIGINT/SIGTERM/SIGUSR1: finish the step, checkpoint, stop (every rank: a MAX over the world)
        self.preemption = Preemption(self.device, dist.group.WORLD)
        self.step = 0  # optimizer steps attempted (the position in the data)
        self.updates = 0  # optimizer steps applied: the learning-rate schedule follows these
        self.skipped_steps = 0  # steps whose update was skipped (fp16 overflow, non-finite gradients)
        self.stop_signal: int | None = None  # the signal that stopped fit() early (0: received by another rank)
        self._skips_in_a_row = 0
        self._saved_step: int | None = None

    def _choose_init_device(self, cfg: DictConfig) -> torch.nn.Module | None:
        """trainer.init_device resolved (memtrain.config.init_device) into self.init_device, InitDevice.eager
        or InitDevice.meta; returns the model built on the meta device for FSDP2's meta build (None for eager,
        and for ZeRO-3's, which builds under zero.Init). auto counts the parameters of that build
        when the layout could take it, and keeps it if it chooses meta."""
        has_init = self.spec.init_weights is not None
        shapes, n_params = None, 0
        if as_enum(self.tcfg.init_device, InitDevice) is InitDevice.auto and meta_refusal(cfg, has_init) is None:
            shapes = build_on_meta(self.spec.build_model, cfg.model)
            n_params = sum(p.numel() for p in shapes.parameters())
        budget = budget_bytes(cfg, device_memory_bytes(self.device))
        self.init_device = choose_init_device(cfg, n_params, budget, has_init)
        if self.init_device is InitDevice.eager or parallel_option(cfg).meta_build is not MetaBuild.FULLY_SHARD:
            return None
        return shapes if shapes is not None else build_on_meta(self.spec.build_model, cfg.model)

    def _materialize(self, model: torch.nn.Module) -> None:
        """After the strategy's sharding: this rank's shards allocated (on the host under
        offload=params_cpu, FSDP2's CPUOffloadPolicy) and initialised by the family."""
        device = torch.device("cpu") if offload_option(self.cfg).params is Place.HOST else self.device
        materialize(model, device, self.tcfg.seed, self.spec.init_weights)

    @property
    def model(self) -> torch.nn.Module:
        return self.strategy.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.strategy.optimizer

    @property
    def lr_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.strategy.lr_scheduler

    # -- one optimizer step ---------------------------------------------------------------------

    def micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for the current step: data-parallel ranks take interleaved
        micro-batches, so dp ranks x micro_batch_size covers what one rank with a dp-times larger
        micro-batch would see."""
        t = self.tcfg
        first = self.step * t.grad_accum
        return [self.data.batch((first + j) * self.dims.dp + self.dp_rank, t.micro_batch_size) for j in range(t.grad_accum)]

    def train_step(self) -> StepResult:
        """One optimizer step (memtrain.engine.step): its loss, gradient norm and scored targets
        stay on the device in the result."""
        result = self.step_fn(self.micro_batches(), self.step)
        self.count_step(result.skipped)
        return result

    def count_step(self, skipped: bool) -> None:
        """One optimizer step done: applied (the schedule moves on) or skipped (it does not). A run
        whose last MAX_CONSECUTIVE_SKIPS steps were all skipped has diverged: it stops (Diverged)."""
        self.step += 1
        if skipped:
            self.skipped_steps += 1
            self._skips_in_a_row += 1
        else:
            self.updates += 1
            self._skips_in_a_row = 0
            self.lr_scheduler.step()
        if self._skips_in_a_row >= MAX_CONSECUTIVE_SKIPS:
            raise Diverged(f"training stopped at step {self.step}: the last {self._skips_in_a_row} steps all had "
                           f"non-finite gradients, so no update was applied since step {self.step - self._skips_in_a_row}"
                           f" ({self.skipped_steps} skipped in all); the run diverged (optimizer.lr="
                           f"{self.cfg.optimizer.lr}) or its data holds NaN or inf values. The last checkpoint, if any, "
                           "is kept")

    @property
    def lr(self) -> float:
        """The learning rate of the next update: the schedule at the number of updates applied so
        far (the scheduler steps once per applied update), so a skipped step (fp16 overflow) does
        not consume warm-up or decay (as Megatron and DeepSpeed hold their schedulers on an overflow)."""
        return self.lr_scheduler.get_last_lr()[0]

    def close(self) -> None:
        """Destroy the process group this trainer made (a one-rank run's, or a launched worker's
        own) and the environment it set for it; a group made by the caller is left alone. Closing
        twice does nothing more (a later trainer's group is not this one's)."""
        if not self._closed:
            self._closed = True
            shutdown(self.env)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self) -> Path:
        meta = {"config": to_container(self.cfg), "updates": self.updates, "skipped_steps": self.skipped_steps,
                "world_size": self.env.world_size, "format": checkpoint_format(self.cfg),
                "lr_scheduler": self.lr_scheduler.state_dict()}
        path = self.strategy.save(self.checkpointer, self.step, meta)
        self._saved_step = self.step
        return path

    def load(self, path: str | Path) -> None:
        """Resume from checkpoint `path`: checked against this run (memtrain.engine.resume) before
        any weights load, then model, optimizer, scaler, RNG, the step counters and the learning-rate
        scheduler's position restored. The optimizer hyper-parameters, the base lr and the schedule's
        shape stay this run's (a checkpoint would otherwise bring back its own)."""
        path = Path(path)
        check = self.resume if self.resume is not None and self.resume.path == path else \
            check_resume(path, self.cfg, self.env.world_size)
        casts = describe_casts(path, self.strategy.state()) if check.casts and hasattr(self.strategy, "state") else None
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        meta = self.strategy.load(self.checkpointer, path)
        for group, values in zip(self.optimizer.param_groups, hyper):
            group.update(values)
        self.step = meta["step"]
        self.updates = int(meta.get("updates", self.step))  # checkpoints written before these counters
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        # the scheduler's position: the updates applied (checkpoints written before it was saved)
        self.lr_scheduler.seek(int(meta.get("lr_scheduler", {}).get("last_epoch", self.updates)))
        if check.casts:
            self.console.print(f"resume_cast: {'; '.join(check.casts)}: cast {casts or 'the weights and optimizer states'}",
                               highlight=False)

    def resume_path(self) -> Path | None:
        return resume_path(self.cfg, self.run_dir)

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train to step `until` (default trainer.max_steps, which also shapes the LR schedule);
        returns the logged records."""
        tcfg = self.tcfg
        until = tcfg.max_steps if until is None else min(until, tcfg.max_steps)
        if self.resume is not None and self.step == 0:
            self.load(self.resume.path)
            self.console.print(f"resumed from [bold]{self.resume.path}[/] at step {self.step}")
        metrics = MetricsLogger(self.run_dir, tcfg.tensorboard, self.console) if self.env.is_main else None
        step_metrics, records = StepMetrics(self), []
        columns = [TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[rate]}")]  # throughput of the last logged interval
        with self.preemption.catching(), Progress(*columns, console=self.console, transient=True,
                                                  disable=not self.env.is_main) as progress:
            task = progress.add_task("train", total=until, completed=self.step, rate="")
            while self.step < until:
                lr = self.lr
                result = self.train_step()
                step_metrics.add(result)
                progress.update(task, completed=self.step)
                evaluate = self.evaluator is not None and self.step % tcfg.eval_every == 0
                if self.step % tcfg.log_every == 0 or self.step == until or evaluate:
                    record = step_metrics.record(result, lr)
                    if evaluate:  # every rank runs it; the main rank may write predictions to the run directory
                        with self.precision.autocast():
                            record.update(self.evaluator(self.model, self.step, self.run_dir if self.env.is_main else None, self.device))
                    if metrics:
                        metrics.log(record)
                    records.append(record)
                    progress.console.print(format_line(record, tcfg.max_steps, self.spec.target_unit))
                    progress.update(task, rate=step_metrics.rate_text(record))
                if tcfg.save_every > 0 and (self.step % tcfg.save_every == 0 or self.step == until):
                    self.console.print(f"saved [bold]{self.save()}[/]")
                if self.step < until and self.preemption.should_stop():  # every rank stops after this step
                    saved = self.save() if self._saved_step != self.step else self.checkpointer.folder / step_dir_name(self.step)
                    self.stop_signal = preemption.received() or 0  # 0: a signal another rank received
                    self.console.print(f"stopping for a signal: saved [bold]{saved}[/]")
                    self.preemption.stopped(self.run_dir, self.step, self.env.is_main)
                    break
        if metrics:
            metrics.close()
        return records

