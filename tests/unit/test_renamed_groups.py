"""The activation checkpointing group is `activation_checkpoint`; its old name `checkpoint` still works
for one release (command-line overrides and configs stored in older checkpoints), with one
deprecation line naming both. The old name is used on purpose throughout this file."""

from __future__ import annotations

import json

import pytest

from memtrain.config import aliases
from memtrain.config.aliases import rename_override, rename_overrides, upgrade_stored_config
from memtrain.config.errors import to_container
from memtrain.config.loader import load_config
from memtrain.engine.checkpoint import read_meta, step_dir_name
from memtrain.engine.resume import check_resume
from memtrain.memory.estimator import estimate
from memtrain.memory.from_run import config_from_run
from tests.conftest import TINY

NEW = "activation_checkpoint"


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    """Each test starts as a new process would: no deprecation line printed yet."""
    monkeypatch.setattr(aliases, "_warned", set())


def deprecation_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated" in line]


@pytest.mark.parametrize("old,new", [
    ("checkpoint=full", f"{NEW}=full"),
    ("checkpoint.every_k=3", f"{NEW}.every_k=3"),
    ("checkpoint.policy=attention", f"{NEW}.policy=attention"),
    ("+checkpoint=full", f"+{NEW}=full"),
    ("++checkpoint.mode=full", f"++{NEW}.mode=full"),
    ("~checkpoint", f"~{NEW}"),
    ("~checkpoint.policy", f"~{NEW}.policy"),
    ("checkpoint=none,full", f"{NEW}=none,full"),  # a -m sweep
])
def test_old_overrides_are_renamed(old, new):
    assert rename_override(old) == new


@pytest.mark.parametrize("other", [
    f"{NEW}=full", f"{NEW}.every_k=3", "trainer.save_every=2", "trainer.checkpoint=x", "checkpoints/step_4",
    "checkpoint", "checkpointing=full", "precision=bf16", "--from-run", "-m", "+recipe=protein_lm",
])
def test_other_arguments_are_left_alone(other, capsys):
    assert rename_override(other) == other
    assert capsys.readouterr().err == ""


def test_the_old_name_composes_the_same_config_with_one_deprecation_line(capsys):
    old = load_config([*TINY, "checkpoint=selective", "checkpoint.every_k=3"])
    again = load_config([*TINY, "checkpoint=full"])  # still one line per process
    lines = deprecation_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "`checkpoint`" in lines[0] and f"`{NEW}`" in lines[0], lines
    assert to_container(old) == to_container(load_config([*TINY, f"{NEW}=selective", f"{NEW}.every_k=3"]))
    assert "checkpoint" not in old and old[NEW].every_k == 3 and again[NEW].mode.name == "full"


def test_the_new_name_prints_nothing(capsys):
    cfg = load_config([*TINY, f"{NEW}=full"])
    assert cfg[NEW].mode.name == "full" and deprecation_lines(capsys.readouterr().err) == []


def test_only_rank0_prints_the_line(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert rename_overrides(["checkpoint=full"]) == [f"{NEW}=full"]
    assert capsys.readouterr().err == ""


def test_a_stored_config_is_upgraded_in_place():
    stored = {"model": {}, "checkpoint": {"mode": "full"}}
    assert upgrade_stored_config(stored) is stored and stored == {"model": {}, NEW: {"mode": "full"}}
    current = {NEW: {"mode": "none"}, "checkpoint": {"mode": "full"}}  # the new name wins; nothing renamed
    assert upgrade_stored_config(current)[NEW] == {"mode": "none"}
    assert upgrade_stored_config(None) is None


def to_old_format(meta_file) -> None:
    """Rewrite meta.json as the release before the rename wrote it: the group under `checkpoint`."""
    meta = json.loads(meta_file.read_text())
    meta["config"]["checkpoint"] = meta["config"].pop(NEW)
    meta_file.write_text(json.dumps(meta))


def test_an_old_format_checkpoint_resumes(compose, tmp_path, capsys, make_trainer):
    first = make_trainer(compose(f"{NEW}=full", "trainer.max_steps=2", "trainer.save_every=2"), tmp_path / "first")
    first.fit()
    path = first.checkpointer.latest()
    to_old_format(path / "meta.json")
    assert read_meta(path)["config"][NEW]["mode"] == "full"
    check_resume(path, compose(f"{NEW}=full", "trainer.max_steps=4"), world_size=1)
    second = make_trainer(compose(f"{NEW}=full", "trainer.max_steps=4", "trainer.log_every=1", f"trainer.resume={path}"),
                     tmp_path / "second")
    assert [r["step"] for r in second.fit()] == [3, 4]  # continued from the stored step 2
    assert deprecation_lines(capsys.readouterr().err) == []  # a stored config is read quietly


def test_an_old_format_checkpoint_estimates(tmp_path, capsys):
    run = [*TINY, "precision=bf16", f"{NEW}=full", "model.n_layers=3"]
    folder = tmp_path / "checkpoints" / step_dir_name(2)
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"config": to_container(load_config(run)), "step": 2, "updates": 2,
                                                  "skipped_steps": 0, "world_size": 1}))
    to_old_format(folder / "meta.json")
    assert estimate(config_from_run(tmp_path, [])) == estimate(load_config(run))
    # an old-name override on top of an old-format run
    assert estimate(config_from_run(tmp_path, ["checkpoint=none"])) == estimate(load_config([*run, f"{NEW}=none"]))
    assert len(deprecation_lines(capsys.readouterr().err)) == 1
