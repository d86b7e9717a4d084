"""Evoformer attention with a pair bias, forward + backward: the fused Triton kernel
(memtrain.kernels.evoformer_attention) vs torch SDPA with an additive bias vs the naive
softmax(q k^T / sqrt(d) + bias) v, side by side in one run. Reports time and peak memory above the
inputs, and the ratios of the Triton kernel to SDPA (goal: time <= 1/1.5, memory <= 0.5).

Shapes (bf16): MSA row attention, q k v [1, S=128, N, H=8, D=32], bias [1, 1, H, N, N] shared by
the S rows, N = 256, 384, 512, 768; triangle attention, [1, N, N, H=4, D=32], bias [1, 1, H, N, N],
N = 256, 384. A key mask (the last 5% of keys masked) is applied in every variant.

    python scripts/bench/evoformer_attention.py                    # CUDA
    TRITON_INTERPRET=1 python scripts/bench/evoformer_attention.py --smoke   # CPU, tiny, interpreter
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gpu_only import require_cuda  # scripts/bench/ is on sys.path
from memtrain.kernels.evoformer_attention import evoformer_attention
from memtrain.kernels.evoformer_attention.reference import MASK_BIAS

MSA_ROW = [("msa_row", 128, n, 8, 32) for n in (256, 384, 512, 768)]  # (name, S, N, H, D)
TRIANGLE = [("triangle", n, n, 4, 32) for n in (256, 384)]
SMOKE = [("msa_row", 2, 17, 2, 16), ("triangle", 9, 9, 2, 16)]


def naive(q, k, v, bias, mask):
    """softmax(q k^T / sqrt(d) + bias + mask bias) v with explicit [*, H, N, N] logits, softmax in fp32."""
    qh, kh, vh = (t.transpose(-2, -3) for t in (q, k, v))
    logits = torch.matmul(qh * q.shape[-1] ** -0.5, kh.transpose(-1, -2)) + bias
    logits = logits + (MASK_BIAS * (1.0 - mask)).to(logits.dtype)[..., None, None, :]
    return torch.matmul(torch.softmax(logits.float(), -1).to(v.dtype), vh).transpose(-2, -3)


def sdpa(q, k, v, bias, mask):
    """F.scaled_dot_product_attention with bias + mask bias as a float attn_mask of q's dtype; the
    mask is [B*S, H, N, N]: SDPA takes one batch dim, so the per-row key mask makes it full size."""
    lead = q.shape[:-3]
    qh, kh, vh = (t.transpose(-2, -3).reshape(-1, t.shape[-2], t.shape[-3], t.shape[-1]) for t in (q, k, v))
    attn = bias + (MASK_BIAS * (1.0 - mask)).to(bias.dtype)[..., None, None, :]  # [*, H, N, N]
    attn = attn.expand(*lead, *attn.shape[-3:]).reshape(-1, *attn.shape[-3:])
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn)
    return out.reshape(*lead, *out.shape[-3:]).transpose(-2, -3)


def triton(q, k, v, bias, mask):
    return evoformer_attention(q, k, v, bias=bias, mask=mask)


IMPLS = {"triton": triton, "sdpa": sdpa, "naive": naive}


def make_inputs(s, n, h, d, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(1, s, n, h, d, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    bias = torch.randn(1, 1, h, n, n, generator=g).to(device, dtype).requires_grad_()
    mask = torch.ones(1, s, n, device=device)
    mask[..., n - max(1, n // 20):] = 0
    return q, k, v, bias, mask


def measure(fn, inputs, repeats, device) -> tuple[float, int | None, torch.Tensor]:
    q, k, v, bias, mask = inputs
    grad = torch.randn_like(q)

    def step():
        out = fn(q, k, v, bias, mask)
        torch.autograd.grad(out, (q, k, v, bias), grad)
        return out

    out = step()  # warm-up (and autotuning)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated() - base if cuda else None
    return seconds, peak, out.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU in fp32 (needs TRITON_INTERPRET=1)")
    p.add_argument("--dtype", default=None, help="default bfloat16 (float32 with --smoke)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not args.smoke:
        require_cuda("evoformer_attention.py", "--smoke (with TRITON_INTERPRET=1)")
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = getattr(torch, args.dtype or ("float32" if args.smoke else "bfloat16"))
    shapes = SMOKE if args.smoke else MSA_ROW + TRIANGLE
    repeats = 1 if args.smoke else args.repeats
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)"
    print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"device: {name} | torch {torch.__version__} | {dtype} | fwd+bwd, mean of {repeats}")
    header = f"{'shape':>28} | " + " | ".join(f"{i + ' ms':>10} {i + ' MiB':>11}" for i in IMPLS)
    print(header + " | triton/sdpa time  mem | max|triton-naive|")
    rows = []
    for kind, s, n, h, d in shapes:
        inputs = make_inputs(s, n, h, d, dtype, device)
        res = {}
        for impl, fn in IMPLS.items():
            try:
                res[impl] = measure(fn, inputs, repeats, device)
            except torch.OutOfMemoryError:
                res[impl] = (float("nan"), None, None)
                torch.cuda.empty_cache()
        err = (res["triton"][2].float() - res["naive"][2].float()).abs().max().item() \
            if res["triton"][2] is not None and res["naive"][2] is not None else float("nan")
        t_ratio = res["triton"][0] / res["sdpa"][0]
        m_ratio = (res["triton"][1] / res["sdpa"][1]) if res["triton"][1] and res["sdpa"][1] else float("nan")
        cells = " | ".join(f"{1e3 * r[0]:>10.2f} {(r[1] or 0) / 2**20:>11.1f}" for r in res.values())
        label = f"{kind} S={s} N={n} H={h} D={d}"
        print(f"{label:>28} | {cells} | {t_ratio:>10.2f} {m_ratio:>5.2f} | {err:.2e}")
        rows.append({"shape": label, **{f"{i}_ms": 1e3 * r[0] for i, r in res.items()},
                     **{f"{i}_peak_bytes": r[1] for i, r in res.items()},
                     "triton_over_sdpa_time": t_ratio, "triton_over_sdpa_peak": m_ratio, "max_abs_err_vs_naive": err})
    if args.json:
        args.json.write_text(json.dumps({"device": name, "argv": sys.argv, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
