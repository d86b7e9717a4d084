"""ZeRO-3's build of the model, eager (every rank builds it whole, deepspeed.initialize partitions
it) against trainer.init_device=meta (built inside deepspeed.zero.Init, partitioned module by
module): the peak of live tensor bytes per rank while the model is built (until the wrapping
starts) and while the whole Trainer is built (DeepSpeed's buffers included), on 2 gloo ranks (CPU),
fp32 and bf16, in one torchrun launch of the test suite's batch worker (tests/distributed/cases.py:
zero_init, which also checks that both builds give the same weights). Prints a markdown table.

    python3 scripts/bench/zero_init_memory.py [--out FOLDER] [--dim 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

GPT = ["model=gpt_tiny", "data=synthetic", "data.seq_len=32", "data.num_synthetic_tokens=264",
       "trainer.micro_batch_size=4", "trainer.device=cpu", "parallel=zero3", "trainer.max_steps=1",
       "trainer.warmup_steps=0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--dim", type=int, default=256, help="model.dim (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="model.n_layers (default 4)")
    args = parser.parse_args()
    from tests.distributed.batch import run_cases

    root = args.out or Path(tempfile.mkdtemp(prefix="zero_init_memory_"))
    model = [f"model.dim={args.dim}", f"model.n_layers={args.layers}"]
    args_of = {f"{precision}-{init}": [*GPT, *model, f"precision={precision}", f"trainer.init_device={init}"]
               for precision in ("fp32", "bf16") for init in ("eager", "meta")}
    folders = run_cases(root, {key: ("zero_init", a) for key, a in args_of.items()}, nproc=2, timeout=900)

    import torch

    mib = 2**20
    print(f"gpt_tiny {' '.join(model)}, parallel=zero3, 2 gloo ranks, per rank (MiB)\n")
    print("| precision, trainer.init_device | parameters | model build peak | whole model (param dtype) | "
          "partitions | largest module (fp32) | Trainer construction peak | weights as eager's |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for key, folder in folders.items():
        r = torch.load(folder / "result.pt", weights_only=True)
        same = not r["params_differ"] and not r["buffers_differ"]
        n = r["full_bytes"] // (4 if "fp32" in key else 2)
        print(f"| {key.replace('-', ', ')} | {n / 1e6:.2f}M | {r['build_peak_bytes'] / mib:.2f} | "
              f"{r['full_bytes'] / mib:.2f} | {r['partition_bytes'] / mib:.2f} | "
              f"{r['largest_module_bytes'] / mib:.2f} | {r['peak_bytes'] / mib:.1f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
