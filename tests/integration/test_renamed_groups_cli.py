"""The renamed activation checkpointing group on the command line: `activation_checkpoint` everywhere,
and the old name `checkpoint` (used on purpose here) still accepted by every command that takes
overrides, with exactly one deprecation line naming both."""

from __future__ import annotations

import json

import pytest
import yaml

from memtrain import cli
from tests.conftest import TINY, run_cli

from tests.unit.test_renamed_groups import NEW, _fresh_process, deprecation_lines  # noqa: F401 (an autouse fixture)


def one_deprecation_line(err: str) -> None:
    lines = deprecation_lines(err)
    assert len(lines) == 1 and "`checkpoint`" in lines[0] and f"`{NEW}`" in lines[0], err


def test_help_lists_the_new_group(capsys):
    assert cli.main(["--help"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(r.split()[:1] == [f"{NEW}:"] and "selective" in r for r in rows)
    assert not any(r.split()[:1] == ["checkpoint:"] for r in rows)


def test_estimate_with_the_old_name(capsys):
    assert cli.main(["estimate", *TINY, "checkpoint=selective", "checkpoint.every_k=1", "--json"]) == 0
    captured = capsys.readouterr()
    one_deprecation_line(captured.err)
    old = json.loads(captured.out)
    assert cli.main(["estimate", *TINY, f"{NEW}=selective", f"{NEW}.every_k=1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == old and deprecation_lines(captured.err) == []


def test_plan_prints_overrides_with_the_new_name(capsys):
    plan = [*TINY, "precision=fp32", "optimizer=adamw", "hardware.gpus=1", "hardware.gpu_mem_gb=1"]
    assert cli.main(["plan", *plan, "checkpoint=full", "--json", "--top", "2"]) == 0
    captured = capsys.readouterr()
    one_deprecation_line(captured.err)
    commands = [row["command"] for row in json.loads(captured.out)["rows"]]
    assert commands and all(f" {NEW}=full" in c and " checkpoint=" not in c for c in commands), commands


def test_submit_dry_run_with_the_old_name(tmp_path, capsys):
    assert cli.main(["submit", "--dry-run", "--run-dir", str(tmp_path), "--", *TINY, "checkpoint=full"]) == 0
    captured = capsys.readouterr()
    one_deprecation_line(captured.err)
    assert f"{NEW}=full" in captured.out and " checkpoint=full" not in captured.out


def test_train_sweep_with_the_old_name_through_hydra(tmp_path):
    proc = run_cli("train", "-m", *TINY, "trainer.max_steps=1", "checkpoint=none,full", "checkpoint.every_k=1",
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    one_deprecation_line(proc.stderr)
    for job, mode in (("0", "none"), ("1", "full")):
        stored = yaml.safe_load((tmp_path / job / ".hydra" / "config.yaml").read_text())
        assert "checkpoint" not in stored and stored[NEW]["mode"] == mode and stored[NEW]["every_k"] == 1
        overrides = yaml.safe_load((tmp_path / job / ".hydra" / "overrides.yaml").read_text())
        assert f"{NEW}={mode}" in overrides and not any(o.startswith("checkpoint") for o in overrides)


def test_train_with_the_new_name(tmp_path):
    proc = run_cli("train", *TINY, "trainer.max_steps=1", f"{NEW}=full", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert deprecation_lines(proc.stderr) == [] and f"{NEW}=full" in proc.stdout  # the startup line's choices
