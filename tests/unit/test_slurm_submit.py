"""The batch script `memtrain submit` writes, how overrides travel (a JSON file, never the shell),
what a job's ranks run, and srun's environment; no Slurm needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from memtrain.distributed.launch import adopt_slurm_env
from memtrain.engine import preemption
from memtrain.slurm.job import job_overrides
from memtrain.slurm.submit import JobSpec, SubmitError, batch_script, spec_from_args, parser, split_argv, write_job
from tests.conftest import TINY, run_cli

NASTY = ["offload.nvme_path='a b\\'c\"$HOME;`touch /tmp/x`\nd'", "trainer.max_steps=3", "x=$(reboot)"]


def test_batch_script_is_valid_bash_with_one_agent_per_node_and_rendezvous_on_the_first_node(tmp_path):
    spec = JobSpec(run_dir=tmp_path / "run", nodes=4, gpus_per_node=8, nproc_per_node=8, cpus_per_task=64,
                   time="12:00:00", partition="gpu", account="proj", job_name="af2")
    script = batch_script(spec)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=64", "#SBATCH --time=12:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj", "#SBATCH --requeue", "#SBATCH --signal=USR1@120",
                 f"#SBATCH --output={tmp_path}/run/slurm/af2-%j.out",
                 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
                 "--nnodes=4 --nproc-per-node=8", '--rdzv-backend=c10d --rdzv-endpoint="$head_node:$port"',
                 'scontrol requeue "$SLURM_JOB_ID"']:
        assert line in script, line
    assert "threads=$(( ${SLURM_CPUS_PER_TASK:-8} / 8 ))" in script  # 64 CPUs / 8 ranks


def test_srun_launcher_runs_one_task_per_rank(tmp_path):
    script = batch_script(JobSpec(run_dir=tmp_path, nodes=2, nproc_per_node=4, launcher="srun"))
    assert "#SBATCH --ntasks-per-node=4" in script and "torch" not in script and "agent" not in script
    assert 'export MASTER_ADDR="$head_node"' in script


def test_overrides_go_to_a_json_file_and_never_into_the_script(tmp_path):
    spec = JobSpec(run_dir=tmp_path / "run")
    script_path = write_job(spec, NASTY)
    assert json.loads((tmp_path / "run" / "slurm" / "overrides.json").read_text()) == NASTY
    script = script_path.read_text()
    assert "reboot" not in script and "touch" not in script and "HOME;" not in script


def test_the_job_hands_the_overrides_over_verbatim_and_resumes(tmp_path):
    write_job(JobSpec(run_dir=tmp_path), NASTY)
    first = job_overrides(tmp_path, {"RANK": "0"})
    assert first == [*NASTY, f"hydra.run.dir={tmp_path}", "trainer.resume=auto"]
    other_rank = job_overrides(tmp_path, {"RANK": "1"})
    assert "hydra.output_subdir=null" in other_rank
    write_job(JobSpec(run_dir=tmp_path), ["trainer.resume=/ckpt/step_00000010"])
    assert job_overrides(tmp_path, {})[-1] == f"hydra.run.dir={tmp_path}"  # the user's checkpoint first
    assert job_overrides(tmp_path, {"SLURM_RESTART_COUNT": "1"})[-1] == "trainer.resume=auto"  # requeued: own checkpoint


@pytest.mark.parametrize("option,value", [("--job-name", "a b"), ("--partition", "gpu;rm"), ("--time", "1h"),
                                          ("--run-dir", "/tmp/a b"), ("--account", "$(x)")])
def test_values_sbatch_would_misread_are_refused(option, value):
    with pytest.raises(SubmitError, match=option):
        spec_from_args(parser().parse_args([option, value])).check()


@pytest.mark.slow  # two command-line runs
def test_dry_run_prints_the_script_and_bad_configs_are_refused_before_submitting(tmp_path):
    proc = run_cli("submit", "--dry-run", "--run-dir", str(tmp_path), "--nproc-per-node", "2", "--",
                   *TINY, "parallel=ddp", NASTY[0])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash") and not (tmp_path / "slurm").exists()
    bad = run_cli("submit", "--dry-run", "--nproc-per-node", "2", "--", *TINY, "parallel=single")
    assert bad.returncode == 2 and "world size" in bad.stderr


def test_split_argv_keeps_everything_after_the_separator():
    assert split_argv(["--nodes", "2", "--", "--dry-run", "a=b c"]) == (["--nodes", "2"], ["--dry-run", "a=b c"])


def test_srun_task_environment_is_adopted_but_not_the_batch_shell(monkeypatch):
    batch_shell = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7"}
    adopt_slurm_env(batch_shell)
    assert "RANK" not in batch_shell  # a bare `memtrain train` in the batch script is one process
    task = {"SLURM_PROCID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_ID": "0",
            "SLURM_LOCALID": "1", "SLURM_JOB_ID": "20007", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "MASTER_ADDR": "n1"}
    adopt_slurm_env(task)
    assert (task["RANK"], task["WORLD_SIZE"], task["LOCAL_RANK"], task["MASTER_PORT"], task["LOCAL_WORLD_SIZE"]) == (
        "1", "4", "1", "20007", "2")


def test_a_signal_only_sets_the_flag_and_stop_is_recorded(tmp_path, monkeypatch):
    import torch

    old = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    monkeypatch.setattr(preemption, "_received", [])
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    p = preemption.Preemption(torch.device("cpu"))
    with p.catching():
        assert not p.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert p.should_stop() and preemption.received() == signal.SIGUSR1
        p.stopped(tmp_path, 7, is_main=True)
        assert preemption.marker_path(tmp_path).read_text() == "7\n"
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == old  # the handlers are restored
    assert not preemption.Preemption(torch.device("cpu"), enabled=False).should_stop()
    assert Path(preemption.marker_path(tmp_path)).parent.name == "slurm"
