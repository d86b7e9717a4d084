"""Jobs on a real Slurm cluster (see conftest.py): a submitted 2-rank run, overrides full of shell
metacharacters, SIGUSR1 mid-run (checkpoint, requeue, resume), srun without torchrun, and a Hydra
sweep through the submitit launcher."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from memtrain.config.loader import compose_config
from tests.conftest import TINY, run_cli
from tests.slurm.conftest import job_fields, wait_done, wait_until

pytestmark = pytest.mark.slow

# protein sequences: learnable (the synthetic tokens are uniform noise)
# a value no shell may touch: spaces, both quotes, $, ;, a backtick command and a newline
NASTY = "a b'c\"$HOME;`touch /tmp/memtrain-pwned`\nd"
NASTY_OVERRIDE = "offload.nvme_path='" + NASTY.replace("'", "\\'") + "'"
STEPS = 24
COMMON = [*TINY, "data=protein", "parallel=ddp", "trainer.micro_batch_size=2", f"trainer.max_steps={STEPS}",
          "trainer.warmup_steps=0", "optimizer.lr=1e-2", NASTY_OVERRIDE]


def submit(run_dir, *options, overrides=COMMON):
    proc = run_cli("submit", "--run-dir", str(run_dir), "--cpus-per-task", "2", "--job-name", "mt-test",
                   *options, "--", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split("submitted job ")[1].split(";")[0]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def log_of(run_dir, job_id):
    return (run_dir / "slurm" / f"mt-test-{job_id}.out").read_text()


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    """An uninterrupted 2-rank run (one torchrun agent, 2 workers)."""
    run_dir = tmp_path_factory.mktemp("reference")
    job = submit(run_dir, "--nproc-per-node", "2")
    assert wait_done(job) == "COMPLETED", log_of(run_dir, job)[-3000:]
    return run_dir, job


def test_two_ranks_complete_with_falling_loss(reference):
    run_dir, job = reference
    recs = records(run_dir)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in recs]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses
    assert "done: step 24" in log_of(run_dir, job)


def test_shell_metacharacters_arrive_intact(reference):
    run_dir, _ = reference
    resolved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert resolved["offload"]["nvme_path"] == NASTY
    assert resolved["offload"]["nvme_path"] == compose_config(COMMON).offload.nvme_path  # as a local run reads it
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())[: len(COMMON)] == COMMON
    assert not __import__("os").path.exists("/tmp/memtrain-pwned")


def test_sigusr1_checkpoints_requeues_and_resumes_without_losing_a_step(reference, tmp_path):
    ref_dir, _ = reference
    run_dir = tmp_path / "preempted"
    job = submit(run_dir, "--nproc-per-node", "2")
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and len(records(run_dir)) >= 3, 240,
               "the first steps")
    # what `#SBATCH --signal=USR1@N` sends before the time limit: SIGUSR1 to every process of the steps
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_until(lambda: int(job_fields(job).get("Restarts", "0")) >= 1, 120, "the job to requeue")
    # Slurm holds a requeued job back for a while (its BeginTime, about two minutes) before it starts again
    assert wait_done(job, timeout=420) == "COMPLETED", log_of(run_dir, job)[-3000:]
    log = log_of(run_dir, job)
    assert "requeueing job" in log and "(restart 1)" in log and "resumed from" in log, log[-3000:]
    recs = records(run_dir)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))  # each step exactly once
    stopped = int(log.split("stopped at step ")[1].split(";")[0])
    assert 3 <= stopped < STEPS
    # same ranks, same order of operations, state restored from the checkpoint: identical losses
    assert [r["loss"] for r in recs] == [r["loss"] for r in records(ref_dir)]


def test_srun_one_task_per_rank_without_torchrun(reference, tmp_path):
    ref_dir, _ = reference
    run_dir = tmp_path / "srun"
    job = submit(run_dir, "--launcher", "srun", "--nproc-per-node", "2", "--cpus-per-task", "1")
    assert wait_done(job) == "COMPLETED", log_of(run_dir, job)[-3000:]
    assert [r["loss"] for r in records(run_dir)] == [r["loss"] for r in records(ref_dir)]


def test_sweep_with_the_submitit_launcher_runs_every_job(slurm_cluster, tmp_path):
    t0 = time.monotonic()
    proc = run_cli("train", "-m", "hydra/launcher=slurm", *TINY, "trainer.max_steps=3", "trainer.warmup_steps=0",
                   "optimizer.lr=1e-3,2e-3", f"hydra.sweep.dir={tmp_path}", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for num, lr in ((0, 1e-3), (1, 2e-3)):
        recs = records(tmp_path / str(num))
        assert [r["step"] for r in recs] == [1, 2, 3]
        assert recs[0]["lr"] == pytest.approx(lr)
    assert len(list((tmp_path / ".submitit").iterdir())) >= 2, time.monotonic() - t0
