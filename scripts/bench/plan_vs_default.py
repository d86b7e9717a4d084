"""The planner's pick vs the recipe's default configuration, side by side in one run: measured
step time and peak memory (CUDA max_memory_allocated; on CPU the step time only).

On the GPU machine (one GPU):
    python scripts/bench/plan_vs_default.py --recipe alphafold --override data.crop_size=384 --steps 5
On CPU, a smoke test:
    python scripts/bench/plan_vs_default.py --recipe alphafold_tiny --steps 2 --device cpu
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from gpu_only import require_cuda  # scripts/bench/ is on sys.path
from memtrain.config.loader import load_config
from memtrain.memory.planner import plan


def run(overrides: list[str], steps: int, warmup: int, cuda: bool) -> dict:
    from memtrain.engine.trainer import Trainer

    cfg = load_config(overrides)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, console=Console(quiet=True))
        for _ in range(warmup):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / steps
        trainer.close()
    del trainer
    gc.collect()
    return {"step_s": seconds, "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="alphafold")
    p.add_argument("--override", action="append", default=[])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args()
    if args.device != "cpu":
        require_cuda("plan_vs_default.py")
    cuda = args.device != "cpu" and torch.cuda.is_available()
    base = [f"+recipe={args.recipe}", *args.override, "hardware.gpus=1", f"trainer.device={'cuda' if cuda else 'cpu'}"]
    if cuda:
        base.append(f"hardware.gpu_mem_gb={torch.cuda.get_device_properties(0).total_memory / 2**30:.1f}")
    picked = plan(base, verify_top=1)
    if not picked.rows:
        print("the planner found nothing that fits", file=sys.stderr)
        return 1
    pick = [o for o in picked.rows[0].overrides if not o.startswith("hardware")]
    default = [o for o in base if not o.startswith("hardware")]
    table = Table(title=f"planner's pick vs default ({'CUDA' if cuda else 'CPU'})", title_justify="left")
    for col in ("config", "overrides", "step s", "peak GiB"):
        table.add_column(col)
    results = {}
    for name, overrides in (("default", default), ("planner", pick)):
        r = results[name] = run(overrides, args.steps, args.warmup, cuda)
        table.add_row(name, " ".join(overrides), f"{r['step_s']:.3f}",
                      f"{r['peak_bytes'] / 2**30:.2f}" if r["peak_bytes"] is not None else "n/a")
    console = Console(width=200)
    console.print(table)
    console.print(f"step time ratio planner/default: {results['planner']['step_s'] / results['default']['step_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
