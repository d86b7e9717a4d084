"""Peak memory and tokens/s of one model under each optimizer, side by side in one run, next to
`memtrain estimate`'s predicted peak; ratios are against adamw.

Each optimizer trains as its own `memtrain train` process (an out-of-memory one does not stop the
others) for a few steps on synthetic tokens with bf16 compute; the figures are the CUDA peak
allocation and the last logged throughput from its metrics.jsonl.

On the GPU machine:

    python scripts/bench/optimizers.py --model gpt_1b --steps 10

On CPU (a smoke test of the script itself, not a measurement):

    python scripts/bench/optimizers.py --smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table
from gpu_only import require_cuda  # scripts/bench/ is on sys.path

OPTIMIZERS = ["adamw", "adafactor", "lion", "came", "sm3", "adam_mini", "adamw_bf16", "mezo"]
LR = {"mezo": "1e-6"}  # MeZO's SPSA steps need a far smaller learning rate


def overrides(args, optimizer: str) -> list[str]:
    out = [f"model={args.model}", f"optimizer={optimizer}", "data=synthetic", f"data.seq_len={args.seq_len}",
           f"trainer.micro_batch_size={args.micro_batch}", f"trainer.max_steps={args.steps}",
           f"trainer.log_every={args.steps}", f"trainer.device={args.device}", f"precision={args.precision}"]
    if optimizer in LR:
        out.append(f"optimizer.lr={LR[optimizer]}")
    if args.smoke:
        out += ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "data.num_synthetic_tokens=20000"]
    return out


def predicted_peak(ov: list[str]) -> int:
    from memtrain.config.loader import load_config
    from memtrain.memory.estimator import estimate

    return estimate(load_config(ov)).total


def measure(ov: list[str], run_dir: Path) -> dict | None:
    cmd = [sys.executable, "-m", "memtrain.cli", "train", *ov, f"trainer.run_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    metrics = run_dir / "metrics.jsonl"
    if proc.returncode != 0 or not metrics.is_file():
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(metrics.read_text().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt_1b")
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, 2 steps (tests the script)")
    args = parser.parse_args()
    if not args.smoke and args.device != "cpu":
        require_cuda("optimizers.py", "--smoke")
    if args.smoke:
        args.model, args.steps, args.seq_len, args.micro_batch, args.device = "gpt_tiny", 2, 32, 2, "cpu"
        args.precision = "fp32"
    table = Table(title=f"{args.model}: optimizers side by side ({args.device})")
    for col in ("optimizer", "predicted peak GiB", "measured peak GiB", "vs adamw", "tokens/s", "vs adamw"):
        table.add_column(col)
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.optimizers:
            ov = overrides(args, name)
            record = measure(ov, Path(tmp) / name)
            pred = predicted_peak(ov) / 2**30
            if record is None:
                table.add_row(name, f"{pred:.2f}", "failed (see stderr)", "", "", "")
                continue
            peak, tps = (record.get("peak_mem_bytes") or 0) / 2**30, record.get("tokens_per_s") or 0.0
            base = base or (peak, tps) if name == "adamw" else base
            ratio = (lambda a, b: f"{a / b:.2f}" if b else "—")
            table.add_row(name, f"{pred:.2f}", f"{peak:.2f}", ratio(peak, base[0]) if base else "—",
                          f"{tps:.0f}", ratio(tps, base[1]) if base else "—")
    Console().print(table)


if __name__ == "__main__":
    main()
