"""`memtrain submit`: write a Slurm batch script for a training run and submit it with sbatch.

    memtrain submit --nodes 4 --gpus-per-node 8 --time 12:00:00 -- +recipe=alphafold parallel=dap

The overrides are validated as `memtrain train` would (with the job's world size) before anything
is submitted, then written to RUN_DIR/slurm/overrides.json, which every rank reads back: they are
never placed in the batch script, so no shell ever parses them. The batch script runs one task per
node that starts torch's elastic agent with a c10d rendezvous on the job's first node (or, with
--launcher srun, one task per process); its log goes to RUN_DIR/slurm/<job-name>-<job id>.out.
Every rank runs memtrain.slurm.job (which runs `memtrain train` through memtrain.cli). Re-exported
by memtrain.slurm.submit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


# Values that end up in #SBATCH lines, which sbatch splits with its own rules: allow only plain ones.
def overrides_path(run_dir: str | Path) -> Path:
    """RUN_DIR/slurm/overrides.json: the overrides every rank of the job reads back (memtrain.slurm.job)."""
    return Path(run_dir) / "slurm" / "overrides.json"


_SAFE = {
    "job_name": re.compile(r"^[A-Za-z0-9_.+-]+$"),
    "partition": re.compile(r"^[A-Za-z0-9_.,-]+$"),
    "account": re.compile(r"^[A-Za-z0-9_.-]+$"),
    "time": re.compile(r"^[0-9]+(-[0-9]+)?(:[0-9]+){0,2}$|^[0-9]+-[0-9]+$"),
    "mem": re.compile(r"^[0-9]+[KMGT]?$"),
    "run_dir": re.compile(r"^[A-Za-z0-9_./+@:-]+$"),  # also a Hydra override value
}


class SubmitError(ValueError):
    pass


@dataclass(frozen=True)
class JobSpec:
    run_dir: Path  # absolute
    nodes: int = 1
    gpus_per_node: int = 0
    nproc_per_node: int = 1  # processes (ranks) per node; with GPUs, one per GPU
    cpus_per_task: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    mem: str | None = None
    job_name: str = "memtrain"
    launcher: str = "torchrun"  # torchrun: one elastic agent per node | srun: one task per rank
    signal_seconds: int = 120  # SIGUSR1 this long before the time limit
    requeue: bool = True
    master_port: int | None = None  # None: 20000 + job id % 20000 (jobs sharing a node do not collide)
    python: str = sys.executable

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    @property
    def log_file(self) -> str:
        return f"{self.run_dir}/slurm/{self.job_name}-%j.out"

    def check(self) -> None:
        for key in ("nodes", "nproc_per_node"):
            if getattr(self, key) < 1:
                raise SubmitError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.gpus_per_node < 0:
            raise SubmitError(f"--gpus-per-node must be at least 0, got {self.gpus_per_node}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise SubmitError(f"--cpus-per-task must be at least 1, got {self.cpus_per_task}")
        if self.launcher not in ("torchrun", "srun"):
            raise SubmitError(f"--launcher must be torchrun or srun, got {self.launcher!r}")
        for key, pattern in _SAFE.items():
            value = getattr(self, key)
            if value is not None and not pattern.match(str(value)):
                raise SubmitError(f"--{key.replace('_', '-')} {str(value)!r} has characters sbatch or Hydra would "
                                  f"misread; allowed: {pattern.pattern}")


def sbatch_lines(spec: JobSpec) -> list[str]:
    per_node_tasks = 1 if spec.launcher == "torchrun" else spec.nproc_per_node
    lines = [
        f"--job-name={spec.job_name}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={per_node_tasks}",
    ]
    if spec.cpus_per_task is not None:
        lines.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.gpus_per_node:
        lines.append(f"--gpus-per-node={spec.gpus_per_node}")
    for key in ("time", "partition", "account", "mem"):
        if getattr(spec, key) is not None:
            lines.append(f"--{key}={getattr(spec, key)}")
    lines += [f"--output={spec.log_file}", "--open-mode=append"]
    if spec.requeue:
        lines += ["--requeue", f"--signal=USR1@{spec.signal_seconds}"]
    return [f"#SBATCH {line}" for line in lines]


def batch_script(spec: JobSpec) -> str:
    """The batch script: bash, with every value from the user quoted by shlex.quote (the
    overrides are not in it at all)."""
    q = shlex.quote
    run_dir, python = q(str(spec.run_dir)), q(spec.python)
    backend_note = "nccl" if spec.gpus_per_node else "gloo"
    # one OpenMP thread per CPU of the task, shared by the ranks the task runs
    ranks_per_task = spec.nproc_per_node if spec.launcher == "torchrun" else 1
    if spec.launcher == "torchrun":
        launch = [
            "srun --kill-on-bad-exit=1 --ntasks-per-node=1 \\",
            f"  {python} -m memtrain.slurm.agent \\",
            f"    --nnodes={spec.nodes} --nproc-per-node={spec.nproc_per_node} --max-restarts=0 \\",
            '    --rdzv-backend=c10d --rdzv-endpoint="$head_node:$port" --rdzv-id="$SLURM_JOB_ID" \\',
            f"    -m memtrain.slurm.job {run_dir}",
        ]
    else:  # one task per rank: memtrain adopts SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID
        launch = [
            'export MASTER_ADDR="$head_node" MASTER_PORT="$port"',
            f"srun --kill-on-bad-exit=1 --ntasks-per-node={spec.nproc_per_node} \\",
            f"  {python} -m memtrain.slurm.job {run_dir}",
        ]
    body = [
        "#!/bin/bash",
        f"# memtrain: {spec.nodes} node(s) x {spec.nproc_per_node} rank(s), {backend_note}, launcher {spec.launcher}",
        *sbatch_lines(spec),
        "set -uo pipefail",
        f"run_dir={run_dir}",
        'mkdir -p "$run_dir/slurm"',
        f"threads=$(( ${{SLURM_CPUS_PER_TASK:-{ranks_per_task}}} / {ranks_per_task} ))",
        "export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))",
        "export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}",
        "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        f"port={spec.master_port}" if spec.master_port else "port=$(( 20000 + SLURM_JOB_ID % 20000 ))",
        'echo "memtrain: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, '
        'rendezvous $head_node:$port, run dir $run_dir"',
        'rm -f "$run_dir/slurm/preempted"',
        *launch,
        "status=$?",
        "# the trainer stopped for SIGUSR1/SIGTERM after writing a checkpoint: go back in the queue",
        'if [[ -f "$run_dir/slurm/preempted" ]]; then',
        '  echo "memtrain: stopped at step $(cat "$run_dir/slurm/preempted"); requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$status"',
    ]
    return "\n".join(body) + "\n"


def validate_overrides(spec: JobSpec, overrides: list[str]) -> None:
    """Refuse a bad config before anything is submitted (as `memtrain train` does), with the
    world size the job will have."""
    from memtrain.config.loader import load_config

    fixed = [f"launcher.nnodes={spec.nodes}", f"launcher.nproc_per_node={spec.nproc_per_node}"]
    if spec.nodes > 1:
        fixed.append(f"launcher.rdzv_endpoint=head:{spec.master_port or 29500}")
    load_config([*overrides, *fixed])


def write_job(spec: JobSpec, overrides: list[str]) -> Path:
    """RUN_DIR/slurm/{overrides.json, job.sbatch}; returns the script's path."""
    folder = spec.run_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    overrides_path(spec.run_dir).write_text(json.dumps(overrides, indent=1) + "\n")
    script = folder / "job.sbatch"
    script.write_text(batch_script(spec))
    return script


