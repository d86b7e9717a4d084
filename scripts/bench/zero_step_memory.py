"""What DeepSpeed ZeRO holds inside the optimizer step against `memtrain estimate`, per rank:
gpt_tiny on 2 gloo ranks (CPU), stages 1-3 x fp32/bf16, in one torchrun launch of the test
suite's batch worker (tests/distributed/cases.py: zero_step_storages). Prints a markdown table.

    python3 scripts/bench/zero_step_memory.py [--out FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
    root = args.out or Path(tempfile.mkdtemp(prefix="zero_step_memory_"))
    cases = []
    for stage, precision in CASES:
        folder = root / f"zero{stage}-{precision}"
        folder.mkdir(parents=True, exist_ok=True)
        cases.append({"key": folder.name, "fn": "zero_step_storages", "dir": str(folder),
                      "args": [*GPT_TINY, f"parallel=zero{stage}", f"precision={precision}"]})
    spec = root / "spec.json"
    spec.write_text(json.dumps({"collective_timeout_s": 300, "cases": cases}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "memtrain" / "torch_extensions"))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(REPO / "tests" / "distributed" / "batch_worker.py"), str(spec)],
                   cwd=REPO, env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)

    import torch

    from memtrain.config.loader import load_config
    from memtrain.memory.estimator import estimate
    from memtrain.memory.zero_memory import ZeroTerm, in_step_bytes

    print("| config | measured in step (B) | estimated in step (B) | difference | B/parameter measured |")

    print("|---|---:|---:|---:|---:|")
    for case in cases:
        measured = torch.load(Path(case["dir"]) / "result.pt", weights_only=True)["total"]
        est = estimate(load_config([*case["args"], "launcher.nproc_per_node=2"]))
        ours = in_step_bytes([ZeroTerm(**t) for t in est.model_state_terms])
        print(f"| {case['key']} | {measured:,} | {ours:,} | {100 * (ours / measured - 1):+.3f}% "
              f"| {measured / est.n_params:.2f} |")


if __name__ == "__main__":
    main()
