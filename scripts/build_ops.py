"""Build, once, the DeepSpeed C++ ops that memtrain can use on this machine, into a cache folder,
so no test or run pays for the build: ZeRO-Infinity's async_io op (offload=nvme; needs libaio,
`apt-get install libaio-dev`) and the pin_memory op its swapper loads. DeepSpeed compiles them
just in time on first use (about 6 minutes on 2 cores); a later load from the cache takes seconds.

    TORCH_EXTENSIONS_DIR=~/.cache/memtrain/torch_extensions python3 scripts/build_ops.py

TORCH_EXTENSIONS_DIR defaults to ~/.cache/memtrain/torch_extensions (what the tests use). Exit 0:
built or loaded; 3: this machine cannot build them (the reason is printed: no libaio, no
compiler, no DeepSpeed); 1: the build failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_DIR = Path.home() / ".cache" / "memtrain" / "torch_extensions"
OPS = ("AsyncIOBuilder", "PinMemoryBuilder")


def main() -> int:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_DIR))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the ops memtrain's CPU runs load
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError as err:
        print(f"DeepSpeed is not installed: {err}")
        return 3
    for name in OPS:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible(verbose=False):
            why = "install libaio-dev" if name == "AsyncIOBuilder" else "see DeepSpeed's op builder"
            print(f"DeepSpeed's {name} op cannot be built here ({why}); ZeRO-Infinity's NVMe offload needs it")
            return 3
        builder.load(verbose=False)
        print(f"{name}: ready in {os.environ['TORCH_EXTENSIONS_DIR']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
