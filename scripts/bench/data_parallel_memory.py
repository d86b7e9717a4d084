"""Peak memory and step time of one model under each data-parallel / offload option, side by side,
and the largest decoder that trains on this device with and without offload.

Each configuration runs as its own `memtrain train` process (so one that runs out of memory does
not take the others with it) for a few steps on synthetic tokens; the figures are rank 0's CUDA
peak allocation and throughput from its metrics.jsonl, next to `memtrain estimate`'s prediction.

On the GPU machine:

    python scripts/bench/data_parallel_memory.py --model gpt_1b --steps 10
    python scripts/bench/data_parallel_memory.py --largest --dim 4096 --heads 32

On CPU (a smoke test of the script itself, not a measurement):

    python scripts/bench/data_parallel_memory.py --model gpt_tiny --seq-len 64 --micro-batch 2 --steps 2 --device cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from gpu_only import require_cuda  # scripts/bench/ is on sys.path
from rich.console import Console
from rich.table import Table

OPTIONS = {
    "single": ["parallel=single"],
    "fsdp + params_cpu": ["parallel=fsdp", "offload=params_cpu"],
    "zero2 + optimizer_cpu": ["parallel=zero2", "offload=optimizer_cpu"],
    "zero3 + params_cpu": ["parallel=zero3", "offload=params_cpu"],
    "single + activations_cpu": ["parallel=single", "offload=activations_cpu"],
}
# for the largest-model search: fewest activations (micro-batch 1, full recomputation)
LARGEST = {
    "no offload (fsdp)": ["parallel=fsdp"],
    "ZeRO-Offload (zero2 + optimizer_cpu)": ["parallel=zero2", "offload=optimizer_cpu"],
    "ZeRO-3 + params_cpu": ["parallel=zero3", "offload=params_cpu"],
    "ZeRO-Infinity (zero3 + nvme)": ["parallel=zero3", "offload=nvme"],
}


def memtrain(command: str, overrides: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memtrain.cli", command, *overrides],
                          capture_output=True, text=True, timeout=timeout)


def run(overrides: list[str], steps: int, timeout: float) -> dict:
    """Train `steps` steps; the last logged record (after the first step's warm-up) or the error."""
    with tempfile.TemporaryDirectory() as run_dir:
        proc = memtrain("train", [*overrides, f"trainer.max_steps={steps}", f"trainer.log_every={max(1, steps - 1)}",
                                  f"hydra.run.dir={run_dir}"], timeout)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return records[-1]


def predicted_bytes(overrides: list[str]) -> int | None:
    proc = memtrain("estimate", [*overrides, "--json"], 120)
    return json.loads(proc.stdout)["total"] if proc.returncode == 0 else None


def compare(args, base: list[str], console: Console) -> list[dict]:
    table = Table(title=f"{args.model}: micro-batch {args.micro_batch} x {args.seq_len}, {args.precision}")
    for col in ("option", "tokens/s", "vs single", "peak GiB", "predicted GiB", "note"):
        table.add_column(col, justify="left" if col in ("option", "note") else "right")
    rows, ref = [], None
    for name, extra in OPTIONS.items():
        result = run(base + extra, args.steps, args.timeout)
        predicted = predicted_bytes(base + extra)
        tps = result.get("tokens_per_s")
        ref = tps if name == "single" else ref
        peak = result.get("peak_mem_bytes")
        table.add_row(name, f"{tps:,.0f}" if tps else "-", f"{tps / ref:.2f}" if tps and ref else "-",
                      f"{peak / 2**30:.2f}" if peak else "-", f"{predicted / 2**30:.2f}" if predicted else "-",
                      result.get("error", ""))
        rows.append({"option": name, "overrides": extra, **result, "predicted_bytes": predicted})
    console.print(table)
    return rows


def fits(base: list[str], extra: list[str], layers: int, timeout: float) -> bool:
    return "error" not in run([*base, *extra, f"model.n_layers={layers}"], 2, timeout)


def largest(args, base: list[str], console: Console) -> list[dict]:
    """Per option, the most layers (at fixed width) that train 2 steps: doubling, then bisection."""
    shape = ["model=gpt_small", f"model.dim={args.dim}", f"model.n_heads={args.heads}", "model.vocab_size=32000",
             "trainer.micro_batch_size=1", "activation_checkpoint=full"]
    rows = []
    for name, extra in LARGEST.items():
        lo, hi = 0, 1
        while hi <= args.max_layers and fits(base + shape, extra, hi, args.timeout):
            lo, hi = hi, hi * 2
        hi = min(hi, args.max_layers + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(base + shape, extra, mid, args.timeout) else (lo, mid)
        n_params = None
        if lo:
            proc = memtrain("estimate", [*base, *shape, *extra, f"model.n_layers={lo}", "--json"], 120)
            n_params = json.loads(proc.stdout)["n_params"]
        console.print(f"{name}: {lo} layers of width {args.dim} -> {n_params / 1e9 if n_params else 0:.2f}B parameters")
        rows.append({"option": name, "layers": lo, "n_params": n_params})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt_1b")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--largest", action="store_true", help="search the largest decoder per option instead")
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--max-layers", type=int, default=512, help="stop the search here")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.device != "cpu":
        require_cuda("data_parallel_memory.py")
    console = Console(width=140)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    console.print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    console.print(f"command: python {shlex.join(sys.argv)}")
    console.print(f"device: {device} | torch {torch.__version__}")
    base = [f"precision={args.precision}", "data=synthetic", f"data.seq_len={args.seq_len}",
            f"trainer.device={args.device}", "trainer.warmup_steps=0"]
    if args.largest:
        rows = largest(args, base, console)
    else:
        rows = compare(args, [f"model={args.model}", f"trainer.micro_batch_size={args.micro_batch}", *base], console)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "argv": sys.argv, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
