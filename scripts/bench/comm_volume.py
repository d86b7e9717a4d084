"""The analytic communication volume per parallel mode (memtrain estimate's comm_bytes) as a
markdown table: bytes sent per device per optimizer step, by mesh dimension and collective.

    python scripts/bench/comm_volume.py --model gpt_1b --devices 8 --seq-len 2048 --micro-batch 1
"""

from __future__ import annotations

import argparse

from memtrain.config.loader import load_config
from memtrain.memory.estimator import estimate

MODES = {
    "ddp": ["parallel=ddp"],
    "fsdp": ["parallel=fsdp"],
    "fsdp x tp=2": ["parallel=fsdp_tp"],
    "fsdp x tp=4": ["parallel=fsdp_tp", "parallel.tp=4"],
    "fsdp x tp=4, tp_sp": ["parallel=fsdp_tp", "parallel.tp=4", "parallel.tp_sp=true"],
    "ulysses": ["parallel=ulysses"],
    "ring": ["parallel=ring"],
    "fsdp x ring cp=2": ["parallel=fsdp", "parallel.cp=2", "parallel.cp_impl=ring"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt_1b")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args()
    base = [f"model={args.model}", "data=synthetic", f"data.seq_len={args.seq_len}", f"trainer.micro_batch_size={args.micro_batch}",
            f"precision={args.precision}", f"launcher.nproc_per_node={args.devices}", "trainer.device=cpu"]
    print("| mode | dimension: collective | GiB per device per step | total GiB | parameters per device |")
    print("| --- | --- | --- | --- | --- |")
    for mode, overrides in MODES.items():
        est = estimate(load_config([*base, *overrides]))
        rows = [(f"{dim}: {k}", v) for dim, d in est.comm_bytes.items() for k, v in d.items()]
        total = sum(v for _, v in rows)
        cells = "<br>".join(f"{name}" for name, _ in rows)
        values = "<br>".join(f"{v / 2**30:.3f}" for _, v in rows)
        print(f"| {mode} | {cells} | {values} | {total / 2**30:.3f} | {est.n_params / 1e6:,.0f}M |")


if __name__ == "__main__":
    main()
