"""Every owed GPU benchmark, bounded, in one command that fits one short lease of a GPU machine.

Each part is one of the benchmarks under scripts/bench/, at one bounded size, side by side in one
process of its own, reporting ratios; each has its own time budget (seconds of wall time on the GPU
machine, its process start included). A part whose budget no longer fits in what is left of the
suite's budget is skipped with a message; inside a part, a measurement that would overrun the
part's budget is skipped with a message; a part still running at its budget plus GRACE_S is killed
(with everything it started) and keeps the rows it had recorded. The default parts and budgets
(sum 480 s, about 8 minutes) are the table PARTS below; `--list` prints them.

Output, in --out (default $OUT, the GPU machine's folder that comes back; at most 8 files there):
  gpu_suite.json  everything: run metadata, per part its status, message, seconds, rows, skips
  gpu_suite.md    the same as Markdown tables (also printed last)
  gpu_suite.log   every part's own output (Triton's autotuning choices included)
The JSON is rewritten after every part, so a run cut short still leaves what it measured.
`scripts/bench/update_benchmarks.py gpu_suite.json` writes the figures into docs/benchmarks.md.

On the GPU machine (torch, triton and transformers are there; hydra-core, omegaconf, deepspeed and
biopython travel as wheels in .whl/, the protein data in .data/; docs/benchmarks.md, "The GPU
suite", has the preparation and the exact call):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site MEMTRAIN_DATA_DIR=$PWD/.data
    PYTHONUNBUFFERED=1 python3 scripts/bench/gpu_suite.py --out $OUT

On a CPU, the same code path with tiny shapes (checks the suite, measures nothing):

    python3 scripts/bench/gpu_suite.py --smoke --out /tmp/gpu_suite_smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parents[1]
SCHEMA = "memtrain-gpu-suite/1"
GRACE_S = 10.0  # a part still running this long after its budget is killed
DEFAULT_BUDGET_S = 480.0
CONFIG_NEEDS = ("hydra", "omegaconf")  # memtrain's configuration (everything but the attention kernel)
FILES = ("gpu_suite.json", "gpu_suite.md", "gpu_suite.log")


# ---------------------------------------------------------------------------------------------
# the parts


@dataclasses.dataclass(frozen=True)
class Column:
    header: str
    key: str
    fmt: str = "text"  # see fmt()


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    title: str
    target: str  # "module:function" that the part's process runs, fn(rec: Recorder)
    budget_s: float  # wall seconds on the GPU machine, process start included
    smoke_budget_s: float  # the same with --smoke on a (loaded) CPU
    needs: tuple[str, ...]  # modules without which the part is skipped
    columns: tuple[Column, ...]
    command: str  # the standalone benchmark at full size, for the docs
    default: bool = True


C = Column
PARTS = [
    Part("evoformer_attention",
         "Evoformer attention, fused Triton kernel vs SDPA + bias vs naive, bf16 forward + backward",
         "gpu_suite:part_evoformer_attention", 80, 600, ("triton",),
         (C("shape", "shape"), C("triton ms", "triton_ms", "ms"), C("SDPA ms", "sdpa_ms", "ms"),
          C("naive ms", "naive_ms", "ms"), C("triton MiB", "triton_peak_bytes", "mib"),
          C("SDPA MiB", "sdpa_peak_bytes", "mib"), C("naive MiB", "naive_peak_bytes", "mib"),
          C("triton/SDPA time", "triton_over_sdpa_time", "ratio"), C("triton/SDPA mem", "triton_over_sdpa_peak", "ratio"),
          C("rel. error triton", "triton_max_rel_err", "sci"), C("rel. error SDPA", "sdpa_max_rel_err", "sci"),
          C("within 2x SDPA's error", "correct", "bool")),
         "python scripts/bench/evoformer_attention.py --json evoformer_attention.json"),
    Part("evoformer_block", "One Evoformer block, 128 MSA rows x 256 residues, bf16 autocast, forward + backward",
         "gpu_suite:part_evoformer_block", 75, 900, CONFIG_NEEDS,
         (C("variant", "variant"), C("ms", "ms", "ms"), C("time vs plain", "time_vs_plain", "ratio"),
          C("peak GiB", "peak_bytes", "gib"), C("memory vs plain", "peak_vs_plain", "ratio"), C("note", "error")),
         "python scripts/bench/evoformer_block.py --msa 128 --res 256 --triton"),
    Part("lm_vs_hf", "gpt_1b training step vs Hugging Face LlamaForCausalLM of the same shape, bf16, micro-batch 4 x 2048",
         "gpu_suite:part_lm_vs_hf", 70, 600, (*CONFIG_NEEDS, "transformers"),
         (C("side", "side"), C("parameters", "params", "int"), C("tokens/s", "tokens_per_s", "tps"),
          C("step ms", "step_ms", "ms"), C("MFU", "mfu", "pct"), C("peak GiB", "peak_bytes", "gib"),
          C("tokens/s vs HF", "tokens_per_s_vs_hf", "ratio3"), C("peak vs HF", "peak_vs_hf", "ratio3")),
         "python scripts/bench/lm_vs_hf.py --device cuda --preset gpt_1b --modes bf16/none bf16/full --repeats 3 "
         "--steps 20 --warmup 5"),
    Part("data_parallel", "Data-parallel and offload options on one GPU, gpt_1b, bf16, micro-batch 4 x 2048",
         "gpu_suite:part_data_parallel", 60, 900, CONFIG_NEEDS,
         (C("option", "option"), C("tokens/s", "tokens_per_s", "tps"), C("vs single", "tokens_per_s_vs_single", "ratio"),
          C("peak GiB", "peak_bytes", "gib"), C("predicted GiB", "predicted_bytes", "gib"),
          C("measured/predicted", "measured_over_predicted", "ratio"), C("note", "error")),
         "python scripts/bench/data_parallel_memory.py --model gpt_1b --steps 10"),
    Part("weather_step", "Pangu-Weather training step at 0.25 degrees (721 x 1440, 13 levels, batch 1)",
         "gpu_suite:part_weather_step", 65, 600, CONFIG_NEEDS,
         (C("configuration", "config"), C("peak GiB", "peak_bytes", "gib"), C("predicted GiB", "predicted_bytes", "gib"),
          C("measured/predicted", "measured_over_predicted", "ratio"), C("step s", "step_s", "s"),
          C("memory ratio", "peak_vs_first", "ratio"), C("time ratio", "time_vs_first", "ratio"), C("note", "error")),
         "python scripts/bench/weather_step.py --model pangu --steps 3"),
    Part("fp8_linear", "gpt_1b training step, bf16 vs fp8 linear layers, micro-batch 4 x 2048",
         "gpu_suite:part_fp8_linear", 40, 600, CONFIG_NEEDS,
         (C("precision", "precision"), C("tokens/s", "tokens_per_s", "tps"), C("peak GiB", "peak_bytes", "gib"),
          C("tokens/s vs bf16", "tokens_per_s_vs_bf16", "ratio3"), C("peak vs bf16", "peak_vs_bf16", "ratio3"),
          C("note", "error")),
         "python scripts/bench/fp8_linear.py --model gpt_1b --micro-batch 4 --seq-len 2048 --steps 20 --warmup 5"),
    Part("calibration", "Estimator calibration: measured max_memory_allocated vs `memtrain estimate`",
         "gpu_suite:part_calibration", 90, 900, CONFIG_NEEDS,
         (C("model", "model"), C("configuration", "config"), C("predicted GiB", "predicted_bytes", "gib"),
          C("measured GiB", "measured_bytes", "gib"), C("measured/predicted", "measured_over_predicted", "ratio3"),
          C("note", "error")),
         "python scripts/bench/calibrate_estimator.py --models gpt_1b alphafold --steps 3"),
    # not in the default run (the budget): --parts lm_compile gpu_tests
    Part("lm_compile", "gpt_1b fast path: memtrain with trainer.compile=true vs Hugging Face LlamaForCausalLM",
         "gpu_suite:part_lm_compile", 120, 900, (*CONFIG_NEEDS, "transformers"),
         (C("side", "side"), C("parameters", "params", "int"), C("tokens/s", "tokens_per_s", "tps"),
          C("step ms", "step_ms", "ms"), C("MFU", "mfu", "pct"), C("peak GiB", "peak_bytes", "gib"),
          C("tokens/s vs HF", "tokens_per_s_vs_hf", "ratio3"), C("peak vs HF", "peak_vs_hf", "ratio3")),
         "python scripts/bench/lm_vs_hf.py --device cuda --preset gpt_1b --modes bf16/none --steps 20 --warmup 5 "
         "--variant compiled=trainer.compile=true", default=False),
    Part("gpu_tests", "The tests that run only with CUDA (kernels compiled, bf16 included; fp8 GEMMs)",
         "gpu_suite:part_gpu_tests", 120, 300, (*CONFIG_NEEDS, "triton", "pytest"),
         (C("file", "file"), C("passed", "passed", "int"), C("failed", "failed", "int"), C("skipped", "skipped", "int"),
          C("failures", "failures")),
         "python -m pytest tests/kernels/test_cuda.py tests/unit/test_fp8.py", default=False),
]
BY_NAME = {p.name: p for p in PARTS}
ATTENTION_SHAPES = [("msa_row", 128, 384, 8, 32), ("triangle", 384, 384, 4, 32)]  # (kind, S, N, H, D)
GPU_TESTS = ["tests/kernels/test_cuda.py", "tests/unit/test_fp8.py"]


# ---------------------------------------------------------------------------------------------
# inside a part's process


class Recorder:
    """What a part records, written to `path` (JSON) after every change, so rows survive a kill.
    `deadline` is the part's budget as a time.time() value."""

    def __init__(self, path: Path, deadline: float, smoke: bool):
        self.path, self.deadline, self.smoke = Path(path), deadline, smoke
        self.data: dict[str, Any] = {"rows": [], "skipped": [], "meta": {}}
        self.flush()

    def time_left(self) -> float:
        return self.deadline - time.time()

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.flush()
        print(f"row: {json.dumps(row, default=str)}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        self.flush()
        print(f"skipped {what}: {why}", flush=True)

    def fits(self, what: str, seconds: float) -> bool:
        """True if about `seconds` more fit in the part's budget; else records the skip."""
        left = self.time_left()
        if seconds <= left:
            return True
        self.skip(what, f"needs about {seconds:.0f} s, {max(left, 0):.0f} s of the part's budget left")
        return False

    def meta(self, **values) -> None:
        self.data["meta"].update(values)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def bench(name: str):
    """A benchmark script of scripts/bench/ as a module (its functions are what the parts call)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _device_meta(rec: Recorder, torch) -> Any:
    cuda = not rec.smoke and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    info = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(capability=f"{props.major}.{props.minor}", device_memory_bytes=props.total_memory)
    rec.meta(**info)
    return device


def _ratio(a, b):
    return a / b if a is not None and b and not (isinstance(a, float) and math.isnan(a)) else None


def _rel_err(x, ref) -> float:
    """||x - ref|| / ||ref|| in float64 (inf or nan when x is not finite)."""
    x, ref = x.detach().double(), ref.detach().double()
    return ((x - ref).norm() / ref.norm()).item()


def _attention_errors(ea, shape, dtype, ref_dtype, device, seed: int) -> dict:
    """Relative errors of the output and of the gradients of q, k, v and the bias, for the fused
    kernel and for SDPA in `dtype`, against the naive attention in `ref_dtype` on the same inputs
    upcast (fresh random inputs: `seed` differs from the timed ones)."""
    import torch

    _, s, n, h, d = shape
    q, k, v, bias, mask = ea.make_inputs(s, n, h, d, dtype, device, seed=seed)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device, dtype)
    ref_in = [t.detach().to(ref_dtype).requires_grad_() for t in (q, k, v, bias)]
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in full fp32, not TF32
    try:
        ref_out = ea.naive(*ref_in, mask)
        refs = (ref_out, *torch.autograd.grad(ref_out, ref_in, grad.to(ref_dtype)))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    errors = {}
    for impl in ("triton", "sdpa"):
        out = ea.IMPLS[impl](q, k, v, bias, mask)
        got = (out, *torch.autograd.grad(out, (q, k, v, bias), grad))
        errors[impl] = {name: _rel_err(x, r) for name, x, r in zip(("out", "dq", "dk", "dv", "dbias"), got, refs, strict=True)}
    return errors


def part_evoformer_attention(rec: Recorder) -> None:
    """Per shape: time and peak memory above the inputs of the fused kernel, SDPA and the naive
    attention (scripts/bench/evoformer_attention.py's measure), and the kernel's error against fp32."""
    import torch

    ea = bench("evoformer_attention")
    device = _device_meta(rec, torch)
    # bf16 on the GPU against an fp32 reference; the interpreter (--smoke) runs fp32, against fp64
    dtype, ref_dtype = (torch.float32, torch.float64) if rec.smoke else (torch.bfloat16, torch.float32)
    # an error counts as correct within twice SDPA's own error in the same dtype (FlashAttention's
    # tests use this rule), with a floor: bf16 rounding (eps 3.9e-3) gives 1e-3 to 1e-2 relative
    # error on its own; fp32 vs fp64 stays under 1e-5 for these sizes
    floor = 1e-5 if dtype == torch.float32 else 1e-2
    shapes = ea.SMOKE if rec.smoke else ATTENTION_SHAPES
    repeats = 1 if rec.smoke else 20
    rec.meta(dtype=str(dtype), reference_dtype=str(ref_dtype), repeats=repeats, error_floor=floor,
             timing="mean of the repeats after one warm-up (autotuning there), forward + backward")
    expected = 10.0
    for shape in shapes:
        kind, s, n, h, d = shape
        label = f"{kind} S={s} N={n} H={h} D={d}"
        if not rec.fits(label, expected):
            continue
        t0 = time.time()
        inputs = ea.make_inputs(s, n, h, d, dtype, device)
        res = {}
        for impl, fn in ea.IMPLS.items():
            try:
                seconds, peak, _ = ea.measure(fn, inputs, repeats, device)
                res[impl] = (1e3 * seconds, peak)
            except torch.OutOfMemoryError:
                res[impl] = (None, None)
                torch.cuda.empty_cache()
        del inputs
        errors = _attention_errors(ea, shape, dtype, ref_dtype, device, seed=1)
        triton_err, sdpa_err = (max(errors[i].values()) for i in ("triton", "sdpa"))
        correct = all(math.isfinite(errors["triton"][k]) and errors["triton"][k] <= max(2 * errors["sdpa"][k], floor)
                      for k in errors["triton"])
        row = {"shape": label, "kind": kind, "S": s, "N": n, "H": h, "D": d}
        for impl, (ms, peak) in res.items():
            row[f"{impl}_ms"], row[f"{impl}_peak_bytes"] = ms, peak
        row.update(triton_over_sdpa_time=_ratio(res["triton"][0], res["sdpa"][0]),
                   triton_over_sdpa_peak=_ratio(res["triton"][1], res["sdpa"][1]),
                   triton_over_naive_time=_ratio(res["triton"][0], res["naive"][0]),
                   triton_over_naive_peak=_ratio(res["triton"][1], res["naive"][1]),
                   rel_err=errors, triton_max_rel_err=triton_err, sdpa_max_rel_err=sdpa_err, correct=correct)
        rec.add(row)
        expected = time.time() - t0


def part_evoformer_block(rec: Recorder) -> None:
    """scripts/bench/evoformer_block.py's comparison (its compare()): plain vs memtrain's options,
    then again with the fused kernels (--triton, where Triton is installed), whose first call
    compiles and autotunes them; each call's rows get their ratios to that call's plain block, and
    the second call adds only the fused variants' rows. So a part cut in the fused kernels'
    compilation keeps the others."""
    import torch
    from rich.console import Console

    eb = bench("evoformer_block")
    device = _device_meta(rec, torch)
    args = argparse.Namespace(msa=2 if rec.smoke else 128, res=4 if rec.smoke else 256,
                              dtype="float32" if rec.smoke else "bfloat16", repeats=1 if rec.smoke else 5, triton=False)
    rec.meta(msa=args.msa, res=args.res, dtype=args.dtype, repeats=args.repeats)
    t0 = time.time()
    seen = set()
    for triton in (False, True):
        if triton and importlib.util.find_spec("triton") is None:
            rec.skip("the fused-kernel variants", "triton is not installed")
            break
        if triton and not rec.fits("the fused-kernel variants", time.time() - t0):
            break
        rows = eb.compare(argparse.Namespace(**{**vars(args), "triton": triton}), device, Console(width=140))
        base = next((r for r in rows if "error" not in r), None)
        for row in rows:
            if row["variant"] in seen:
                continue
            seen.add(row["variant"])
            if base and "error" not in row:
                row["time_vs_plain"] = _ratio(row["ms"], base["ms"])
                row["peak_vs_plain"] = _ratio(row["peak_bytes"], base["peak_bytes"])
            rec.add(row)


def _median(entry: dict, key: str):
    return entry[key]["median"] if entry.get(key) else None


def _lm_rows_from_lm_vs_hf(result: dict) -> list[dict]:
    """lm_vs_hf.run()'s rows (medians and spreads per side) as the part's rows."""
    rows = []
    for e in result["rows"]:
        ratio, step_s = e.get("ratio", {}), _median(e, "step_s")
        rows.append({"side": e["side"], "precision": e["precision"], "checkpoint": e["checkpoint"], "params": e["params"],
                     "tokens_per_s": _median(e, "tokens_per_s"), "step_ms": 1e3 * step_s if step_s else None,
                     "mfu": _median(e, "mfu"), "peak_bytes": _median(e, "cuda_peak"),
                     "held_after_forward": _median(e, "held_after_forward"),
                     "tokens_per_s_vs_hf": ratio.get("tokens_per_s"), "peak_vs_hf": ratio.get("cuda_peak"),
                     "spread": {k: e[k] for k in ("tokens_per_s", "step_s") if e.get(k)}})
    return rows


def _lm(rec: Recorder, compiled: bool) -> None:
    """memtrain's decoder vs HF Llama at gpt_1b's shape: scripts/bench/lm_vs_hf.py's run(config),
    one repetition of each side (and, with `compiled`, a third side with trainer.compile=true)."""
    import torch

    lm = bench("lm_vs_hf")
    device = _device_meta(rec, torch).type
    config: dict[str, Any] = {"modes": [["bf16", "none"]], "device": device, "timeout": max(rec.time_left(), 1)}
    config.update({"smoke": True} if rec.smoke else
                  {"shape": lm.PRESETS["gpt_1b"], "repeats": 1, "steps": 6, "warmup": 2})
    if compiled:
        config["variants"] = {"memtrain compiled": ["trainer.compile=true"]}
    result = lm.run(config)
    rec.meta(script="lm_vs_hf.py", run_config=config, run_meta=result["meta"])
    for row in _lm_rows_from_lm_vs_hf(result):
        rec.add(row)


def part_lm_vs_hf(rec: Recorder) -> None:
    _lm(rec, compiled=False)


def part_lm_compile(rec: Recorder) -> None:
    _lm(rec, compiled=True)


def predicted_total(overrides: list[str]) -> int | None:
    """`memtrain estimate`'s per-device total (bytes) for these overrides, in this process
    (weather_step.predicted is estimate(load_config(overrides)).total); None for a configuration
    that memtrain refuses (the row's error says why)."""
    from memtrain.config.errors import ConfigError

    try:
        return bench("weather_step").predicted(overrides)
    except ConfigError as exc:
        print(f"no estimate for {' '.join(overrides)}: {exc}", flush=True)
        return None


def part_data_parallel(rec: Recorder) -> None:
    """scripts/bench/data_parallel_memory.py's options, each its own `memtrain train` process (its
    run()), cheapest first, next to the estimator's prediction."""
    import torch

    dpm = bench("data_parallel_memory")
    device = _device_meta(rec, torch).type
    model, micro, seq, steps = ("gpt_tiny", 2, 64, 2) if rec.smoke else ("gpt_1b", 4, 2048, 4)
    base = [f"model={model}", f"trainer.micro_batch_size={micro}", "precision=bf16", "data=synthetic",
            f"data.seq_len={seq}", f"trainer.device={device}", "trainer.warmup_steps=0"]
    rec.meta(base_overrides=base, steps=steps)
    first = ["single", "single + activations_cpu", "fsdp + params_cpu", "zero2 + optimizer_cpu", "zero3 + params_cpu"]
    order = [o for o in first if o in dpm.OPTIONS] + [o for o in dpm.OPTIONS if o not in first]
    deepspeed = importlib.util.find_spec("deepspeed") is not None
    expected, single = (0.0 if rec.smoke else 20.0), None
    for name in order:
        extra = dpm.OPTIONS[name]
        if not deepspeed and any(o.startswith("parallel=zero") for o in extra):
            rec.skip(name, "deepspeed is not installed (carry its wheel: ../shared/scripts/device-wheels.sh)")
            continue
        if not rec.fits(name, expected):
            continue
        t0 = time.time()
        try:
            result = dpm.run(base + extra, steps, max(rec.time_left(), 1))
        except subprocess.TimeoutExpired:
            rec.skip(name, f"still running when the part's budget ran out ({time.time() - t0:.0f} s)")
            continue
        expected = max(expected, time.time() - t0)
        predicted = predicted_total(base + extra)
        tps, peak = result.get("tokens_per_s"), result.get("peak_mem_bytes")
        single = tps if name == "single" else single
        rec.add({"option": name, "overrides": extra, "tokens_per_s": tps, "peak_bytes": peak, "mfu": result.get("mfu"),
                 "predicted_bytes": predicted, "measured_over_predicted": _ratio(peak, predicted) if device == "cuda" else None,
                 "tokens_per_s_vs_single": _ratio(tps, single), "error": result.get("error"),
                 "seconds": time.time() - t0})


def part_weather_step(rec: Recorder) -> None:
    """scripts/bench/weather_step.py's configurations, each in its own process (its --worker),
    with the estimator's prediction and the ratios to the first configuration that fits."""
    import torch

    ws = bench("weather_step")
    _device_meta(rec, torch)
    steps = 1 if rec.smoke else 2
    rec.meta(model="pangu", timed_steps=steps, warmup_steps=1)
    expected, first = (0.0 if rec.smoke else 15.0), None
    for name in ws.CONFIGS:
        overrides = ws.overrides_for("pangu", name, rec.smoke)
        if not rec.fits(name, expected):
            continue
        t0 = time.time()
        cmd = [sys.executable, ws.__file__, "--steps", str(steps), "--worker", json.dumps(overrides)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(rec.time_left(), 1))
        except subprocess.TimeoutExpired:
            rec.skip(name, f"still running when the part's budget ran out ({time.time() - t0:.0f} s)")
            continue
        expected = max(expected, time.time() - t0)
        row = {"config": name, "overrides": overrides, "predicted_bytes": predicted_total(overrides), "step_s": None,
               "peak_bytes": None}
        if proc.returncode == 0:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            print(proc.stderr[-4000:], flush=True)
            row["error"] = "out of memory" if "out of memory" in proc.stderr.lower() else \
                f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}"
        if row["step_s"] is not None and first is None:
            first = row
        row["measured_over_predicted"] = _ratio(row["peak_bytes"], row["predicted_bytes"])
        if first is not None and row["step_s"] is not None:
            row["peak_vs_first"] = _ratio(row["peak_bytes"], first["peak_bytes"])
            row["time_vs_first"] = _ratio(row["step_s"], first["step_s"])
        rec.add(row)


def part_fp8_linear(rec: Recorder) -> None:
    """scripts/bench/fp8_linear.py's run() for bf16, then fp8, in this one process."""
    import torch

    fp8 = bench("fp8_linear")
    device = _device_meta(rec, torch).type
    args = argparse.Namespace(model="gpt_tiny", micro_batch=2, seq_len=64, steps=2, warmup=1, device="cpu") if rec.smoke \
        else argparse.Namespace(model="gpt_1b", micro_batch=4, seq_len=2048, steps=8, warmup=3, device=device)
    rec.meta(**vars(args))
    expected, base = (0.0 if rec.smoke else 15.0), None
    for precision in ("bf16", "fp8"):
        if not rec.fits(precision, expected):
            continue
        t0 = time.time()
        try:
            result = fp8.run(precision, args)
        except RuntimeError as exc:  # FP8Unavailable without fp8 GEMMs, a CUDA error: the row says which
            traceback.print_exc()
            result = {"precision": precision, "error": f"{type(exc).__name__}: {exc}"[:300]}
        expected = max(expected, time.time() - t0)
        row = {"precision": precision, "tokens_per_s": result.get("tokens_per_s"), "peak_bytes": result.get("peak_bytes"),
               "error": result.get("error")}
        if precision == "bf16" and row["error"] is None:
            base = row
        elif base is not None:
            row["tokens_per_s_vs_bf16"] = _ratio(row["tokens_per_s"], base["tokens_per_s"])
            row["peak_vs_bf16"] = _ratio(row["peak_bytes"], base["peak_bytes"])
        rec.add(row)


def calibration_models(cal, smoke: bool) -> dict[str, list[str]]:
    """model label -> overrides: gpt_1b as calibrate_estimator.py has it, a small decoder at a long
    sequence (activations dominate), AlphaFold at crop 128 (crop 256's fp32 rows take minutes);
    with --smoke calibrate_estimator.py's tiny models."""
    if smoke:
        return {"gpt_tiny": cal.MODELS["gpt_tiny"], "alphafold_tiny": cal.MODELS["alphafold_tiny"]}
    alphafold = [o for o in cal.MODELS["alphafold"] if not o.startswith("data.crop_size=")] + ["data.crop_size=128"]
    return {"gpt_1b": cal.MODELS["gpt_1b"],
            "gpt_small seq 1024": ["model=gpt_small", "data=synthetic", "data.seq_len=1024", "trainer.micro_batch_size=16"],
            "alphafold crop 128": alphafold}


def _protein_data_missing(overrides: list[str]) -> str | None:
    if not any("alphafold" in o for o in overrides):
        return None
    if importlib.util.find_spec("Bio") is None:
        return "biopython is not installed (carry its wheel)"
    from memtrain.data.sequences import default_protein_root

    root = default_protein_root()
    return None if root.is_dir() else f"no protein data at {root} (set MEMTRAIN_DATA_DIR)"


def part_calibration(rec: Recorder) -> None:
    """scripts/bench/calibrate_estimator.py's measurement per configuration (precision x activation
    checkpointing x offload, its CONFIGS) and model, configurations outermost so that a cut run
    still covers every model. On the GPU: peak max_memory_allocated over 2 training steps vs the
    estimator's total; with --smoke, as that script's --smoke: one forward's held bytes vs the
    estimated activations."""
    import gc

    import torch

    cal = bench("calibrate_estimator")
    _device_meta(rec, torch)
    models = {}
    for model, model_overrides in calibration_models(cal, rec.smoke).items():
        missing = _protein_data_missing(model_overrides)
        if missing:
            rec.skip(f"{model} (every configuration)", missing)
        else:
            models[model] = model_overrides
    configs = [c for c in cal.CONFIGS if not (rec.smoke and any(o.startswith("offload=") and o != "offload=none" for o in c))]
    steps = 2  # the second step's backward runs with the optimizer's states allocated
    rec.meta(models=models, steps=steps, quantity="activations of one forward (CPU)" if rec.smoke
             else "peak torch.cuda.max_memory_allocated over the steps vs estimate().total")
    device_bytes = None if rec.smoke else torch.cuda.get_device_properties(0).total_memory
    expected: dict[str, float] = {}
    for conf in configs:
        for model, model_overrides in models.items():
            label = f"{model}: {' '.join(conf)}"
            if not rec.fits(label, expected.get(model, 0.0 if rec.smoke else 5.0)):
                continue
            t0 = time.time()
            cfg = cal.load_config([*model_overrides, *conf, *(["trainer.device=cpu"] if rec.smoke else [])])
            est = cal.estimate(cfg)
            row = {"model": model, "config": " ".join(conf), "overrides": [*model_overrides, *conf]}
            if rec.smoke:
                row["predicted_bytes"], row["measured_bytes"] = est.activations - est.recompute_buffer, cal.measure_cpu_activations(cfg)
            else:
                row["predicted_bytes"] = est.total
                if est.total > 0.95 * device_bytes:
                    rec.skip(label, f"predicted {est.total / 2**30:.1f} GiB, the device has {device_bytes / 2**30:.1f} GiB")
                    continue
                row["allocated_before_bytes"] = torch.cuda.memory_allocated()  # 0 unless a configuration leaked
                try:
                    row["measured_bytes"] = cal.measure_gpu(cfg, steps)
                except torch.OutOfMemoryError:
                    row["measured_bytes"], row["error"] = None, "out of memory"
                gc.collect()
                torch.cuda.empty_cache()
            row["measured_over_predicted"] = _ratio(row["measured_bytes"], row["predicted_bytes"])
            row["seconds"] = time.time() - t0
            expected[model] = max(expected.get(model, 0.0), row["seconds"])
            rec.add(row)


def part_gpu_tests(rec: Recorder) -> None:
    """pytest on the test files that need CUDA (they skip without it): outcomes per file."""
    import xml.etree.ElementTree as ET

    import torch

    _device_meta(rec, torch)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--junitxml", str(report),
               *GPU_TESTS]
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, timeout=max(rec.time_left(), 1))
        print(proc.stdout[-20000:] + proc.stderr[-4000:], flush=True)
        if not report.exists():
            raise RuntimeError(f"pytest exited {proc.returncode} without a report: {proc.stderr.strip()[-2000:]}")
        cases = ET.parse(report).getroot().iter("testcase")
        per_file: dict[str, dict] = {}
        modules = {f.removesuffix(".py").replace("/", "."): f for f in GPU_TESTS}
        for case in cases:  # classname: the test's module, then its class if any
            name = case.get("classname", "")
            file = next((f for m, f in modules.items() if name == m or name.startswith(m + ".")), name)
            entry = per_file.setdefault(file, {"file": file, "passed": 0, "failed": 0, "skipped": 0, "failures": []})
            if case.find("failure") is not None or case.find("error") is not None:
                entry["failed"] += 1
                entry["failures"].append(case.get("name"))
            elif case.find("skipped") is not None:
                entry["skipped"] += 1
            else:
                entry["passed"] += 1
    rec.meta(command=shlex.join(["python", *cmd[1:6], *GPU_TESTS]), exit_code=proc.returncode)
    for entry in per_file.values():
        entry["failures"] = ", ".join(entry["failures"])
        rec.add(entry)


