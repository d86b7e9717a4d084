"""Stand-in parts for tests/unit/test_gpu_suite.py: each runs in the suite's own part process (as
scripts/bench/gpu_suite.py launches a real part) and records rows shaped like the fp8_linear part's,
so the runner's budgets, kills and failures, and update_benchmarks.py, are tested in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def two_rows(rec) -> None:
    rec.meta(device="Fake GPU 80GB", torch="2.11.0+cu130", cuda="13.0")
    rec.add({"precision": "bf16", "tokens_per_s": 12345.6, "peak_bytes": 3 * 2**30, "error": None})
    rec.add({"precision": "fp8", "tokens_per_s": 18518.4, "peak_bytes": int(2.5 * 2**30), "error": None,
             "tokens_per_s_vs_bf16": 1.5, "peak_vs_bf16": 2.5 / 3})


def hangs(rec) -> None:
    """One row, a child process, then sleeps past any test budget (the runner must kill both)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(os.environ["GPU_SUITE_FAKE_PID_FILE"]).write_text(str(child.pid))
    rec.add({"precision": "bf16", "tokens_per_s": 1.0})
    time.sleep(120)


def fails(rec) -> None:
    print("about to fail", flush=True)
    raise RuntimeError("the fake part broke here")


def skips_inside(rec) -> None:
    rec.add({"precision": "bf16", "tokens_per_s": 2.0})
    if rec.fits("the next measurement", 1e9):
        rec.add({"precision": "fp8", "tokens_per_s": 3.0})
