"""The worker of a batched launch (see tests/distributed/batch.py), one per rank:

    python -m torch.distributed.run --standalone --nproc_per_node=N tests/distributed/batch_worker.py SPEC.json

SPEC lists cases {key, fn, dir, args}. The process group is made once; each case calls
tests.distributed.cases.<fn>(Path(dir), *args) on every rank, and rank 0 writes the return value
to DIR/result.pt. A rank whose case raises writes the traceback to DIR/error_rank<R>.txt and
exits: the other ranks may be waiting in a collective it will never join, so torchrun ends the
launch, and the test process relaunches the cases that did not run.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from tests.distributed import cases


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    dist.init_process_group("gloo", timeout=timedelta(seconds=spec["collective_timeout_s"]))
    rank = dist.get_rank()
    for case in spec["cases"]:
        folder, start = Path(case["dir"]), time.perf_counter()
        try:
            result = getattr(cases, case["fn"])(folder, *case["args"])
            dist.barrier()  # every rank finished the case before rank 0 declares it done
        except Exception:
            (folder / f"error_rank{rank}.txt").write_text(traceback.format_exc())
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)  # not a clean exit: the group may be stuck mid-collective
        if rank == 0:
            tmp = folder / "result.pt.tmp"
            torch.save(result, tmp)
            tmp.rename(folder / "result.pt")
        print(f"rank {rank}: {case['key']} done in {time.perf_counter() - start:.1f} s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
