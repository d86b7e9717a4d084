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

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# protein sequences: learnable (the synthetic tokens are uniform noise)
# a value no shell may touch: spaces, both quotes, $, ;, a backtick command and a newline
NASTY = "a b'c\"$HOME;`touch /tmp/memtrain-pwned`\nd"
NASTY_OVERRIDE = "offload.nvme_path='" + NASTY.replace("'", "\\'") + "'"
STEPS = 24
# a constant learning rate: the losses of the first N steps do not depend on trainer.max_steps
COMMON = [*TINY, "data=protein", "parallel=ddp", "trainer.micro_batch_size=2", f"trainer.max_steps={STEPS}",
          "trainer.warmup_steps=0", "trainer.lr_schedule=constant", "optimizer.lr=1e-2", NASTY_OVERRIDE]
UNREACHABLE = 10**7  # steps: days on this machine; a job with it is still training when it is signalled


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


def scontrol(*args: str) -> None:
    proc = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"scontrol {' '.join(args)}: {proc.stderr.strip()}"


def test_sigusr1_checkpoints_requeues_and_resumes_without_losing_a_step(reference, tmp_path):
    """The job cannot finish before the signal (its step count is unreachable), so the signal
    never races the end of the run. Once it stopped (its marker names the step), the requeued job
    is held while its step count is set to one it can reach, then released to resume."""
    ref_dir, _ = reference
    run_dir = tmp_path / "preempted"
    overrides = [o for o in COMMON if not o.startswith("trainer.max_steps=")]
    job = submit(run_dir, "--nproc-per-node", "2", overrides=[*overrides, f"trainer.max_steps={UNREACHABLE}"])
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() and len(records(run_dir)) >= 3, 300,
               "the first steps")
    # what `#SBATCH --signal=USR1@N` sends before the time limit: SIGUSR1 to every process of the steps
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    marker = run_dir / "slurm" / "preempted"
    wait_until(lambda: marker.exists() and marker.read_text().strip(), 300, "the trainer to stop and checkpoint")
    stopped = int(marker.read_text())
    # requeued by the batch script: pending again, with Slurm's delay before a requeued job starts
    wait_until(lambda: int(job_fields(job).get("Restarts", "0")) >= 1 and job_fields(job).get("JobState") == "PENDING",
               300, "the job to be requeued")
    scontrol("hold", job)  # fails if it already started (its overrides would then be the unreachable ones)
    final = max(STEPS, stopped + 4)  # at least 4 steps after the resume
    (run_dir / "slurm" / "overrides.json").write_text(json.dumps([*overrides, f"trainer.max_steps={final}"]))
    scontrol("release", job)
    # skip most of the requeue delay, not all of it: slurmd refuses ("Job credential revoked") a
    # requeued job that starts within the second its previous credential was revoked in
    scontrol("update", f"JobId={job}", "StartTime=now+3")
    assert wait_done(job, timeout=600) == "COMPLETED", log_of(run_dir, job)[-3000:]
    log = log_of(run_dir, job)
    assert "requeueing job" in log and "(restart 1)" in log and "resumed from" in log, log[-3000:]
    assert f"stopped at step {stopped};" in log, log[-3000:]
    assert stopped >= 3
    recs = records(run_dir)
    assert [r["step"] for r in recs] == list(range(1, final + 1))  # each step exactly once
    if final == STEPS:
        expected = [r["loss"] for r in records(ref_dir)]
    else:  # it stopped late: an uninterrupted run as long as this one
        long_dir = tmp_path / "uninterrupted"
        long_job = submit(long_dir, "--nproc-per-node", "2", overrides=[*overrides, f"trainer.max_steps={final}"])
        assert wait_done(long_job) == "COMPLETED", log_of(long_dir, long_job)[-3000:]
        expected = [r["loss"] for r in records(long_dir)]
    # same ranks, same order of operations, state restored from the checkpoint: identical losses
    assert [r["loss"] for r in recs] == expected


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
