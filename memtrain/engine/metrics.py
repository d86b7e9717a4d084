"""Step metrics: one JSON object per logged step in metrics.jsonl, optional TensorBoard, and a
live line on the console."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

# Dense bf16 tensor-core peak FLOP/s, by substring of the CUDA device name.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak bytes allocated by tensors on CUDA; the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = False, console: Console | None = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a")
        self.console = console or Console()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def format_line(record: dict[str, Any], max_steps: int, unit: str = "tokens") -> str:
    parts = [
        f"step [bold]{record['step']:>6}[/]/{max_steps}",
        f"loss [cyan]{record['loss']:.4f}[/]",
        f"lr {record['lr']:.2e}",
        f"{record[f'{unit}_per_s']:,.1f} {'tok' if unit == 'tokens' else unit}/s",
        f"mem {record['peak_mem_bytes'] / 2**30:.2f} GiB",
    ]
    if record.get("mfu") is not None:
        parts.append(f"mfu {100 * record['mfu']:.1f}%")
    for key, value in record.items():  # held-out evaluation (trainer.eval_every)
        if key.startswith("val_") and isinstance(value, float):
            parts.append(f"{key} [green]{value:.4f}[/]")
    if record.get("skipped_steps"):
        parts.append(f"[yellow]skipped {record['skipped_steps']}[/]")
    return "  ".join(parts)


class StepMetrics:
    """The metrics processor of a run: accumulates, on the device, the targets scored since the last
    logged step, and on a logged step turns a StepResult into the record (loss, lr, grad norm,
    throughput, peak memory, MFU, skipped steps, loss scale and the model's extra metrics), with the
    step's values copied to the host once. Throughput counts this rank's data-parallel share summed
    over the ranks (what RankSums reports) per second of wall time since the last logged step."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.unit = trainer.spec.target_unit
        self.flops_per_token = trainer.spec.flops_per_token(trainer.cfg.model, trainer.cfg.data.seq_len)
        self.peak_flops = peak_flops(trainer.device)
        self.tokens = torch.zeros((), dtype=torch.float64, device=trainer.device)
        self.t0 = time.perf_counter()

    def add(self, result: Any) -> None:
        """Every step: add its scored targets (no host read)."""
        self.tokens += result.tokens_tensor

    def record(self, result: Any, lr: float) -> dict[str, Any]:
        """A logged step: the record of the interval since the last one, which then starts anew."""
        t = self.trainer
        if t.device.type == "cuda":
            torch.cuda.synchronize(t.device)
        elapsed = time.perf_counter() - self.t0
        loss, grad_norm, n_tokens = result.read(self.tokens)  # the values' one copy to the host
        rate = n_tokens / elapsed
        record = {
            "step": t.step,
            "updates": t.updates,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            f"{self.unit}_per_s": rate,
            "peak_mem_bytes": peak_memory_bytes(t.device),
            "mfu": (rate * self.flops_per_token / (self.peak_flops * t.env.world_size)
                    if self.peak_flops and self.flops_per_token else None),
            "skipped_steps": t.skipped_steps,
            "loss_scale": t.precision.scaler.get_scale() if t.precision.scaler.is_enabled() else None,
        }
        if hasattr(t.strategy, "extra_metrics"):  # per-variable metrics (ModelSpec.metrics)
            record.update(t.strategy.extra_metrics.pop())
        self.tokens, self.t0 = torch.zeros_like(self.tokens), time.perf_counter()
        return record

    def rate_text(self, record: dict[str, Any]) -> str:
        return f"{record[f'{self.unit}_per_s']:.3g} {'tok' if self.unit == 'tokens' else self.unit}/s"


class MetricMeans:
    """Running means of a model's extra metrics (ModelSpec.metrics) between two logged steps.
    Tensor values are summed on their device in float64 and read once, by `pop` (a logged step)."""

    def __init__(self):
        self.sums: dict[str, float | torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, float | torch.Tensor]) -> None:
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().to(torch.float64)  # float64, as a Python float would be summed
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def pop(self) -> dict[str, float]:
        keys = list(self.sums)
        tensors = [k for k in keys if isinstance(self.sums[k], torch.Tensor)]
        sums = {k: v for k, v in self.sums.items() if k not in tensors}
        if tensors:
            sums.update(zip(tensors, torch.stack([self.sums[k] for k in tensors]).tolist()))  # one copy to the host
        out = {k: sums[k] / self.count for k in keys} if self.count else {}
        self.sums, self.count = {}, 0
        return out
