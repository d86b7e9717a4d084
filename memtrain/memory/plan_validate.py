"""`memtrain plan --validate`: run the top rows for a few steps on this machine, each through
`memtrain train` in its own process, and set measured against predicted peak memory and time.

Measured peak: CUDA max_memory_allocated on a GPU (metrics.jsonl's peak_mem_bytes). On CPU the
trainer can only report the process's peak resident set; the table shows it minus the peak RSS of
an idle interpreter that imported memtrain (labelled "CPU peak RSS delta"), which includes the
allocator's and the data pipeline's own memory and so is not the estimator's quantity.
Predicted time is for the planned hardware, measured time for this device: compare their ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from memtrain.memory.cost_model import GiB

IDLE = "import resource, torch, memtrain.cli, memtrain.engine.trainer; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"


def _idle_rss() -> int:
    out = subprocess.run([sys.executable, "-c", IDLE], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def validate_rows(rows, steps: int) -> list[dict]:
    cuda = torch.cuda.is_available()
    idle = 0 if cuda else _idle_rss()
    slots = torch.cuda.device_count() if cuda else os.cpu_count() or 1
    results = []
    for row in rows:
        world = row.estimate.world_size
        entry = {"overrides": row.overrides, "predicted_peak_bytes": row.peak_bytes, "predicted_step_s": row.cost.total_s,
                 "measured_peak_bytes": None, "measured_step_s": None,
                 "measure": "cuda max_memory_allocated" if cuda else "CPU peak RSS delta"}
        if world > slots:
            entry["skipped"] = f"needs {world} processes, this machine offers {slots}"
            results.append(entry)
            continue
        with tempfile.TemporaryDirectory() as run_dir:
            proc = subprocess.run(
                [sys.executable, "-m", "memtrain.cli", "train", *row.overrides, f"trainer.max_steps={steps}",
                 "trainer.log_every=1", "trainer.save_every=0", f"hydra.run.dir={run_dir}"],
                capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            metrics = Path(run_dir) / "metrics.jsonl"
            if proc.returncode != 0 or not metrics.is_file():
                entry["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
                results.append(entry)
                continue
            records = [json.loads(line) for line in metrics.read_text().splitlines()]
        peak = max(r["peak_mem_bytes"] for r in records)
        entry["measured_peak_bytes"] = peak - idle
        rate_key = next(k for k in records[-1] if k.endswith("_per_s"))
        timed = records[1:] or records
        entry["measured_step_s"] = _step_seconds(row, timed, rate_key)
        results.append(entry)
    return results


def _step_seconds(row, records, rate_key) -> float:
    """Seconds per step from the logged rate: a step scores global batch x seq_len tokens (a
    language model) or global batch samples; an approximation where padding is not scored."""
    overrides = dict(o.split("=", 1) for o in row.overrides if "=" in o)
    mb, accum = int(overrides.get("trainer.micro_batch_size", 1)), int(overrides.get("trainer.grad_accum", 1))
    targets = mb * accum * row.estimate.dp_replicate * row.estimate.dp_shard
    if rate_key.startswith("tokens"):
        targets *= row.seq_len
    rates = [r[rate_key] for r in records if r[rate_key]]
    return targets / (sum(rates) / len(rates)) if rates else float("nan")


def render_validation(results: list[dict]):
    from rich.table import Table

    table = Table(title="memtrain plan --validate: measured on this device vs predicted", title_justify="left")
    for col in ("overrides", "predicted GiB", "measured GiB", "measure", "ratio", "predicted step s", "measured step s"):
        table.add_column(col, justify="left" if col in ("overrides", "measure") else "right")
    for r in results:
        measured = r["measured_peak_bytes"]
        note = r.get("skipped") or " ".join(r.get("error", []))
        table.add_row(" ".join(r["overrides"]), f"{r['predicted_peak_bytes'] / GiB:.3f}",
                      f"{measured / GiB:.3f}" if measured is not None else note, r["measure"],
                      f"{measured / r['predicted_peak_bytes']:.2f}" if measured is not None else "",
                      f"{r['predicted_step_s']:.4f}", f"{r['measured_step_s']:.4f}" if r["measured_step_s"] else "")
    return table
