"""What DeepSpeed ZeRO holds inside the optimizer step against `memtrain estimate`, per rank:
gpt_tiny on 2 gloo ranks (CPU), stages 1-3 x fp32/bf16, in one torchrun launch of the test
suite's batch worker (tests/distributed/cases.py: zero_step_storages). Prints a markdown table.

    python3 scripts/bench/zero_step_memory.py [--out FOLDER]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

GPT_TINY = ["model=gpt_tiny", "data=synthetic", "data.seq_len=32", "data.num_synthetic_tokens=20000",
            "trainer.micro_batch_size=2", "trainer.device=cpu", "optimizer=adamw"]
CASES = [(stage, precision) for stage in (1, 2, 3) for precision in ("fp32", "bf16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    from tests.distributed.batch import run_cases

    root = args.out or Path(tempfile.mkdtemp(prefix="zero_step_memory_"))
    args_of = {f"zero{stage}-{precision}": [*GPT_TINY, f"parallel=zero{stage}", f"precision={precision}"]
               for stage, precision in CASES}
    folders = run_cases(root, {key: ("zero_step_storages", a) for key, a in args_of.items()}, nproc=2, timeout=600)

    import torch

    from memtrain.config.loader import load_config
    from memtrain.memory.estimator import estimate
    from memtrain.memory.zero_memory import ZeroTerm, in_step_bytes

    print("| config | measured in step (B) | estimated in step (B) | difference | B/parameter measured |")

    print("|---|---:|---:|---:|---:|")
    for key, folder in folders.items():
        measured = torch.load(folder / "result.pt", weights_only=True)["total"]
        est = estimate(load_config([*args_of[key], "launcher.nproc_per_node=2"]))
        ours = in_step_bytes([ZeroTerm(**t) for t in est.model_state_terms])
        print(f"| {key} | {measured:,} | {ours:,} | {100 * (ours / measured - 1):+.3f}% "
              f"| {measured / est.n_params:.2f} |")


if __name__ == "__main__":
    main()
