"""`memtrain plan --validate`: run the top rows for a few steps on this machine, each through
`memtrain train` in its own process, and set measured against predicted peak memory and time.

Rows that need more processes than this machine has devices are shrunk to fit (`shrink`) and
compared with the estimate of the shrunk configuration; rows that cannot be, or whose estimated
memory exceeds what this machine has, are skipped with the reason. Each result is printed as its
run finishes.

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


DEGREES = ("parallel.tp", "parallel.cp", "parallel.pp", "parallel.dap", "parallel.dp_replicate")


def shrink(overrides: list[str], slots: int) -> tuple[list[str], str | None]:
    """The row's overrides for at most `slots` processes on one node: launcher.nproc_per_node =
    slots (nnodes 1, no rendezvous host) and every model-parallel or replica degree above it
    lowered to it (a pipeline keeps its stages per rank, its micro-batches follow its degree).
    Returns (overrides, None) when the row already fits, else (shrunk overrides, what changed)."""
    o = dict(s.split("=", 1) for s in overrides if "=" in s)
    world = int(o.get("launcher.nproc_per_node", 1)) * int(o.get("launcher.nnodes", 1))
    if world <= slots:
        return overrides, None
    changed = {"launcher.nproc_per_node": str(slots)}
    drop = {"launcher.nnodes", "launcher.rdzv_endpoint"}
    for key in DEGREES:
        if key in o and o[key] != "-1" and int(o[key]) > slots:
            changed[key] = str(slots)
    if "parallel.pp" in changed and "parallel.pp_microbatches" in o:
        changed["parallel.pp_microbatches"] = str(slots * int(o.get("parallel.pp_stages_per_rank", 1)))
    out = [s for s in overrides if s.split("=", 1)[0] not in drop and s.split("=", 1)[0] not in changed]
    out += [f"{k}={v}" for k, v in changed.items()]
    return out, f"shrunk from {world} to {slots} processes (" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")"


def available_bytes() -> int:
    """Memory this machine can give the runs: MemAvailable from /proc/meminfo (Linux), else the
    physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def validate_rows(rows, steps: int):
    """Run each row here for `steps` steps, yielding one result per row as it finishes. A row that
    needs more processes than this machine has devices (CUDA devices, or CPU cores on a CPU) is
    shrunk to that many (`shrink`) and compared with the estimate of the shrunk configuration; a
    row that cannot be shrunk, that `memtrain train` would refuse here (memtrain.prereq: e.g. a
    GPU-sized row on a CPU), or whose estimated memory (device + host, all processes) exceeds 80%
    of this machine's available memory, is skipped with the reason."""
    from memtrain.config.errors import ConfigError
    from memtrain.config.loader import load_config
    from memtrain.memory.cost_model import step_cost
    from memtrain.memory.estimator import estimate
    from memtrain.prereq import PrerequisiteError, check_runs_here

    cuda = torch.cuda.is_available()
    idle = 0 if cuda else _idle_rss()
    slots = torch.cuda.device_count() if cuda else os.cpu_count() or 1
    budget = 0.8 * available_bytes()
    for row in rows:
        overrides, note = shrink(row.overrides, slots)
        entry = {"overrides": row.overrides, "run_overrides": overrides, "shrunk": note,
                 "predicted_peak_bytes": row.peak_bytes, "predicted_step_s": row.cost.total_s,
                 "measured_peak_bytes": None, "measured_step_s": None,
                 "measure": "cuda max_memory_allocated" if cuda else "CPU peak RSS delta"}
        run = overrides if cuda else [*overrides, "trainer.device=cpu"]
        try:
            cfg = load_config(run)
        except ConfigError as exc:
            entry["skipped"] = f"cannot run on {slots} process(es) here: {exc}"
            yield entry
            continue
        try:  # what `memtrain train` would refuse here (a GPU-sized row on a CPU, NVMe without libaio, ...)
            check_runs_here(cfg if cuda else load_config(overrides))
        except PrerequisiteError as exc:
            entry["skipped"] = f"not run here: {exc}"
            yield entry
            continue
        est = estimate(cfg) if note else row.estimate
        entry["predicted_peak_bytes"], entry["predicted_step_s"] = est.peak, step_cost(cfg, est).total_s
        need = (est.peak + est.host) * est.world_size
        if need > budget:
            entry["skipped"] = (f"needs {need / GiB:.1f} GiB over {est.world_size} process(es), this machine has "
                                f"{budget / 0.8 / GiB:.1f} GiB available")
            yield entry
            continue
        with tempfile.TemporaryDirectory() as run_dir:
            proc = subprocess.run(
                [sys.executable, "-m", "memtrain.cli", "train", *run, f"trainer.max_steps={steps}",
                 "trainer.log_every=1", "trainer.save_every=0", f"hydra.run.dir={run_dir}"],
                capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
            metrics = Path(run_dir) / "metrics.jsonl"
            if proc.returncode != 0 or not metrics.is_file():
                entry["error"] = [_failure_line(proc.stderr or proc.stdout)]
                yield entry
                continue
            records = [json.loads(line) for line in metrics.read_text().splitlines()]
        peak = max(r["peak_mem_bytes"] for r in records)
        entry["measured_peak_bytes"] = peak - idle
        rate_key = next(k for k in records[-1] if k.endswith("_per_s"))
        timed = records[1:] or records
        entry["measured_step_s"] = _step_seconds(run, est, row.seq_len, timed, rate_key)
        yield entry


def _failure_line(output: str) -> str:
    """The line that says why a run failed: memtrain's own one-paragraph error where there is one,
    else the last line that is not Hydra's or torch elastic's hint."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("memtrain:")]
    if own:
        return own[0]
    hints = ("Set the environment variable HYDRA_FULL_ERROR", "traceback :", "error_file:", "To enable traceback")
    rest = [line for line in lines if not line.startswith(hints)]
    return rest[-1] if rest else "failed"


def _step_seconds(overrides: list[str], est, seq_len: int, records, rate_key) -> float:
    """Seconds per step from the logged rate: a step scores global batch x seq_len tokens (a
    language model) or global batch samples; an approximation where padding is not scored."""
    o = dict(s.split("=", 1) for s in overrides if "=" in s)
    mb, accum = int(o.get("trainer.micro_batch_size", 1)), int(o.get("trainer.grad_accum", 1))
    targets = mb * accum * est.dp_replicate * est.dp_shard
    if rate_key.startswith("tokens"):
        targets *= seq_len
    rates = [r[rate_key] for r in records if r[rate_key]]
    return targets / (sum(rates) / len(rates)) if rates else float("nan")


def render_validation_row(i: int, r: dict):
    """One validated row, printed as it finishes: measured vs predicted, or why it was skipped."""
    from rich.text import Text

    text = Text(f"{i:>3} ", style="bold")
    measured = r["measured_peak_bytes"]
    if measured is None:
        text.append("skipped: " + r["skipped"] if "skipped" in r else "failed: " + " ".join(r.get("error", [])),
                    style="yellow")
    else:
        text.append(f"predicted {r['predicted_peak_bytes'] / GiB:.3f} GiB, measured {measured / GiB:.3f} GiB "
                    f"({r['measure']}), ratio {measured / r['predicted_peak_bytes']:.2f}; predicted step "
                    f"{r['predicted_step_s']:.4g} s on the planned hardware, measured {r['measured_step_s']:.4g} s here")
    if r.get("shrunk"):
        text.append(f"\n    {r['shrunk']}", style="dim")
    return text
