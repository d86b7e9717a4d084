"""The guard every GPU benchmark calls right after parsing its arguments: on a machine without CUDA
it says so in one paragraph and exits 2 at once (instead of running the published sizes on a CPU
for an hour), naming the CPU variant the script has, if any."""

from __future__ import annotations

import sys


def require_cuda(script: str, cpu_variant: str | None = None) -> None:
    """Exit 2 with a message unless a CUDA device is visible. `cpu_variant`: the flags that run the
    script's stated CPU variant (e.g. "--smoke"), or None when it has none."""
    import torch

    if torch.cuda.is_available():
        return
    hint = (f" `python scripts/bench/{script} {cpu_variant}` runs its CPU variant (a check of the script that "
            "measures nothing worth reporting)." if cpu_variant else " It has no CPU variant.")
    print(f"{script}: this benchmark measures a GPU (CUDA time and peak memory at published sizes) and no CUDA "
          f"device is visible; run it on a GPU machine.{hint}", file=sys.stderr)
    sys.exit(2)