def worker_main(target: str, result: Path, deadline: float, smoke: bool, grace_s: float = GRACE_S) -> int:
    """Run one part. As the leader of its own process group (run_part starts it so), it also ends
    that group itself at twice the grace past its deadline, after the runner would have: no part
    outlives a runner that was itself killed."""
    module, func = target.split(":")
    if os.getpgrp() == os.getpid():
        signal.signal(signal.SIGALRM, lambda *_: os.killpg(os.getpgrp(), signal.SIGKILL))
        signal.alarm(max(1, math.ceil(deadline - time.time() + 2 * grace_s)))
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    rec = Recorder(result, deadline, smoke)
    getattr(importlib.import_module(module), func)(rec)
    return 0


# ---------------------------------------------------------------------------------------------
# the run: one process per part


def missing_modules(names) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:  # e.g. the GPU machine's copy of the working tree has no .git
        return None
    return proc.stdout.strip() or None


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


AUTOTUNE = re.compile(r"Triton autotuning for function (?P<function>\w+),?\s*(?:with key as (?P<key>.*?),\s*)?"
                      r"finished after (?P<seconds>[\d.]+)s[,;]?\s*best config selected: (?P<best>.*?);", re.S)


def autotune_choices(log: str) -> list[dict]:
    """Triton's autotuning reports (TRITON_PRINT_AUTOTUNING=1) in a part's output."""
    return [{k: (v.strip() if isinstance(v, str) else v) for k, v in m.groupdict().items()} for m in AUTOTUNE.finditer(log)]


