"""The training loop: build (model -> memory wrappers -> optimizer), then train_step in a loop
with logging and checkpoints. Everything model-specific comes from the ModelSpec."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from memtrain.config.errors import enum_names, to_container
from memtrain.engine.checkpoint import Checkpointer
from memtrain.distributed.launch import init_distributed, shutdown
from memtrain.distributed.mesh import ParallelDims, dp_rank
from memtrain.engine.strategy import build_strategy
from memtrain.engine.zeroth_order import zeroth_order_step
from memtrain.engine.metrics import MetricsLogger, format_line, peak_flops, peak_memory_bytes
from memtrain.engine.preemption import Preemption
from memtrain.memory.activation_checkpoint import apply_activation_checkpointing
from memtrain.models import get_spec
from memtrain.optim.builder import lr_at
from memtrain.precision.amp import Precision
from memtrain.precision.transforms import apply_precision_transforms


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device(batch: Any, device: torch.device) -> Any:
    """A tensor, or a dict of tensors (feature dicts), on `device`."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if device.type == "cuda" and batch.device.type == "cpu":  # pinned, so the copy is truly asynchronous
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    skipped: bool  # optimizer step skipped: non-finite gradients (fp16 overflow)


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path, console: Console | None = None):
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.run_dir = Path(run_dir)
        self.spec = get_spec(cfg.model.arch)
        self.device = resolve_device(enum_names(self.tcfg.device))
        self.env = init_distributed(cfg.parallel.backend, self.device.type, need_group=cfg.parallel.name != "single")
        if self.device.type == "cuda" and self.env.world_size > 1:
            self.device = torch.device("cuda", self.env.local_rank)
        self.console = console or Console(quiet=not self.env.is_main)
        self.dims = ParallelDims.from_config(cfg.parallel, self.env.world_size)
        self.mesh = self.dims.build_mesh(self.device.type) if dist.is_initialized() else None
        self.dp_rank = dp_rank(self.mesh)
        torch.manual_seed(self.tcfg.seed)  # every rank builds the same initial weights

        self.precision = Precision.from_config(cfg.precision, self.device.type)
        with torch.device(self.device):
            model = self.spec.build_model(cfg.model)
        model.to(dtype=self.precision.param_dtype)
        apply_precision_transforms(model, cfg.precision, self.spec, self.device)  # QAT / FP8 module swaps
        if self.mesh is not None and self.spec.parallelize is not None:
            self.spec.parallelize(model, self.mesh, cfg)  # model parallelism first: TP -> AC -> FSDP (torchtitan's order)
        apply_activation_checkpointing(model, cfg.checkpoint, self.spec)
        self.strategy = build_strategy(cfg, model, self.spec, self.mesh, self.precision, self.device)
        self.data = self.spec.build_data(cfg)
        if self.mesh is not None and self.spec.shard_batches is not None:
            self.data = self.spec.shard_batches(self.data, self.mesh, cfg)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", self.tcfg.keep_last)
        self.preemption = Preemption(self.device)  # SIGUSR1/SIGTERM under Slurm: checkpoint and stop
        self.step = 0

    @property
    def model(self) -> torch.nn.Module:
        return self.strategy.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.strategy.optimizer

    # -- one optimizer step ---------------------------------------------------------------------

    def micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for the current step: data-parallel ranks take interleaved
        micro-batches, so dp ranks x micro_batch_size covers what one rank with a dp-times larger
        micro-batch would see."""
        t = self.tcfg
        first = self.step * t.grad_accum
        return [self.data.batch((first + j) * self.dims.dp + self.dp_rank, t.micro_batch_size) for j in range(t.grad_accum)]

    def train_step(self) -> StepResult:
        if getattr(self.optimizer, "zeroth_order", False):  # e.g. MeZO: forward passes only
            return zeroth_order_step(self)
        micro = self.micro_batches()
        # normalise by the tokens of the whole step on every data-parallel rank; the gradient
        # reduction averages over those ranks, hence the factor dp
        n_scored = self._global_sum(sum(float(self.spec.num_targets(t)) for _, t in micro))
        scale = self.dims.dp / n_scored
        loss_sum = torch.zeros((), device=self.device)
        for j, (inputs, targets) in enumerate(micro):
            inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
            loss_sum += self.strategy.forward_backward(inputs, targets, scale, sync=j == len(micro) - 1)
        grad_norm, skipped = self.strategy.step(self.lr)
        self.step += 1
        return StepResult(self._global_sum(float(loss_sum)) / n_scored, grad_norm, int(n_scored), skipped)

    def _global_sum(self, value: float) -> float:
        """Sum over the ranks that hold disjoint targets (data- and sequence-parallel ones; ranks
        that share data, e.g. tensor-parallel ones, count once)."""
        if not dist.is_initialized():
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) * self.dims.batch_shards / self.env.world_size

    @property
    def lr(self) -> float:
        t = self.tcfg
        base = self.cfg.optimizer.lr
        return lr_at(self.step, base, t.warmup_steps, t.max_steps, enum_names(t.lr_schedule), t.min_lr_ratio)

    def close(self) -> None:
        shutdown(self.env)

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self) -> Path:
        return self.strategy.save(self.checkpointer, self.step, {"config": to_container(self.cfg)})

    def load(self, path: str | Path) -> None:
        self.step = self.strategy.load(self.checkpointer, Path(path))["step"]

    def resume_path(self) -> Path | None:
        resume = self.tcfg.resume
        if resume == "none":
            return None
        if resume == "auto":
            return self.checkpointer.latest()
        return Path(resume)

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train to step `until` (default trainer.max_steps, which also shapes the LR schedule);
        returns the logged records."""
        tcfg = self.tcfg
        until = tcfg.max_steps if until is None else min(until, tcfg.max_steps)
        path = self.resume_path()
        if path is not None:
            self.load(path)
            self.console.print(f"resumed from [bold]{path}[/] at step {self.step}")
        metrics = MetricsLogger(self.run_dir, tcfg.tensorboard, self.console) if self.env.is_main else None
        flops_per_token = self.spec.flops_per_token(self.cfg.model, self.cfg.data.seq_len)
        peak = peak_flops(self.device)
        records, skipped, tokens, t0 = [], 0, 0, time.perf_counter()
        columns = [TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[rate]}")]  # throughput of the last logged interval
        with Progress(*columns, console=self.console, transient=True, disable=not self.env.is_main) as progress:
            task = progress.add_task("train", total=until, completed=self.step, rate="")
            while self.step < until:
                lr = self.lr
                result = self.train_step()
                skipped += result.skipped
                tokens += result.tokens
                progress.update(task, completed=self.step)
                if self.step % tcfg.log_every == 0 or self.step == until:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    elapsed = time.perf_counter() - t0
                    tps = tokens / elapsed
                    record = {
                        "step": self.step,
                        "loss": result.loss,
                        "lr": lr,
                        "grad_norm": result.grad_norm,
                        f"{self.spec.target_unit}_per_s": tps,
                        "peak_mem_bytes": peak_memory_bytes(self.device),
                        "mfu": tps * flops_per_token / (peak * self.env.world_size) if peak and flops_per_token else None,
                        "skipped_steps": skipped,
                        "loss_scale": self.precision.scaler.get_scale() if self.precision.scaler.is_enabled() else None,
                    }
                    if hasattr(self.strategy, "extra_metrics"):  # per-variable metrics (ModelSpec.metrics)
                        record.update(self.strategy.extra_metrics.pop())
                    if metrics:
                        metrics.log(record)
                    records.append(record)
                    progress.console.print(format_line(record, tcfg.max_steps, self.spec.target_unit))
                    progress.update(task, rate=f"{tps:.3g} {'tok' if self.spec.target_unit == 'tokens' else self.spec.target_unit}/s")
                    tokens, t0 = 0, time.perf_counter()
                if tcfg.save_every > 0 and (self.step % tcfg.save_every == 0 or self.step == until):
                    self.console.print(f"saved [bold]{self.save()}[/]")
                if self.step < until and self.preemption.should_stop():  # every rank stops after this step
                    self.console.print(f"stopping for a signal: saved [bold]{self.save()}[/]")
                    self.preemption.stopped(self.run_dir, self.step, self.env.is_main)
                    break
        if metrics:
            metrics.close()
        return records
