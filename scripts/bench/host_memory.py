"""Host memory (resident, RSS) at start-up and in the steps against `memtrain estimate`'s host
model (memtrain.memory.host_memory): a gpt of 23.7M parameters on 2 gloo ranks (CPU, so the
model counts the device terms as host ones), zero2 + optimizer_cpu, zero3 + params_cpu,
zero3 + optimizer_cpu, and ddp, fsdp, zero2 for reference, in one torchrun launch of the test
suite's batch worker (tests/distributed/cases.py: host_rss). Every figure is what the case adds
above the process's own RSS with the same modules imported (the baseline, printed apart).
Prints a markdown table.

    python3 scripts/bench/host_memory.py [--out FOLDER]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CASES = {"zero2-optimizer_cpu": ["parallel=zero2", "offload=optimizer_cpu"],
         "zero3-params_cpu": ["parallel=zero3", "offload=params_cpu"],
         "zero3-optimizer_cpu": ["parallel=zero3", "offload=optimizer_cpu"],
         "ddp": ["parallel=ddp"], "fsdp": ["parallel=fsdp"], "zero2": ["parallel=zero2"]}
MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    from tests.distributed.test_host_memory import HOST_GPT

    from tests.distributed.batch import run_cases

    root = args.out or Path(tempfile.mkdtemp(prefix="host_memory_"))
    args_of = {key: [*HOST_GPT, *extra] for key, extra in CASES.items()}
    folders = run_cases(root, {key: ("host_rss", a) for key, a in args_of.items()}, nproc=2, timeout=900)

    import torch

    from memtrain.config.loader import load_config
    from memtrain.memory.estimator import estimate
    from memtrain.memory.host_memory import host_estimate

    print("| config (2 ranks, MiB summed) | baseline RSS / rank | start-up peak meas / est (ratio) "
          "| resident after steps meas / est (ratio) | steady peak meas / est (ratio) |")
    print("|---|---:|---:|---:|---:|")
    for key, folder in folders.items():
        ranks = torch.load(folder / "result.pt", weights_only=True)
        cfg = load_config([*args_of[key], "launcher.nproc_per_node=2"])
        host = host_estimate(cfg, estimate(cfg))
        cells = []
        for measured_key, est in (("startup_peak", host.startup_per_node), ("after_steps", 2 * host.steady_resident_per_rank),
                         ("steady_peak", host.steady_per_node)):
            meas = sum(r[measured_key] for r in ranks)
            cells.append(f"{meas / MIB:,.1f} / {est / MIB:,.1f} ({meas / est:.3f})")
        base = sum(r["baseline"] for r in ranks) / len(ranks)
        print(f"| {key} | {base / MIB:,.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
