"""`memtrain estimate`'s peak over a step's phases against the live-tensor peak of two real
optimizer steps on this machine's CPU (memtrain.memory.measure.step_phase_peaks), for the
configurations of tests/unit/test_step_peaks.py; prints a Markdown table (docs/planner.md).
    python scripts/bench/peak_vs_estimate.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from memtrain.config.loader import load_config  # noqa: E402
from memtrain.memory.estimator import estimate  # noqa: E402
from memtrain.memory.measure import step_phase_peaks  # noqa: E402
from tests.unit.test_step_peaks import CASES  # noqa: E402

MiB = 2**20


def main() -> int:
    print("| configuration | predicted peak MiB | measured peak MiB | predicted / measured | phase (predicted, measured) "
          "| sum of terms / measured |")
    print("|---|---:|---:|---:|---|---:|")
    for case in CASES:
        cfg = load_config([*case, "trainer.device=cpu"])
        est = estimate(cfg)
        with tempfile.TemporaryDirectory() as run_dir:
            live = step_phase_peaks(cfg, run_dir, steps=2)
        measured = max(live.peaks.values())
        phase = (max(est.phases, key=est.phases.get), max(live.peaks, key=live.peaks.get))
        print(f"| {' '.join(case)} | {est.peak / MiB:.2f} | {measured / MiB:.2f} | {est.peak / measured:.3f} "
              f"| {phase[0]}, {phase[1]} | {est.total / measured:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
