"""One Evoformer block (bf16 autocast, forward + backward) side by side: memtrain's block with its
memory techniques vs the same block run plainly (naive attention, no chunking, no recomputation),
same weights, same inputs. And, with --largest-crop, the largest crop for which one training step
of the 48-block `alphafold` model fits on this device, per configuration.

On the GPU machine:

    python scripts/bench/evoformer_block.py --msa 128 --res 256
    python scripts/bench/evoformer_block.py --largest-crop

On CPU (a smoke test of the script, not a measurement):

    python scripts/bench/evoformer_block.py --msa 8 --res 16 --device cpu --dtype float32 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gpu_only import require_cuda  # scripts/bench/ is on sys.path
from memtrain.models.alphafold.evoformer import EvoformerBlock
from memtrain.models.alphafold.primitives import set_attention_backend, set_chunk_size

PUBLISHED_BLOCK = dict(c_m=256, c_z=128, c_hidden_msa_att=32, no_heads_msa=8, c_hidden_opm=32, c_hidden_mul=128,
                       c_hidden_pair_att=32, no_heads_pair=4, transition_n=4, msa_dropout=0.0, pair_dropout=0.0)
VARIANTS = {  # name -> (attention backend, chunk size, recompute the block in backward)
    "plain (naive attention)": ("naive", None, False),
    "memtrain sdpa": ("sdpa", None, False),
    "memtrain sdpa + chunk 64": ("sdpa", 64, False),
    "memtrain sdpa + checkpoint": ("sdpa", None, True),
}

TRITON_VARIANTS = {  # with --triton: the fused kernels (memtrain.kernels), attention and layer norm
    "memtrain triton": ("triton", None, False),
    "memtrain triton + checkpoint": ("triton", None, True),
}


def time_block(block, inputs, checkpoint: bool, dtype, repeats: int, device) -> tuple[float, int | None]:
    m, z, msa_mask, pair_mask = inputs

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if checkpoint:
                out = torch.utils.checkpoint.checkpoint(block, m, z, msa_mask, pair_mask, use_reentrant=False)
            else:
                out = block(m, z, msa_mask, pair_mask)
        (out[0].float().square().mean() + out[1].float().square().mean()).backward()

    step()  # warm-up
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats, torch.cuda.max_memory_allocated() if cuda else None


def compare(args, device, console) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    block = EvoformerBlock(**PUBLISHED_BLOCK).to(device)
    m = torch.randn(1, args.msa, args.res, 256, device=device, requires_grad=True)
    z = torch.randn(1, args.res, args.res, 128, device=device, requires_grad=True)
    masks = torch.ones(1, args.msa, args.res, device=device), torch.ones(1, args.res, args.res, device=device)
    table = Table(title=f"Evoformer block, {args.msa} MSA rows x {args.res} residues, {args.dtype}, fwd+bwd")
    for col in ("variant", "ms", "vs plain", "peak GiB", "vs plain "):
        table.add_column(col, justify="left" if col == "variant" else "right")
    rows, base = [], None
    variants = dict(VARIANTS, **(TRITON_VARIANTS if args.triton else {}))
    for name, (backend, chunk, ckpt) in variants.items():
        set_attention_backend(block, backend)
        set_chunk_size(block, chunk)
        try:
            seconds, peak = time_block(block, (m, z, *masks), ckpt, dtype, args.repeats, device)
        except torch.OutOfMemoryError:
            table.add_row(name, "OOM", "", "", "")
            rows.append({"variant": name, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        block.zero_grad(set_to_none=True)
        m.grad = z.grad = None
        base = base or (seconds, peak)
        table.add_row(name, f"{1e3 * seconds:.1f}", f"{seconds / base[0]:.2f}",
                      f"{peak / 2**30:.2f}" if peak else "-", f"{peak / base[1]:.2f}" if peak and base[1] else "-")
        rows.append({"variant": name, "ms": 1e3 * seconds, "peak_bytes": peak})
    console.print(table)
    return rows


def step_fits(crop: int, extra: list[str], timeout: float) -> bool:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "memtrain.cli", "train", "+recipe=alphafold", f"data.crop_size={crop}",
               "trainer.max_steps=1", "trainer.save_every=0", f"hydra.run.dir={run_dir}", *extra]
        return subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0


def largest_crop(args, console) -> list[dict]:
    configs = {
        "recipe (bf16, checkpoint every block)": [],
        "+ sdpa": ["model.attention_backend=sdpa"],
        "+ sdpa + chunk 64": ["model.attention_backend=sdpa", "model.chunk_size=64"],
        "+ sdpa + chunk 16 + activations_cpu": ["model.attention_backend=sdpa", "model.chunk_size=16",
                                                 "offload=activations_cpu"],
    }
    if args.triton:
        configs["+ triton"] = ["model.attention_backend=triton"]
    rows = []
    for name, extra in configs.items():
        lo, hi = 0, 128
        while hi <= args.max_crop and step_fits(hi, extra, args.timeout):
            lo, hi = hi, hi * 2
        hi = min(hi, args.max_crop + 1)
        while hi - lo > 16:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if step_fits(mid, extra, args.timeout) else (lo, mid)
        console.print(f"{name}: largest crop that trains one step = {lo} residues (+/-16)")
        rows.append({"config": name, "overrides": extra, "largest_crop": lo})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--msa", type=int, default=128)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda", help="cpu runs the published widths on the CPU (slow; measures no GPU)")
    p.add_argument("--largest-crop", action="store_true")
    p.add_argument("--max-crop", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--json", type=Path)
    p.add_argument("--triton", action="store_true",
                   help="also run attention_backend=triton (CUDA, or CPU with TRITON_INTERPRET=1 at tiny sizes)")
    args = p.parse_args()
    if args.device != "cpu":
        require_cuda("evoformer_block.py")
    device = torch.device(args.device)
    console = Console(width=140)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    console.print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    console.print(f"command: python {shlex.join(sys.argv)}")
    console.print(f"device: {name} | torch {torch.__version__}")
    rows = largest_crop(args, console) if args.largest_crop else compare(args, device, console)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "argv": sys.argv, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
