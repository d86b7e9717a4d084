"""One training step of memtrain's GPT decoder vs Hugging Face's LlamaForCausalLM of the same shape.

Measures, in one process and one after the other, the full optimizer step of both models: forward,
backward, gradient clipping and AdamW update, on the same synthetic token batches, with the same
precision (memtrain's Precision: fp32 parameters, autocast to the compute dtype, loss scaling for
fp16) and the same optimizer (memtrain's build_optimizer). memtrain's side is the real
Trainer.train_step; HF's side is a plain loop with labels=input_ids (HF shifts them internally).
Reports tokens/s, MFU (both with memtrain's flops_per_token, so the ratio is fair), peak CUDA memory
and step time, and the ratios memtrain/HF. The HF model is built only after memtrain's is freed.

On the GPU machine (needs transformers):
    python scripts/bench/gpt_step_vs_hf.py --steps 20 --warmup 5
    python scripts/bench/gpt_step_vs_hf.py --override checkpoint=full --json bench.json
On CPU, for a smoke test:
    python scripts/bench/gpt_step_vs_hf.py --model gpt_tiny --seq-len 64 --micro-batch 2 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import math
import platform
import shlex
import sys
import tempfile
import time
import weakref
from typing import Callable

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from gpu_only import require_cuda  # scripts/bench/ is on sys.path
from memtrain.config.loader import load_config
from memtrain.config.errors import ConfigError, enum_names, require
from memtrain.engine.metrics import peak_flops
from memtrain.engine.trainer import Trainer, resolve_device
from memtrain.models import get_spec
from memtrain.models.gpt.model import ffn_hidden_size
from memtrain.optim.builder import build_optimizer
from memtrain.precision.amp import Precision


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt_1b", help="memtrain model option (conf/model/)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    p.add_argument("--precision", default="bf16", help="memtrain precision option (fp32, bf16, fp16)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--only", default="both", choices=["memtrain", "hf", "both"])
    p.add_argument("--override", action="append", default=[], help="extra memtrain Hydra override (repeatable)")
    return p.parse_args()


def measure(step: Callable[[], float], device: torch.device, warmup: int, steps: int) -> dict:
    """Warmup + timed steps; the peak memory covers both (and the parameters already built)."""
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if cuda else None, "loss": loss}


def _time_memtrain(cfg, run_dir, device, args, console) -> tuple[dict, int, weakref.ref]:
    trainer = Trainer(cfg, run_dir, console=console)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    result = measure(lambda: trainer.train_step().loss, device, args.warmup, args.steps)
    return result, n_params, weakref.ref(trainer.model)


def run_memtrain(cfg, device, args, console) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        result, n_params, model_ref = _time_memtrain(cfg, run_dir, device, args, console)
    gc.collect()
    if model_ref() is not None:
        console.print("warning: memtrain's model is still referenced; HF's peak memory may include it", style="yellow")
    return {**result, "params": n_params}


def run_hf(cfg, device, args, console) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    m, t = cfg.model, cfg.trainer
    hcfg = LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.dim, intermediate_size=ffn_hidden_size(m.dim, m.ffn_hidden, m.multiple_of),
        num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads or m.n_heads,
        max_position_embeddings=m.max_seq_len, rope_theta=m.rope_theta, rms_norm_eps=m.norm_eps,
        tie_word_embeddings=m.tie_embeddings, initializer_range=m.init_std, use_cache=False, attn_implementation="sdpa",
    )
    theta = (getattr(hcfg, "rope_parameters", None) or {}).get("rope_theta", getattr(hcfg, "rope_theta", None))
    assert theta == m.rope_theta, f"HF config lost rope_theta ({theta} != {m.rope_theta})"
    precision = Precision.from_config(cfg.precision, device.type)
    torch.manual_seed(t.seed)
    with torch.device(device):
        model = LlamaForCausalLM(hcfg)
    model.to(dtype=precision.param_dtype).train()
    if cfg.checkpoint.mode.name == "full":  # HF's equivalent: recompute every decoder layer
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns there
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.checkpoint.mode.name != "none":
        console.print("note: HF has no selective activation checkpointing; its side runs without", style="yellow")
    optimizer = build_optimizer(cfg.optimizer, model, device.type)  # torch AdamW, fused on CUDA
    data = get_spec(m.arch).build_data(cfg)  # the same deterministic batches as the Trainer's
    scaler, max_norm, steps_done = precision.scaler, t.grad_clip if t.grad_clip > 0 else math.inf, itertools.count()

    def train_step() -> float:  # mirrors Trainer.train_step, host syncs (grad norm, loss) included
        loss_sum, first = torch.zeros((), device=device), next(steps_done) * t.grad_accum
        for j in range(t.grad_accum):
            inputs, _ = data.batch(first + j, t.micro_batch_size)
            inputs = inputs.to(device, non_blocking=True)
            with precision.autocast():
                loss = model(input_ids=inputs, labels=inputs).loss / t.grad_accum
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(optimizer)
        float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss_sum)

    n_params = sum(p.numel() for p in model.parameters())
    return {**measure(train_step, device, args.warmup, args.steps), "params": n_params}


def main() -> int:
    args = parse_args()
    if args.device != "cpu":
        require_cuda("gpt_step_vs_hf.py")
    console = Console(width=max(120, Console().width))  # the table and header fit unwrapped when piped
    hf_version = None
    if args.only != "memtrain":
        try:
            import transformers
        except ImportError:
            console.print("transformers is not installed: pip install transformers, or pass --only memtrain", style="red")
            return 2
        hf_version = transformers.__version__
    overrides = [f"model={args.model}", f"precision={args.precision}", "data=synthetic", f"data.seq_len={args.seq_len}",
                 f"trainer.micro_batch_size={args.micro_batch}", f"trainer.max_steps={args.warmup + args.steps}",
                 "trainer.grad_clip=1.0", f"trainer.device={args.device}", *args.override]
    try:
        cfg = load_config(overrides)
        require(args.only == "memtrain" or cfg.model.arch == "gpt", "model.arch", "the HF side maps only arch=gpt")
    except ConfigError as exc:
        console.print(f"config: {exc}", style="red", markup=False)
        return 2
    t = cfg.trainer
    device = resolve_device(enum_names(t.device))
    tokens_per_step = t.micro_batch_size * cfg.data.seq_len * t.grad_accum
    flops_per_token = get_spec(cfg.model.arch).flops_per_token(cfg.model, cfg.data.seq_len)
    peak = peak_flops(device)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    for line in (f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
                 f"command: python {shlex.join(sys.argv)}",
                 f"device: {device_name} | torch {torch.__version__} | transformers {hf_version or '-'}",
                 f"config: {' '.join(overrides)} | checkpoint={cfg.checkpoint.mode.name} grad_accum={t.grad_accum}"
                 f" | {tokens_per_step} tokens/step, {args.warmup} warmup + {args.steps} timed steps"):
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    results = {}
    if args.only in ("memtrain", "both"):
        results["memtrain"] = run_memtrain(cfg, device, args, console)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.only in ("hf", "both"):
        results["hf"] = run_hf(cfg, device, args, console)

    table = Table(box=box.MARKDOWN)
    for col in ("model", "params", "tokens/s", "MFU", "peak mem GiB", "step ms", "final loss"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in results.items():
        r["tokens_per_s"] = tokens_per_step * args.steps / r["seconds"]
        r["step_ms"] = 1e3 * r["seconds"] / args.steps
        r["mfu"] = r["tokens_per_s"] * flops_per_token / peak if peak else None
        mem = r["peak_mem_bytes"]
        table.add_row("memtrain" if name == "memtrain" else "HF Llama", f"{r['params']:,}",
                      f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a",
                      f"{mem / 2**30:.2f}" if mem is not None else "n/a", f"{r['step_ms']:.1f}", f"{r['loss']:.4f}")
    console.print(table)

    ratios = {}
    if len(results) == 2:
        mt, hf = results["memtrain"], results["hf"]
        ratios["tokens_per_s"] = mt["tokens_per_s"] / hf["tokens_per_s"]
        console.print(f"tokens/s ratio memtrain/HF: {ratios['tokens_per_s']:.3f}")
        if mt["peak_mem_bytes"] is not None:
            ratios["peak_mem"] = mt["peak_mem_bytes"] / hf["peak_mem_bytes"]
            console.print(f"peak memory ratio memtrain/HF: {ratios['peak_mem']:.3f}")
        assert mt["params"] == hf["params"], f"parameter counts differ: memtrain {mt['params']:,} vs HF {hf['params']:,}"
    if args.json:
        meta = {"command": f"python {shlex.join(sys.argv)}", "overrides": overrides, "device": device_name,
                "torch": torch.__version__, "transformers": hf_version, "flops_per_token": flops_per_token, "peak_flops": peak}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