def sbatch(script: Path) -> str:
    """Submit `script`; returns the job id."""
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SubmitError(f"sbatch failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memtrain submit",
        description="Submit a training run to Slurm. Everything after -- is passed to `memtrain train` as is.",
    )
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="0: a CPU job (gloo)")
    p.add_argument("--nproc-per-node", "--tasks-per-node", dest="nproc_per_node", type=int, default=None,
                   help="ranks per node (default: --gpus-per-node, or 1 without GPUs)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--time", default=None, help="time limit, e.g. 12:00:00")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--mem", default=None, help="memory per node, e.g. 64G")
    p.add_argument("--job-name", default="memtrain")
    p.add_argument("--run-dir", default=None, help="default: outputs/slurm/<job-name>-<date>-<time>")
    p.add_argument("--launcher", choices=["torchrun", "srun"], default="torchrun",
                   help="torchrun: one elastic agent per node (default); srun: one Slurm task per rank")
    p.add_argument("--signal-seconds", type=int, default=120, help="SIGUSR1 this many seconds before the time limit")
    p.add_argument("--no-requeue", dest="requeue", action="store_false")
    p.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: 20000 + job id %% 20000)")
    p.add_argument("--dry-run", action="store_true", help="print the batch script and the overrides; submit nothing")
    return p


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    run_dir = args.run_dir or f"outputs/slurm/{args.job_name}-{datetime.datetime.now():%Y-%m-%d-%H-%M-%S}"
    nproc = args.nproc_per_node if args.nproc_per_node is not None else (args.gpus_per_node or 1)
    return JobSpec(
        run_dir=Path(run_dir).absolute(), nodes=args.nodes, gpus_per_node=args.gpus_per_node, nproc_per_node=nproc,
        cpus_per_task=args.cpus_per_task, time=args.time, partition=args.partition, account=args.account,
        mem=args.mem, job_name=args.job_name, launcher=args.launcher, signal_seconds=args.signal_seconds,
        requeue=args.requeue, master_port=args.master_port,
    )


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Submit options before `--`, memtrain overrides after it (taken verbatim)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def submit_command(argv: list[str]) -> int:
    from memtrain.config.errors import ConfigError
    from memtrain.errors import print_user_error as _fail
    from memtrain.prereq import PrerequisiteError, check_slurm

    options, overrides = split_argv(argv)
    args = parser().parse_args(options)
    try:
        spec = spec_from_args(args)
        spec.check()
        validate_overrides(spec, overrides)
    except (SubmitError, ConfigError) as exc:
        return _fail(str(exc))
    if args.dry_run:
        sys.stdout.write(batch_script(spec))
        print(f"# {overrides_path(spec.run_dir)}:\n# {json.dumps(overrides)}")
        return 0
    try:
        check_slurm("memtrain submit", "Check the batch script with `memtrain submit --dry-run ...`, which submits nothing.")
    except PrerequisiteError as exc:
        return _fail(str(exc))
    script = write_job(spec, overrides)
    try:
        job_id = sbatch(script)
    except (SubmitError, FileNotFoundError) as exc:
        return _fail(str(exc))
    print(f"submitted job {job_id}; run dir {spec.run_dir}; log {spec.log_file.replace('%j', job_id)}")
    return 0
