"""A single training case in its own launch, for a test that cannot join the batched launches
(tests/distributed/batch.py), e.g. ZeRO-Infinity, which needs its op built first:

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed/worker.py OUT [hydra overrides]

The first step's gradients, then the losses and gradient norms of a few optimizer steps
(tests.distributed.cases.train_run); rank 0 writes them to OUT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests.distributed.cases import train_run

if __name__ == "__main__":
    out = Path(sys.argv[1])
    result = train_run(out.parent / "run", sys.argv[2:])
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(result, out)
    if dist.is_initialized():
        dist.barrier()  # no rank tears its connections down while another still uses them
        dist.destroy_process_group()
    # the result is saved: leave without the interpreter's teardown, where gloo's threads have
    # aborted a finished job ("terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
