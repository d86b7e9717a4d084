"""Calibrate `memtrain estimate` against measured peak memory, model by model, over configurations
(precision x activation checkpointing x offload).

On a GPU: each configuration trains a few steps (the real Trainer) and its peak
torch.cuda.max_memory_allocated is set against the estimator's per-device total; the table prints
the ratio measured / predicted (the target is within 10%).
    python scripts/bench/calibrate_estimator.py --models gpt_1b alphafold --steps 3
--smoke (CPU, tiny models): the measured quantity is what one forward pass leaves allocated for the
backward (memtrain.memory.measure.forward_held_bytes) against the estimator's activations.
    python scripts/bench/calibrate_estimator.py --smoke
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile

import torch
from rich.console import Console
from rich.table import Table

from gpu_only import require_cuda  # scripts/bench/ is on sys.path
from memtrain.config.loader import load_config
from memtrain.engine.trainer import Trainer
from memtrain.memory.estimator import estimate
from memtrain.memory.measure import forward_held_bytes

# model -> the overrides that select it (a recipe or a model option; extend as models are added)
MODELS = {
    "gpt_1b": ["model=gpt_1b", "data=synthetic", "data.seq_len=2048", "trainer.micro_batch_size=4"],
    "alphafold": ["+recipe=alphafold", "data.crop_size=256"],
    "gpt_tiny": ["model=gpt_tiny", "data=synthetic", "data.seq_len=64", "data.num_synthetic_tokens=20000",
                 "trainer.micro_batch_size=2"],
    "alphafold_tiny": ["+recipe=alphafold_tiny"],
}
# precision x checkpointing x offload: at least five per model
CONFIGS = [
    ["precision=fp32", "activation_checkpoint=none"],
    ["precision=bf16", "activation_checkpoint=none"],
    ["precision=bf16", "activation_checkpoint=full"],
    ["precision=bf16", "activation_checkpoint=selective"],
    ["precision=fp32", "activation_checkpoint=full"],
    ["precision=bf16", "activation_checkpoint=full", "offload=activations_cpu"],
]


def measure_gpu(cfg, steps: int) -> int:
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, console=Console(quiet=True))
        for _ in range(steps):
            trainer.train_step()
        peak = torch.cuda.max_memory_allocated()
        trainer.close()
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def measure_cpu_activations(cfg) -> int:
    with tempfile.TemporaryDirectory() as run_dir, Trainer(cfg, run_dir, console=Console(quiet=True)) as trainer:
        inputs, targets = trainer.data.batch(0, cfg.trainer.micro_batch_size)

        def forward():
            with trainer.precision.autocast():
                return trainer.spec.loss_fn(trainer.model(inputs), targets)[0]

        return forward_held_bytes(forward)  # before the trainer closes its one-rank process group


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["gpt_1b", "alphafold"], choices=sorted(MODELS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, activations only")
    args = p.parse_args()
    models = ["gpt_tiny", "alphafold_tiny"] if args.smoke else args.models
    if not args.smoke:
        require_cuda("calibrate_estimator.py", "--smoke")
    what = "activations (CPU forward)" if args.smoke else "peak max_memory_allocated"
    table = Table(title=f"estimator calibration: {what}", title_justify="left")
    for col in ("model", "config", "predicted MiB", "measured MiB", "measured / predicted"):
        table.add_column(col, justify="left" if col in ("model", "config") else "right")
    for model in models:
        for conf in CONFIGS:
            cfg = load_config([*MODELS[model], *conf, *(["trainer.device=cpu"] if args.smoke else [])])
            est = estimate(cfg)
            if args.smoke:
                if cfg.offload.name != "none":
                    continue  # save_on_cpu moves the activations: nothing left to compare on CPU
                predicted, measured = est.activations - est.recompute_buffer, measure_cpu_activations(cfg)
            else:
                predicted, measured = est.total, measure_gpu(cfg, args.steps)
            table.add_row(model, " ".join(conf), f"{predicted / 2**20:,.1f}", f"{measured / 2**20:,.1f}",
                          f"{measured / predicted:.3f}")
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
