"""The training entry of every rank of a submitted job (started by torchrun or srun).

    python -m memtrain.slurm.job RUN_DIR

The overrides come from RUN_DIR/slurm/overrides.json, written by `memtrain submit`, and go to
`memtrain train` as a list of strings: no shell ever parses them. The job trains in RUN_DIR and
resumes from its latest checkpoint (trainer.resume=auto), so a requeued job goes on where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from memtrain.engine import preemption
from memtrain.submit import overrides_path  # noqa: F401  (re-exported)


def job_overrides(run_dir: Path, environ: dict[str, str] = os.environ) -> list[str]:
    """The user's overrides, then what the job fixes: the run directory and resumption. A requeued
    job (SLURM_RESTART_COUNT > 0) always resumes from RUN_DIR's latest checkpoint; a first run too,
    unless the user named a checkpoint with trainer.resume."""
    user = json.loads(overrides_path(run_dir).read_text())
    if not isinstance(user, list) or not all(isinstance(o, str) for o in user):
        raise SystemExit(f"{overrides_path(run_dir)}: expected a JSON list of strings")
    restarted = int(environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    sets_resume = any(o.split("=", 1)[0].lstrip("+~") == "trainer.resume" for o in user)
    extra = [f"hydra.run.dir={run_dir}"]
    if environ.get("RANK", "0") != "0":
        extra.append("hydra.output_subdir=null")  # rank 0 writes the run's .hydra/ record
    if restarted or not sets_resume:
        extra.append("trainer.resume=auto")
    return [*user, *extra]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m memtrain.slurm.job RUN_DIR", file=sys.stderr)
        return 2
    preemption.install()  # before anything slow, so an early signal is not lost
    from memtrain.cli import main as cli_main

    return cli_main(["train", *job_overrides(Path(argv[0]))])


if __name__ == "__main__":
    sys.exit(main())
