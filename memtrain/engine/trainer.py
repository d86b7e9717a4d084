"""The training loop: build (model -> memory wrappers -> optimizer), then train_step in a loop
with logging and checkpoints. Everything model-specific comes from the ModelSpec."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from memtrain.config.errors import enum_names, to_container
from memtrain.engine.checkpoint import Checkpointer
from memtrain.engine.metrics import MetricsLogger, format_line, peak_flops, peak_memory_bytes
from memtrain.memory.activation_checkpoint import apply_activation_checkpointing
from memtrain.models import get_spec
from memtrain.optim.builder import build_optimizer, lr_at
from memtrain.precision.amp import Precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        self.console = console or Console()
        self.spec = get_spec(cfg.model.arch)
        self.device = resolve_device(enum_names(self.tcfg.device))
        torch.manual_seed(self.tcfg.seed)

        self.precision = Precision.from_config(cfg.precision, self.device.type)
        with torch.device(self.device):
            self.model = self.spec.build_model(cfg.model)
        self.model.to(dtype=self.precision.param_dtype)
        apply_activation_checkpointing(self.model, cfg.checkpoint, self.spec)
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.device.type)
        self.data = self.spec.build_data(cfg)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", self.tcfg.keep_last)
        self.step = 0

    # -- one optimizer step ---------------------------------------------------------------------

    def train_step(self) -> StepResult:
        tcfg, scaler = self.tcfg, self.precision.scaler
        first = self.step * tcfg.grad_accum
        micro = [self.data.batch(first + j, tcfg.micro_batch_size) for j in range(tcfg.grad_accum)]
        n_scored = sum(int((t != -100).sum()) for _, t in micro)  # normalise by the whole step's tokens
        loss_sum = torch.zeros((), device=self.device)
        for inputs, targets in micro:
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            with self.precision.autocast():
                loss, _ = self.spec.loss_fn(self.model(inputs), targets)
            scaler.scale(loss / n_scored).backward()
            loss_sum += loss.detach()

        scaler.unscale_(self.optimizer)
        max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        skipped = not math.isfinite(grad_norm)
        if scaler.is_enabled():
            scaler.step(self.optimizer)  # skips the update itself when it found inf/nan
            scaler.update()
        elif not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepResult(float(loss_sum) / n_scored, grad_norm, n_scored, skipped)

    @property
    def lr(self) -> float:
        t = self.tcfg
        base = self.cfg.optimizer.lr
        return lr_at(self.step, base, t.warmup_steps, t.max_steps, enum_names(t.lr_schedule), t.min_lr_ratio)

    # -- checkpoints ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs, as DCP-loadable tensors (model and optimizer keyed by
        parameter name, through torch.distributed.checkpoint.state_dict)."""
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optimizer": optim_sd, "rng": {"cpu": torch.get_rng_state()}}
        if self.precision.scaler.is_enabled():
            state["scaler"] = self.precision.scaler.state_dict()
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self) -> Path:
        return self.checkpointer.save(self.step, self.state(), meta={"config": to_container(self.cfg)})

    def load(self, path: str | Path) -> None:
        state = self.state()
        meta = self.checkpointer.load(path, state)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        if "scaler" in state:
            self.precision.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = meta["step"]

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
        metrics = MetricsLogger(self.run_dir, tcfg.tensorboard, self.console)
        flops_per_token = self.spec.flops_per_token(self.cfg.model, self.cfg.data.seq_len)
        peak = peak_flops(self.device)
        records, skipped, tokens, t0 = [], 0, 0, time.perf_counter()
        columns = [TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task("train", total=until, completed=self.step)
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
                        "tokens_per_s": tps,
                        "peak_mem_bytes": peak_memory_bytes(self.device),
                        "mfu": tps * flops_per_token / peak if peak else None,
                        "skipped_steps": skipped,
                        "loss_scale": self.precision.scaler.get_scale() if self.precision.scaler.is_enabled() else None,
                    }
                    metrics.log(record)
                    records.append(record)
                    progress.console.print(format_line(record, tcfg.max_steps))
                    tokens, t0 = 0, time.perf_counter()
                if tcfg.save_every > 0 and (self.step % tcfg.save_every == 0 or self.step == until):
                    self.console.print(f"saved [bold]{self.save()}[/]")
        metrics.close()
        return records
