"""memtrain's decoder training step vs Hugging Face's LlamaForCausalLM of the same shape, side by side.

Both sides train the same shape (default 58.5M parameters: dim 512, 8 layers, 8 heads, vocabulary
32000, SwiGLU width 1408, micro-batch 4 x 512 tokens) on the same synthetic token batches, with
the same precision (fp32 weights; bf16 autocast for bf16), gradient clipping at 1.0 and AdamW:

- memtrain: the real `Trainer.train_step` (forward, loss, backward, clipping, optimizer step) as
  `memtrain train` would build it from the overrides, with its defaults (fused chunked loss,
  torch's fused AdamW where the device has it) unless a --variant overrides them.
- HF: a plain loop as the Hugging Face Trainer runs it by default: `model(input_ids, labels=...)`
  (HF shifts the labels inside: S - 1 scored tokens per row), `gradient_checkpointing_enable` for
  activation_checkpoint=full, `torch.optim.AdamW(fused=True)` (TrainingArguments' default optim with
  torch >= 2.8), weight decay on matrices only.

Every measurement runs in a fresh process (a worker: this script with --worker), so its peak
resident set starts clean; repetitions are interleaved (rep 1: all modes, both sides, then rep 2,
the side that goes first alternating) so a machine shared with other work loads both alike. Per
measurement:

- step time: median of the timed steps after the warm-up steps; tokens/s = tokens per step / it;
- peak RSS delta: the process's peak resident set (VmHWM, restarted at the baseline) minus its
  resident set before the model is built (after one step of a tiny model of the same side, so lazy imports and
  first-use allocations are not counted): parameters, gradients, optimizer states, activations,
  allocator slack;
- held after forward: bytes the forward and loss leave allocated for the backward (saved tensors,
  and the fused loss's gradients), from the profiler's allocation records (memtrain.memory.measure);
- on CUDA: the allocator's peak (max_memory_allocated) above the empty model, and MFU from
  memtrain's FLOPs per token (6N + 12 L D S) over the device's peak.

Reported: per side and mode the median and the spread (min-max) over repetitions, and the ratios
memtrain/HF of the medians.

    python scripts/bench/lm_vs_hf.py                          # the 58.5M shape, 4 modes, 3 repetitions
    python scripts/bench/lm_vs_hf.py --repeats 5 --json out.json --markdown table.md
    python scripts/bench/lm_vs_hf.py --variant plain-loss=model.loss_chunk=0   # an extra memtrain side
    python scripts/bench/lm_vs_hf.py --smoke                  # tiny shapes: checks the script (tests)
    python scripts/bench/lm_vs_hf.py --device cuda --preset gpt_1b --modes bf16/none bf16/full   # a GPU

From Python (e.g. a GPU suite): `run({"repeats": 3, "modes": [["bf16", "full"]]})` returns the
same dict that --json writes. Needs `transformers` for the HF side (memtrain alone with
--sides memtrain).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPE = {"dim": 512, "n_layers": 8, "n_heads": 8, "vocab_size": 32000, "micro_batch": 4, "seq_len": 512}
SMOKE_SHAPE = {"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 512, "micro_batch": 2, "seq_len": 32}
# conf/model/gpt_1b.yaml at micro-batch 4 x 2048 (for a GPU; n_kv_heads and ffn_hidden are optional keys)
PRESETS = {"58m": SHAPE, "smoke": SMOKE_SHAPE,
           "gpt_1b": {"dim": 2048, "n_layers": 22, "n_heads": 32, "n_kv_heads": 4, "ffn_hidden": 5632,
                      "vocab_size": 32000, "micro_batch": 4, "seq_len": 2048}}
MODES = [["fp32", "none"], ["fp32", "full"], ["bf16", "none"], ["bf16", "full"]]
DEFAULTS = {"shape": SHAPE, "modes": MODES, "repeats": 3, "steps": 3, "warmup": 1, "device": "cpu",
            "sides": ["memtrain", "hf"], "variants": {}, "timeout": 900}
SMOKE = {"shape": SMOKE_SHAPE, "repeats": 1, "steps": 2, "warmup": 1, "timeout": 300}


def memtrain_overrides(shape: dict, precision: str, checkpoint: str, device: str, extra: list[str]) -> list[str]:
    return [
        "model=gpt_small", f"model.dim={shape['dim']}", f"model.n_layers={shape['n_layers']}",
        f"model.n_heads={shape['n_heads']}", f"model.vocab_size={shape['vocab_size']}",
        *(f"model.{k}={shape[k]}" for k in ("n_kv_heads", "ffn_hidden") if shape.get(k)),
        f"model.max_seq_len={max(shape['seq_len'], 64)}", "data=synthetic", f"data.seq_len={shape['seq_len']}",
        f"data.num_synthetic_tokens={max(200_000, 4 * shape['micro_batch'] * (shape['seq_len'] + 1) * 64)}",
        f"trainer.micro_batch_size={shape['micro_batch']}", "trainer.grad_clip=1.0", "trainer.max_steps=1000",
        f"trainer.device={device}", f"precision={precision}", f"activation_checkpoint={checkpoint}", *extra,
    ]


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Restart this process's peak resident set (VmHWM) from its current size (Linux >= 4.0:
    /proc/self/clear_refs "5"); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size of this process since the last reset_peak_rss (VmHWM), in bytes;
    where /proc has no VmHWM, the lifetime peak (getrusage ru_maxrss, KiB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------
# one measurement, in a fresh process


def _timed_steps(step, sync, warmup: int, steps: int) -> tuple[list[float], float]:
    for _ in range(warmup):
        loss = step()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    return times, loss


def _memtrain_side(cfg, device):
    import tempfile

    from memtrain.engine.trainer import Trainer

    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="lm_vs_hf_"))
    micro = cfg.trainer.micro_batch_size
    inputs, targets = trainer.data.batch(0, micro)
    inputs, targets = inputs.to(device), targets.to(device)

    def forward():
        with trainer.precision.autocast():
            return trainer.spec.loss_fn(trainer.model(inputs), targets)[0]

    params = sum(p.numel() for p in trainer.model.parameters())
    return (lambda: trainer.train_step().loss), forward, params, trainer.close


def _hf_side(cfg, device):
    import math

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from memtrain.models import get_spec
    from memtrain.models.gpt.model import ffn_hidden_size
    from memtrain.optim.builder import param_groups
    from memtrain.precision.amp import Precision

    m, t = cfg.model, cfg.trainer
    hcfg = LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.dim, intermediate_size=ffn_hidden_size(m.dim, m.ffn_hidden, m.multiple_of),
        num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads or m.n_heads,
        max_position_embeddings=m.max_seq_len, rope_theta=m.rope_theta, rms_norm_eps=m.norm_eps,
        tie_word_embeddings=m.tie_embeddings, initializer_range=m.init_std, use_cache=False, attn_implementation="sdpa",
    )
    precision = Precision.from_config(cfg.precision, device.type)
    torch.manual_seed(t.seed)
    with torch.device(device):
        model = LlamaForCausalLM(hcfg)
    model.to(dtype=precision.param_dtype).train()
    if cfg.activation_checkpoint.mode.name == "full":  # HF's equivalent: recompute every decoder layer
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    o = cfg.optimizer
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  fused=True)
    data = get_spec(m.arch).build_data(cfg)
    scaler, max_norm = precision.scaler, t.grad_clip if t.grad_clip > 0 else math.inf
    counter = iter(range(10**9))

    def train_step() -> float:  # as the Trainer's step: host syncs (grad norm, loss) included
        inputs, _ = data.batch(next(counter), t.micro_batch_size)
        inputs = inputs.to(device)
        with precision.autocast():
            loss = model(input_ids=inputs, labels=inputs).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    inputs0, _ = data.batch(0, t.micro_batch_size)
    inputs0 = inputs0.to(device)

    def forward():
        with precision.autocast():
            return model(input_ids=inputs0, labels=inputs0).loss

    params = sum(p.numel() for p in model.parameters())
    return train_step, forward, params, lambda: None


def worker(job: dict) -> dict:
    """One side, one mode, in this (fresh) process: step times, peak memory, held-after-forward bytes."""
    import torch

    from memtrain.config.loader import load_config
    from memtrain.engine.metrics import peak_flops
    from memtrain.memory.measure import forward_held_bytes
    from memtrain.models import get_spec

    cfg = load_config(job["overrides"])
    device = torch.device(job["device"])
    cuda = device.type == "cuda"
    side = _memtrain_side if job["side"] == "memtrain" else _hf_side
    # one step of a tiny model of the same kind first: lazily imported modules, kernels' and thread
    # pools' first-use allocations are in memory before the baseline, for both sides alike
    tiny = load_config(memtrain_overrides(SMOKE_SHAPE, job["precision"], job["checkpoint"], job["device"], job["extra"]))
    tiny_step, _, _, tiny_close = side(tiny, device)
    tiny_step()
    tiny_close()  # memtrain's: its process group too, so the measured run makes its own
    del tiny_step, tiny_close
    gc.collect()
    get_spec(cfg.model.arch).build_data(cfg)  # the token stream is in memory before the baseline
    rss_before = current_rss()
    reset_peak_rss()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    step, forward, params, close = side(cfg, device)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    load_before = os.getloadavg()[0]
    times, loss = _timed_steps(step, sync, job["warmup"], job["steps"])
    result = {
        "side": job["side"], "variant": job.get("variant"), "precision": job["precision"], "checkpoint": job["checkpoint"],
        "params": params, "step_s": times, "loss": loss,
        "peak_rss_delta": peak_rss() - rss_before,
        "cuda_peak": torch.cuda.max_memory_allocated(device) - cuda_before if cuda else None,
        "load": [load_before, os.getloadavg()[0]],
    }
    result["held_after_forward"] = forward_held_bytes(forward)
    tokens = cfg.trainer.micro_batch_size * cfg.data.seq_len
    result["tokens_per_s"] = tokens / statistics.median(times)
    peak = peak_flops(device)
    fpt = get_spec(cfg.model.arch).flops_per_token(cfg.model, cfg.data.seq_len)
    result["mfu"] = result["tokens_per_s"] * fpt / peak if peak else None
    close()  # memtrain's trainer destroys its process group before the process exits
    return result


# ---------------------------------------------------------------------------------------------
# the side-by-side run


def _launch(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {job['side']} {job['precision']}/{job['checkpoint']} failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(samples: list[dict], sides: list[str]) -> list[dict]:
    """Per (mode, side): medians and spreads; per mode: memtrain/HF ratios of the medians."""
    rows = []
    modes = list(dict.fromkeys((s["precision"], s["checkpoint"]) for s in samples))
    for precision, checkpoint in modes:
        by_side = {}
        for side in sides:
            mine = [s for s in samples if (s["precision"], s["checkpoint"], s["label"]) == (precision, checkpoint, side)]
            if not mine:
                continue
            entry = {"side": side, "precision": precision, "checkpoint": checkpoint, "params": mine[0]["params"]}
            for key in ("tokens_per_s", "peak_rss_delta", "held_after_forward", "cuda_peak", "mfu"):
                values = [s[key] for s in mine if s.get(key) is not None]
                entry[key] = _spread(values) if values else None
            entry["step_s"] = _spread([statistics.median(s["step_s"]) for s in mine])
            by_side[side] = entry
            rows.append(entry)
        if "hf" in by_side:
            hf = by_side["hf"]
            for side, entry in by_side.items():
                if side == "hf":
                    continue
                entry["ratio"] = {key: (entry[key]["median"] / hf[key]["median"])
                                  for key in ("step_s", "tokens_per_s", "peak_rss_delta", "held_after_forward", "cuda_peak")
                                  if entry.get(key) and hf.get(key) and hf[key]["median"]}
    return rows


def run(config: dict | None = None) -> dict:
    """The side-by-side benchmark. config: any of DEFAULTS' keys (shape, modes, repeats, steps,
    warmup, device, sides, variants {label: [memtrain overrides]}, timeout per worker in s), or
    {"smoke": True} for the tiny shapes. Returns {"meta", "samples", "rows"}: every measurement,
    and per mode and side the medians, spreads (min-max) and memtrain/HF ratios."""
    config = dict(config or {})
    smoke = config.pop("smoke", False)
    cfg = {**DEFAULTS, **(SMOKE if smoke else {}), **config}
    device = cfg["device"]
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    labels = [*cfg["sides"], *cfg["variants"]]
    jobs = {label: [] for label in labels}
    samples = []
    load_start = os.getloadavg()
    t0 = time.time()
    for rep in range(cfg["repeats"]):
        for precision, checkpoint in cfg["modes"]:
            order = labels if rep % 2 == 0 else labels[::-1]
            for label in order:
                side = "memtrain" if label in cfg["variants"] or label == "memtrain" else "hf"
                extra = cfg["variants"].get(label, [])
                job = {"side": side, "variant": label, "precision": precision, "checkpoint": checkpoint, "device": device,
                       "steps": cfg["steps"], "warmup": cfg["warmup"], "extra": extra,
                       "overrides": memtrain_overrides(cfg["shape"], precision, checkpoint, device, extra)}
                sample = _launch(job, cfg["timeout"])
                sample["label"], sample["rep"] = label, rep
                samples.append(sample)
                jobs[label].append(job)
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": _device_name(device), "cpus": os.cpu_count(), "torch": _version("torch"),
        "transformers": _version("transformers"), "shape": cfg["shape"], "repeats": cfg["repeats"],
        "steps": cfg["steps"], "warmup": cfg["warmup"], "variants": cfg["variants"],
        "load_average_start": load_start, "load_average_end": os.getloadavg(), "seconds": time.time() - t0,
        "overrides": {label: jobs[label][0]["overrides"] for label in labels if jobs[label]},
    }
    return {"meta": meta, "samples": samples, "rows": summarize(samples, labels)}


def _version(module: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def markdown(result: dict) -> str:
    """The rows as a Markdown table: median (min-max) per side, and the memtrain/HF ratios."""
    mib = 2**20

    def cell(entry, key, scale=1.0, fmt="{:.0f}"):
        s = entry.get(key)
        if not s:
            return "n/a"
        return f"{fmt.format(s['median'] / scale)} ({fmt.format(s['min'] / scale)}-{fmt.format(s['max'] / scale)})"

    lines = ["| precision | checkpoint | side | tokens/s | step s | peak RSS delta MiB | held after forward MiB"
             " | CUDA peak MiB | MFU | ratio step time | ratio peak RSS | ratio held |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["rows"]:
        r = e.get("ratio", {})
        ratio = lambda k: f"{r[k]:.3f}" if k in r else ""  # noqa: E731
        mfu = f"{100 * e['mfu']['median']:.1f}%" if e.get("mfu") else "n/a"
        lines.append(f"| {e['precision']} | {e['checkpoint']} | {e['side']} | {cell(e, 'tokens_per_s')} | "
                     f"{cell(e, 'step_s', fmt='{:.2f}')} | {cell(e, 'peak_rss_delta', mib)} | "
                     f"{cell(e, 'held_after_forward', mib)} | {cell(e, 'cuda_peak', mib)} | {mfu} | "
                     f"{ratio('step_s')} | {ratio('peak_rss_delta')} | {ratio('held_after_forward')} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one repetition: a check of the script")
    p.add_argument("--repeats", type=int, help="interleaved repetitions (default 3)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 1)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="default cpu")
    p.add_argument("--modes", nargs="+", metavar="PRECISION/CHECKPOINT",
                   help="e.g. bf16/full fp32/none (default: fp32 and bf16, checkpoint none and full)")
    p.add_argument("--sides", nargs="+", choices=["memtrain", "hf"], help="default both")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=OVERRIDE[,OVERRIDE]",
                   help="an extra memtrain side with these overrides, e.g. plain-loss=model.loss_chunk=0")
    p.add_argument("--preset", choices=list(PRESETS), help="a shape: 58m (default), gpt_1b, smoke")
    p.add_argument("--shape", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"override the shape: keys {', '.join(SHAPE)}, n_kv_heads, ffn_hidden")
    p.add_argument("--json", metavar="PATH", help="write the whole result as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the header and table as Markdown")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.device == "cuda":
        from gpu_only import require_cuda  # scripts/bench/ is on sys.path

        require_cuda("lm_vs_hf.py", "--smoke")
    config: dict = {"smoke": args.smoke}
    for key in ("repeats", "steps", "warmup", "device", "sides"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.modes:
        config["modes"] = [m.split("/") for m in args.modes]
    if args.variant:
        config["variants"] = {v.split("=", 1)[0]: v.split("=", 1)[1].split(",") for v in args.variant}
    if args.shape or args.preset:
        base = dict(PRESETS[args.preset] if args.preset else SMOKE_SHAPE if args.smoke else SHAPE)
        config["shape"] = {**base, **{k: int(v) for k, v in (kv.split("=") for kv in args.shape)}}
    if "hf" in config.get("sides", ["hf"]) and _version("transformers") is None:
        print("transformers is not installed: pip install transformers, or pass --sides memtrain", file=sys.stderr)
        return 2
    result = run(config)
    meta = result["meta"]
    header = [f"date: {meta['date']}", f"command: python {shlex.join(['scripts/bench/lm_vs_hf.py', *sys.argv[1:]])}",
              f"device: {meta['device']} | torch {meta['torch']} | transformers {meta['transformers']}",
              f"shape: {meta['shape']} | {meta['repeats']} interleaved repetitions x ({meta['warmup']} warm-up + "
              f"{meta['steps']} timed steps), one fresh process per measurement",
              f"load average (1 min) at start {meta['load_average_start'][0]:.2f}, at end {meta['load_average_end'][0]:.2f}; "
              f"{meta['seconds']:.0f} s"]
    text = "\n".join(header) + "\n\n" + markdown(result)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
