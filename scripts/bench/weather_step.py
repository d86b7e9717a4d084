"""One training step of the Pangu-Weather model (default: the published size at 0.25 degrees,
721 x 1440, 13 levels, batch 1), side by side for: no technique (fp32), bf16, bf16 + activation
checkpointing of every block, bf16 + checkpointing + activation offload to the host. Peak device
memory and step time per configuration, each measured in its own process (an out-of-memory in
one does not disturb the others), next to the estimator's prediction (`memtrain estimate`), and
the ratios to the first configuration that fits.

On the GPU machine:

    python scripts/bench/weather_step.py                      # pangu at 721 x 1440
    python scripts/bench/weather_step.py --model fuxi

On CPU (a smoke test of the script, not a measurement):

    python scripts/bench/weather_step.py --smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from gpu_only import require_cuda  # scripts/bench/ is on sys.path

CONFIGS = {  # name -> memtrain overrides
    "fp32, no technique": ["precision=fp32", "activation_checkpoint=none", "offload=none"],
    "bf16": ["precision=bf16", "activation_checkpoint=none", "offload=none"],
    "bf16 + checkpoint": ["precision=bf16", "activation_checkpoint=full", "offload=none"],
    "bf16 + checkpoint + offload": ["precision=bf16", "activation_checkpoint=full", "offload=activations_cpu"],
}
SMOKE = ["model.n_lat=16", "model.n_lon=32", "model.n_levels=3", "data.levels=[1000,850,500]", "model.dim=16",
         "model.window_size=[2,2,4]", "model.depths=[2,2,2,2]", "model.heads=[2,2,2,2]"]


def overrides_for(model: str, config: str, smoke: bool) -> list[str]:
    recipe = {"pangu": "weather_swin", "fuxi": "weather_fuxi"}[model]
    extra = SMOKE if smoke else []
    if smoke and model == "fuxi":
        extra = [o for o in SMOKE if not o.startswith(("model.window_size", "model.depths", "model.heads"))]
        extra += ["model.window_size=[2,4]", "model.depth=2", "model.heads=2"]
    device = ["trainer.device=cpu"] if smoke else []
    return [f"+recipe={recipe}", *CONFIGS[config], *extra, *device]


def one_step(overrides: list[str], steps: int) -> dict:
    """Build, then time `steps` training steps after one warm-up; peak memory over all of them."""
    from memtrain.config.loader import load_config
    from memtrain.engine.strategy import activation_context
    from memtrain.memory.activation_checkpoint import apply_activation_checkpointing
    from memtrain.models import get_spec
    from memtrain.precision.amp import Precision

    cfg = load_config(overrides)
    device = torch.device("cuda" if torch.cuda.is_available() and "trainer.device=cpu" not in overrides else "cpu")
    spec = get_spec(cfg.model.arch)
    precision = Precision.from_config(cfg.precision, device.type)
    torch.manual_seed(0)
    with torch.device(device):
        model = spec.build_model(cfg.model)
    model.to(dtype=precision.param_dtype)
    apply_activation_checkpointing(model, cfg.activation_checkpoint, spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    m, b = cfg.model, cfg.trainer.micro_batch_size
    inputs = {"upper": torch.randn(b, m.n_upper, m.n_levels, m.n_lat, m.n_lon, device=device),
              "surface": torch.randn(b, m.n_surface, m.n_lat, m.n_lon, device=device)}
    targets = {k: torch.randn_like(v) for k, v in inputs.items()}
    targets["lat_weight"] = torch.ones(b, m.n_lat, device=device)

    def step():
        with precision.autocast(), activation_context(cfg.offload, device):
            loss, _ = spec.loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"step_s": seconds, "peak_bytes": peak, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def predicted(overrides: list[str]) -> int:
    from memtrain.config.loader import load_config
    from memtrain.memory.estimator import estimate

    return estimate(load_config(overrides)).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["pangu", "fuxi"], default="pangu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny grid on CPU: checks the script, measures nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.smoke and not args.worker:
        require_cuda("weather_step.py", "--smoke")
    if args.worker:  # one configuration, in its own process
        print(json.dumps(one_step(json.loads(args.worker), args.steps)))
        return
    rows = []
    for name in CONFIGS:
        overrides = overrides_for(args.model, name, args.smoke)
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--worker", json.dumps(overrides)],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        elif "out of memory" in proc.stderr.lower():
            result = {"step_s": None, "peak_bytes": None, "device": "", "note": "out of memory"}
        else:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        result["predicted_bytes"] = predicted(overrides)
        rows.append((name, result))
    base = next((r for _, r in rows if r["step_s"] is not None), None)
    device = next((r["device"] for _, r in rows if r.get("device")), "?")
    print(f"weather_step.py --model {args.model}{' --smoke' if args.smoke else ''}  device: {device}  steps: {args.steps}")
    print("| configuration | peak memory (GiB) | predicted (GiB) | step (s) | memory ratio | time ratio |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if r["peak_bytes"] else r.get("note", "n/a (CPU)")
        step = f"{r['step_s']:.3f}" if r["step_s"] is not None else "-"
        mem_ratio = f"{r['peak_bytes'] / base['peak_bytes']:.2f}" if r["peak_bytes"] and base and base["peak_bytes"] else "-"
        t_ratio = f"{r['step_s'] / base['step_s']:.2f}" if r["step_s"] is not None and base else "-"
        print(f"| {name} | {peak} | {r['predicted_bytes'] / 2**30:.2f} | {step} | {mem_ratio} | {t_ratio} |")


if __name__ == "__main__":
    main()
