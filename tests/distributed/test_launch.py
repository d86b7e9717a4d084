"""memtrain's own launcher (torch elastic agent) end to end: workers join, train, checkpoint per
rank and resume; bad meshes and combinations are refused before any worker starts."""

from __future__ import annotations

import json

import pytest

from memtrain import cli
from memtrain.distributed.launch import adopt_slurm_env
from tests.conftest import TINY, run_cli

COMMON = [*TINY, "trainer.max_steps=6", "trainer.warmup_steps=0", "optimizer.lr=1e-2"]


def losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def train(run_dir, *overrides):
    proc = run_cli("train", *COMMON, *overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return losses(run_dir)


@pytest.mark.multiprocess
@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_launched_workers_match_single_and_resume_identically(parallel, tmp_path):
    single = train(tmp_path / "single", "trainer.micro_batch_size=8")
    two = [f"parallel={parallel}", "launcher.nproc_per_node=2", "trainer.micro_batch_size=4"]
    straight = train(tmp_path / "straight", *two, "trainer.save_every=3", "trainer.keep_last=0")
    # fp32, 2 ranks: gradients averaged in another order than one rank's sum (round-off only)
    assert straight == pytest.approx(single, rel=1e-5)

    ckpt = tmp_path / "straight" / "checkpoints" / "step_00000003"
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard per rank
    resumed = train(tmp_path / "resumed", *two, f"trainer.resume={ckpt}")
    assert resumed == straight[3:]  # same ranks, same order of operations: bit-identical


@pytest.mark.parametrize(
    "args,words",
    [
        (["parallel=hsdp", "parallel.dp_replicate=2", "launcher.nproc_per_node=3"], ["parallel.dp_shard", "world size 3"]),
        (["parallel=single", "launcher.nproc_per_node=2"], ["parallel", "world size", "is 2"]),
        (["parallel=ddp", "offload=params_cpu", "launcher.nproc_per_node=2"], ["offload", "params_cpu", "fsdp, hsdp, zero3"]),
        (["parallel=fsdp", "offload=nvme", "launcher.nproc_per_node=2"], ["offload", "nvme", "zero3"]),
        (["parallel=ddp", "parallel.tp=2", "launcher.nproc_per_node=2"], ["parallel.tp", "composes with parallel=tp, fsdp or hsdp"]),
    ],
)
def test_bad_mesh_or_combination_is_refused_before_any_worker_starts(tmp_path, capsys, args, words):
    # in this process (the command line's own entry point): a run that got past the check would
    # start the workers from here and return 0; tests/integration/test_cli.py covers the shell
    assert cli.main(["train", *TINY, *args, f"hydra.run.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err and not (tmp_path / "metrics.jsonl").exists()


def test_srun_environment_is_adopted():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1234",
           "MASTER_ADDR": "node7"}
    adopt_slurm_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == (
        "3", "4", "1", "node7", "21234")
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "5", "SLURM_NTASKS": "8"}
    adopt_slurm_env(torchrun)
    assert torchrun["RANK"] == "0"  # torchrun's own variables win