def worker_env(smoke: bool, data_dir: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    if smoke:
        env["TRITON_INTERPRET"] = "1"  # the fused kernels run in Triton's interpreter on CPU tensors
    else:
        env["TRITON_PRINT_AUTOTUNING"] = "1"  # the autotuner's choices go to the log and the JSON
    if data_dir:
        env["MEMTRAIN_DATA_DIR"] = data_dir
    return env


def run_part(part: Part, smoke: bool, env: dict[str, str], log, workdir: Path, grace_s: float = GRACE_S) -> dict:
    """Run one part in its own process (its own session, so a kill takes its children too)."""
    budget = part.smoke_budget_s if smoke else part.budget_s
    result_path = workdir / f"{part.name}.json"
    part_log = workdir / f"{part.name}.log"
    t0 = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", part.target, "--result", str(result_path),
           "--deadline", repr(t0 + budget), "--grace", repr(grace_s), *(["--smoke"] if smoke else [])]
    with open(part_log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            code = proc.wait(timeout=budget + grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = time.time() - t0
    text = part_log.read_text(errors="replace")
    log.write(f"\n===== {part.name} ({_now()}, {seconds:.1f} s) =====\n{text}")
    log.flush()
    recorded = json.loads(result_path.read_text()) if result_path.exists() else {"rows": [], "skipped": [], "meta": {}}
    errors = [r for r in recorded["rows"] if r.get("error")]
    if code is None:
        status, message = "timeout", f"killed {budget + grace_s:.0f} s after its start (budget {budget:.0f} s)"
    elif code != 0:
        tail = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["no output"]
        status, message = "failed", f"exit {code}: {tail[0][:300]}"
    elif recorded["skipped"] or errors:
        status = "partial"
        message = "; ".join([f"skipped {s['what']}: {s['why']}" for s in recorded["skipped"]] +
                            [f"{_row_label(part, r)}: {r['error']}" for r in errors])
    else:
        status, message = "ok", ""
    return {"name": part.name, "title": part.title, "status": status, "message": message, "budget_s": budget,
            "seconds": round(seconds, 1), "command": part.command, "rows": recorded["rows"],
            "skipped": recorded["skipped"], "meta": recorded["meta"], "autotune": autotune_choices(text),
            "log_tail": text[-3000:] if status in ("failed", "timeout") else ""}


def _row_label(part: Part, row: dict) -> str:
    return str(row.get(part.columns[0].key, "?"))


def skipped_part(part: Part, smoke: bool, message: str) -> dict:
    return {"name": part.name, "title": part.title, "status": "skipped", "message": message,
            "budget_s": part.smoke_budget_s if smoke else part.budget_s, "seconds": 0.0, "command": part.command,
            "rows": [], "skipped": [], "meta": {}, "autotune": [], "log_tail": ""}


def run_suite(parts: list[Part], out: Path, smoke: bool, budget_s: float, command: str, data_dir: str | None = None,
              grace_s: float = GRACE_S, echo: Callable[[str], None] = print) -> dict:
    """Run `parts` in order within `budget_s`; writes out/gpu_suite.{json,md,log}; returns the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    meta = {"date": _now(), "command": command, "smoke": smoke, "budget_s": budget_s if math.isfinite(budget_s) else None,
            "git_commit": _git_commit(),
            "nvidia_smi": _nvidia_smi(), "python": sys.version.split()[0], "host_cpus": os.cpu_count(),
            "device": None, "torch": None, "cuda": None, "seconds": None}
    result = {"schema": SCHEMA, "meta": meta, "parts": []}
    env = worker_env(smoke, data_dir)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp, open(out / "gpu_suite.log", "w") as log:
        log.write(f"gpu_suite {meta['date']}: {command}\n")
        for part in parts:
            budget = part.smoke_budget_s if smoke else part.budget_s
            left = budget_s - (time.time() - t0)
            missing = missing_modules(part.needs)
            if missing:
                entry = skipped_part(part, smoke, f"needs {', '.join(missing)} (not importable here)")
            elif budget > left:
                entry = skipped_part(part, smoke, f"its budget {budget:.0f} s exceeds the {max(left, 0):.0f} s left")
            else:
                echo(f"{part.name}: running (budget {budget:.0f} s, {left:.0f} s left) ...")
                entry = run_part(part, smoke, env, log, Path(tmp), grace_s)
            for key in ("device", "torch", "cuda"):
                meta[key] = meta[key] or entry["meta"].get(key)
            result["parts"].append(entry)
            meta["seconds"] = round(time.time() - t0, 1)
            write_json(out / "gpu_suite.json", result)
            echo(f"{part.name}: {entry['status']} in {entry['seconds']:.0f} s, {len(entry['rows'])} rows"
                 + (f" ({entry['message']})" if entry["message"] else ""))
    (out / "gpu_suite.md").write_text(render_markdown(result))
    return result


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Markdown (also used by update_benchmarks.py)


def fmt(value, kind: str) -> str:
    """A cell: None or NaN as n/a; ms and s as given; bytes as GiB or MiB; ratios; shares as %."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "text":
        return str(value).replace("|", "\\|")
    if kind == "bool":
        return "yes" if value else "**no**"
    formats = {"ms": "{:.2f}", "s": "{:.3f}", "ratio": "{:.2f}", "ratio3": "{:.3f}", "sci": "{:.1e}", "tps": "{:,.0f}",
               "int": "{:,}"}
    if kind == "gib":
        return f"{value / 2**30:.2f}"
    if kind == "mib":
        return f"{value / 2**20:.1f}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    return formats[kind].format(value)


def render_table(part: Part, rows: list[dict]) -> str:
    lines = ["| " + " | ".join(c.header for c in part.columns) + " |", "|" + "---|" * len(part.columns)]
    for row in rows:  # an empty text cell (a note) stays empty; a missing figure reads n/a
        cells = ["" if c.fmt == "text" and row.get(c.key) is None else fmt(row.get(c.key), c.fmt) for c in part.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance(meta: dict) -> str:
    """Date, device and versions of a run, in one line."""
    versions = ", ".join(f"{k} {meta[k]}" for k in ("torch", "cuda") if meta.get(k))
    commit = f", commit {meta['git_commit']}" if meta.get("git_commit") else ""
    return f"{meta['date'][:10]} on {meta.get('device') or 'an unknown device'}" + (f" ({versions})" if versions else "") + commit


def suite_command_line(meta: dict) -> str:
    """The run's command as an indented Markdown code line, with the comment that docs use for a
    command needing a GPU (tests/integration/test_documented_commands.py then expects it to refuse
    at once on a machine without one; a smoke run's line says it is the CPU check)."""
    comment = "the CPU check of the suite, not a measurement" if meta.get("smoke") else "needs a GPU"
    return f"    {meta['command']}  # {comment}"


def render_part(entry: dict, meta: dict) -> str:
    """A part's block: provenance, the suite's command and the full-size standalone one (as code
    lines, never inline), the table, the skips and the autotuner's choices."""
    part = BY_NAME.get(entry["name"])
    if meta.get("smoke"):
        head = (f"Smoke run {provenance(meta)} (part `{entry['name']}`: {entry['status']}): tiny shapes on a CPU, "
                "a check of the suite's code path, not a measurement.")
    else:
        head = (f"Measured {provenance(meta)} by the GPU suite (part `{entry['name']}`: {entry['status']}, "
                f"{entry['seconds']:.0f} s of its {entry['budget_s']:.0f} s budget):")
    lines = [head, "", suite_command_line(meta), "", "The same benchmark at full size, standalone:", "",
             f"    {entry['command']}  # needs a GPU", ""]
    if entry["rows"] and part is not None:
        lines += [render_table(part, entry["rows"]), ""]
    if entry["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{s['what']} ({s['why']})" for s in entry["skipped"]) + ".", ""]
    if entry.get("autotune"):
        lines += ["Triton's autotuning choices:", ""]
        lines += [f"- `{a['function']}`" + (f" (key {a['key']})" if a.get("key") else "") + f": {a['best']}, "
                  f"tuned in {float(a['seconds']):.1f} s" for a in entry["autotune"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


def render_summary(result: dict) -> str:
    """The run's provenance and command, and per part its status, time and message."""
    meta = result["meta"]
    budget = f" of a {meta['budget_s']:.0f} s budget" if meta.get("budget_s") else ""
    lines = [f"Last run: {provenance(meta)}, {meta['seconds'] or 0:.0f} s{budget}"
             + (" (smoke: CPU, tiny shapes, not a measurement)" if meta.get("smoke") else "") + ":", "",
             suite_command_line(meta), "", "| part | status | seconds | budget s | rows | message |",
             "|---|---|---|---|---|---|"]
    for e in result["parts"]:
        message = e["message"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {e['name']} | {e['status']} | {e['seconds']:.0f} | {e['budget_s']:.0f} | {len(e['rows'])} | {message} |")
    return "\n".join(lines) + "\n"


def render_markdown(result: dict) -> str:
    out = ["# GPU suite", "", render_summary(result)]
    for e in result["parts"]:
        out += [f"## {e['name']}: {e['title']}", "", render_part(e, result["meta"])]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def select_parts(names: list[str] | None, budgets: list[str] = ()) -> list[Part]:
    """The parts named (default: the default parts), with budgets from NAME=SECONDS items."""
    unknown = [n for n in names or [] if n not in BY_NAME]
    if unknown:
        raise SystemExit(_usage_error(f"unknown part(s) {', '.join(unknown)}; the parts are: {', '.join(BY_NAME)}"))
    parts = [BY_NAME[n] for n in names] if names else [p for p in PARTS if p.default]
    for item in budgets:
        name, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if name not in BY_NAME or value <= 0:
            raise SystemExit(_usage_error(f"--part-budget {item!r}: expected NAME=SECONDS with NAME one of "
                                          f"{', '.join(BY_NAME)} and SECONDS > 0"))
        parts = [dataclasses.replace(p, budget_s=value, smoke_budget_s=value) if p.name == name else p for p in parts]
    return parts


def _usage_error(message: str) -> int:
    print(f"gpu_suite: {message}", file=sys.stderr)
    return 2


def list_parts() -> str:
    lines = [f"{'part':<20} {'default':<8} {'budget s':>8} {'smoke s':>8}  needs"]
    for p in PARTS:
        lines.append(f"{p.name:<20} {'yes' if p.default else 'no':<8} {p.budget_s:>8.0f} {p.smoke_budget_s:>8.0f}  "
                     f"{', '.join(p.needs) or '-'}")
    lines.append(f"default parts: {sum(p.budget_s for p in PARTS if p.default):.0f} s on the GPU machine")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default $OUT, else ./gpu_suite_out)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the code path, measures nothing")
    p.add_argument("--parts", nargs="+", metavar="PART", help="run these parts, in this order (default: the default parts)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f}; with --smoke no limit)")
    p.add_argument("--part-budget", action="append", default=[], metavar="NAME=SECONDS",
                   help="another budget for one part (repeatable), e.g. data_parallel=240 in a later lease")
    p.add_argument("--data-dir", default=None, help="MEMTRAIN_DATA_DIR for the parts (the protein data's parent folder)")
    p.add_argument("--list", action="store_true", help="list the parts, their budgets and needs, and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--grace", type=float, default=GRACE_S, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.result, args.deadline, args.smoke, args.grace)
    if args.list:
        print(list_parts())
        return 0
    parts = select_parts(args.parts, args.part_budget)
    if not args.smoke:
        from gpu_only import require_cuda  # scripts/bench/ is on sys.path

        require_cuda("gpu_suite.py", "--smoke")
    out = args.out or Path(os.environ.get("OUT") or "gpu_suite_out")
    budget = args.budget if args.budget is not None else (math.inf if args.smoke else DEFAULT_BUDGET_S)
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    if "--out" in shown:  # the folder is a detail of this machine, not of the command
        i = shown.index("--out")
        del shown[i:i + 2]
    command = shlex.join(["python3", "scripts/bench/gpu_suite.py", *shown])
    print(f"gpu_suite: {len(parts)} parts, budget {budget:.0f} s, output in {out}", flush=True)
    result = run_suite(parts, out, args.smoke, budget, command, args.data_dir)
    print("\n" + render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
