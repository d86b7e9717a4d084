"""The optimizer step alone, memtrain's default against the per-parameter loop, side by side.

For each optimizer, the default step (torch's fused AdamW where the device has it; the multi-tensor
foreach steps of memtrain's own optimizers) against the per-parameter loop (AdamW fused=false,
foreach=false: the for-loop implementation), on the parameters of one model (default the 58.5M
decoder of scripts/bench/lm_vs_hf.py) with random gradients. Each measurement runs in a fresh
process; repetitions are interleaved. Reported: median step time (spread over repetitions), the
peak resident set above the built model, gradients and optimizer state (what the step's
temporaries add), and the ratio default / per-parameter.

    python scripts/bench/optimizer_step.py                       # CPU, 58.5M parameters, 3 repetitions
    python scripts/bench/optimizer_step.py --optimizers adamw lion --repeats 5
    python scripts/bench/optimizer_step.py --smoke               # tiny model: checks the script
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_vs_hf import SHAPE, SMOKE_SHAPE, _device_name, current_rss, memtrain_overrides, peak_rss, reset_peak_rss  # noqa: E402

OPTIMIZERS = ["adamw", "lion", "came", "sm3", "adam_mini", "adamw_bf16"]
LOOP = {"adamw": "optimizer.fused=false"}  # the others: optimizer.foreach=false


def worker(job: dict) -> dict:
    import torch

    from memtrain.config.loader import load_config
    from memtrain.models import get_spec
    from memtrain.optim.builder import build_optimizer

    cfg = load_config(job["overrides"])
    device = torch.device(job["device"])
    torch.manual_seed(0)
    with torch.device(device):
        model = get_spec(cfg.model.arch).build_model(cfg.model)
    opt = build_optimizer(cfg.optimizer, model, device.type)
    gen = torch.Generator(device).manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, device=device) * 1e-3
    opt.step()  # the states exist from here on
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rss = current_rss()
    reset_peak_rss()
    times = []
    for _ in range(job["steps"]):
        sync()
        t0 = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "peak_rss_delta": peak_rss() - rss,
            "params": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizers", nargs="+", default=OPTIMIZERS, choices=OPTIMIZERS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    repeats, steps = (1, 2) if args.smoke else (args.repeats, args.steps)
    samples: dict[tuple[str, str], list[dict]] = {}
    load_start, t0 = os.getloadavg()[0], time.time()
    for rep in range(repeats):
        for name in args.optimizers:
            kinds = ["default", "loop"] if rep % 2 == 0 else ["loop", "default"]
            for kind in kinds:
                extra = [f"optimizer={name}"] + ([LOOP.get(name, "optimizer.foreach=false")] if kind == "loop" else [])
                job = {"device": args.device, "steps": steps,
                       "overrides": memtrain_overrides(shape, "fp32", "none", args.device, extra)}
                proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                                      text=True, timeout=900)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                if proc.returncode or not lines:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                samples.setdefault((name, kind), []).append(json.loads(lines[-1]))
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"command: python scripts/bench/optimizer_step.py {' '.join(sys.argv[1:])}")
    print(f"device: {_device_name(args.device)} | {samples[(args.optimizers[0], 'default')][0]['params']:,} parameters | "
          f"{repeats} interleaved repetitions x {steps} steps | load average {load_start:.2f} -> {os.getloadavg()[0]:.2f}, "
          f"{time.time() - t0:.0f} s\n")
    print("| optimizer | default step ms | per-parameter step ms | ratio | default peak above states MiB | per-parameter MiB |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name in args.optimizers:
        d, lp = samples[(name, "default")], samples[(name, "loop")]
        ms = lambda xs: (1e3 * statistics.median(x["step_s"] for x in xs), 1e3 * min(x["step_s"] for x in xs),  # noqa: E731
                         1e3 * max(x["step_s"] for x in xs))
        mib = lambda xs: statistics.median(x["peak_rss_delta"] for x in xs) / 2**20  # noqa: E731
        (dm, dlo, dhi), (lm, llo, lhi) = ms(d), ms(lp)
        rows[name] = {"default_ms": dm, "loop_ms": lm, "ratio": dm / lm, "default_mib": mib(d), "loop_mib": mib(lp)}
        print(f"| {name} | {dm:.0f} ({dlo:.0f}-{dhi:.0f}) | {lm:.0f} ({llo:.0f}-{lhi:.0f}) | {dm / lm:.2f} | "
              f"{mib(d):.0f} | {mib(lp):.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "samples": {f"{k[0]}/{k[1]}": v for k, v in samples.items()}},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
