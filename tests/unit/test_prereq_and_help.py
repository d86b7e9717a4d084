"""What a run needs from this machine (memtrain.prereq), checked before any worker starts; the
commands' help; and that help and config errors answer without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memtrain import cli, prereq
from memtrain.config.loader import compose_config
from tests.conftest import REPO, TINY


def test_estimate_of_a_multi_node_layout_needs_no_rendezvous(capsys):
    # the ZeRO paper's 64 devices: 8 nodes of 8, with no launcher.rdzv_endpoint
    assert cli.main(["estimate", *TINY, "parallel=zero2", "launcher.nproc_per_node=8", "launcher.nnodes=8", "--json"]) == 0
    assert '"total"' in capsys.readouterr().out


def test_training_on_several_nodes_needs_a_rendezvous():
    cfg = compose_config([*TINY, "parallel=ddp", "launcher.nproc_per_node=2", "launcher.nnodes=2"])
    with pytest.raises(prereq.PrerequisiteError, match="launcher.rdzv_endpoint=HOST:PORT"):
        prereq.check_runs_here(cfg)
    prereq.check_runs_here(compose_config([*TINY, "parallel=ddp", "launcher.nproc_per_node=2", "launcher.nnodes=2",
                                           "launcher.rdzv_endpoint=head:29500"]))


def test_nvme_offload_needs_libaio_and_its_folder(tmp_path, monkeypatch):
    cfg = compose_config([*TINY, "parallel=zero3", "offload=nvme", f"offload.nvme_path={tmp_path / 'swap'}"])
    if prereq.libaio_missing() is None:
        prereq.check_runs_here(cfg)  # the folder's parent exists and is writable
    monkeypatch.setattr(prereq.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(prereq.PrerequisiteError, match="apt-get install libaio-dev"):
        prereq.check_runs_here(cfg)
    monkeypatch.undo()
    if prereq.libaio_missing() is None:
        missing = compose_config([*TINY, "parallel=zero3", "offload=nvme", "offload.nvme_path=/no/such/drive/swap"])
        with pytest.raises(prereq.PrerequisiteError, match="offload.nvme_path=/no/such/drive/swap.*does not exist"):
            prereq.check_runs_here(missing)


def test_a_gpu_sized_run_is_refused_on_a_cpu_unless_asked_for(monkeypatch):
    monkeypatch.setattr(prereq, "_cuda_available", lambda: False)
    with pytest.raises(prereq.PrerequisiteError, match="GPU-sized .* trainer.device=cpu"):
        prereq.check_runs_here(compose_config(["+recipe=alphafold"]))
    prereq.check_runs_here(compose_config(["+recipe=alphafold", "trainer.device=cpu"]))  # asked for: runs
    prereq.check_runs_here(compose_config([]))  # the small default
    prereq.check_runs_here(compose_config(["+recipe=protein_lm"]))  # about 1 TFLOP per step: slow, not refused
    assert prereq.step_flops(compose_config(["+recipe=alphafold"])) > prereq.CPU_FLOPS_PER_STEP_LIMIT


def _fake_slurm(folder: Path, ping_output: str, code: int) -> str:
    folder.mkdir()
    for name, body in (("sbatch", "echo 1"), ("scontrol", f"echo '{ping_output}'; exit {code}")):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_slurm_reachability(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path / "down", "Slurmctld(primary) at head is DOWN", 1))
    assert "is DOWN" in prereq.slurm_unreachable()
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path / "up", "Slurmctld(primary) at head is UP", 0))
    assert prereq.slurm_unreachable() is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "not installed" in prereq.slurm_unreachable()


def test_submit_without_slurm_refuses_before_writing_the_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path / "bin", "Slurmctld(primary) at head is DOWN", 1))
    run_dir = tmp_path / "run"
    assert cli.main(["submit", "--run-dir", str(run_dir), "--", *TINY]) == 2
    err = capsys.readouterr().err
    assert "no Slurm controller is reachable" in err and "--dry-run" in err and "Traceback" not in err
    assert not run_dir.exists()
    assert cli.main(["submit", "--dry-run", "--run-dir", str(run_dir), "--", *TINY]) == 0


def test_slurm_launcher_without_slurm_refuses_before_hydra(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path / "bin", "Slurmctld(primary) at head is DOWN", 1))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "-m", "hydra/launcher=slurm", *TINY, "optimizer.lr=1e-3,3e-4"]) == 2
    assert "hydra/launcher=slurm needs a Slurm cluster" in capsys.readouterr().err
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("command", ["train", "estimate", "plan", "export"])
def test_each_command_has_its_own_help(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: memtrain {command}")
    assert "schema/" not in out and len(out.splitlines()) < 40


def test_top_level_help_lists_every_group_and_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("train", "estimate", "plan", "export", "submit", "launcher:", "hardware:", "+recipe=",
                 "hydra/launcher=", "alphafold_tiny", "zero3"):
        assert word in out, word


def test_help_and_a_config_typo_answer_without_importing_torch():
    code = ("import sys; from memtrain import cli\n"
            "assert cli.main(['train', '--help']) == 0 and cli.main(['estimate', '-h']) == 0\n"
            "assert cli.main(['train', 'traner.max_steps=3']) == 2\n"
            "assert cli.main(['train', 'model=gpt_huge']) == 2\n"
            "heavy = [m for m in ('torch', 'deepspeed', 'triton', 'xarray', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unknown key 'traner'" in proc.stderr and "unknown option 'gpt_huge'" in proc.stderr


def test_gpu_benchmark_guard_refuses_at_once_without_cuda(monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    try:
        from gpu_only import require_cuda
    finally:
        sys.path.pop(0)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        require_cuda("weather_step.py", "--smoke")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no CUDA device is visible" in err and "weather_step.py --smoke" in err
