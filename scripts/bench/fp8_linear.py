"""gpt_1b training steps in bf16 vs fp8 (FP8 linear layers), side by side in one process.

Each side is the real Trainer.train_step (autocast, loss, backward, clipping, AdamW) on the same
synthetic batches; reports tokens/s, peak CUDA memory and the ratios fp8 / bf16. fp8 needs a GPU of
capability >= 8.9; elsewhere that side is reported as unavailable.

On the GPU machine:
    python scripts/bench/fp8_linear.py --model gpt_1b --micro-batch 4 --seq-len 2048 --steps 20 --warmup 5
On CPU, a smoke test of the script (bf16 only):
    python scripts/bench/fp8_linear.py --smoke
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import torch

from gpu_only import require_cuda  # scripts/bench/ is on sys.path
from memtrain.config.errors import ConfigError
from memtrain.config.loader import load_config
from memtrain.engine.trainer import Trainer


def run(precision: str, args: argparse.Namespace) -> dict:
    overrides = [f"model={args.model}", f"precision={precision}", "data=synthetic", f"data.seq_len={args.seq_len}",
                 f"trainer.micro_batch_size={args.micro_batch}", f"trainer.max_steps={args.steps + args.warmup}",
                 f"trainer.device={args.device}", "data.num_synthetic_tokens=2000000"]
    try:
        cfg = load_config(overrides)
    except ConfigError as exc:
        return {"precision": precision, "error": str(exc)}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        for _ in range(args.warmup):
            trainer.train_step()
        cuda = trainer.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0, tokens = time.perf_counter(), 0
        for _ in range(args.steps):
            tokens += trainer.train_step().tokens
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else None
        trainer.close()
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"precision": precision, "tokens_per_s": tokens / elapsed, "peak_bytes": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt_1b")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="gpt_tiny on CPU, 2 steps")
    args = p.parse_args()
    if not args.smoke:
        require_cuda("fp8_linear.py", "--smoke")
    if args.smoke:
        args.model, args.micro_batch, args.seq_len, args.steps, args.warmup, args.device = "gpt_tiny", 2, 64, 2, 1, "cpu"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(f"{args.model}, micro-batch {args.micro_batch} x {args.seq_len} tokens, {args.steps} steps, device {device}")
    results = [run("bf16", args), run("fp8", args)]
    for r in results:
        if "error" in r:
            print(f"{r['precision']:>5}: unavailable ({r['error']})")
        else:
            peak = f"{r['peak_bytes'] / 2**30:.2f} GiB" if r["peak_bytes"] else "n/a"
            print(f"{r['precision']:>5}: {r['tokens_per_s']:12.1f} tokens/s   peak {peak}")
    base, fp8 = results
    if "error" not in base and "error" not in fp8:
        print(f"fp8 / bf16: tokens/s x{fp8['tokens_per_s'] / base['tokens_per_s']:.2f}", end="")
        if base["peak_bytes"]:
            print(f", peak memory x{fp8['peak_bytes'] / base['peak_bytes']:.2f}")
        else:
            print()


if __name__ == "__main__":
    main()
