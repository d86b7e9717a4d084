"""`memtrain estimate --from-run`: a checkpointed run's stored config, with overrides on top."""

from __future__ import annotations

import json

import pytest

from memtrain.config.errors import ConfigError, to_container
from memtrain.config.loader import load_config
from memtrain.engine.checkpoint import step_dir_name
from memtrain.memory.estimator import estimate
from memtrain.memory.from_run import checkpoint_folder, config_from_run
from tests.conftest import TINY

RUN = [*TINY, "precision=bf16", "activation_checkpoint=full", "model.n_layers=3"]  # what the "run" was started with


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as memtrain train leaves it: checkpoints/step_<N>/meta.json with the resolved config."""
    for step in (2, 4):
        folder = tmp_path / "checkpoints" / step_dir_name(step)
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"config": to_container(load_config(RUN)), "step": step,
                                                      "updates": step, "skipped_steps": 0, "world_size": 1}))
    return tmp_path


def test_the_stored_config_estimates_as_the_run_did(run_dir):
    assert checkpoint_folder(run_dir).name == step_dir_name(4)  # the newest
    assert checkpoint_folder(run_dir / "checkpoints" / step_dir_name(2)).name == step_dir_name(2)
    assert estimate(config_from_run(run_dir, [])) == estimate(load_config(RUN))


def test_overrides_change_the_run(run_dir):
    # "what would this run need with parallel=fsdp on 2 ranks, 8 layers": a group swapped, keys set
    changed = ["parallel=fsdp", "launcher.nproc_per_node=2", "model.n_layers=8"]
    got = estimate(config_from_run(run_dir, changed))
    want = estimate(load_config([*RUN, *changed]))
    assert got == want and got.world_size == 2 and got.gathered > 0


def test_bad_runs_and_overrides_are_named(tmp_path, run_dir):
    with pytest.raises(ConfigError, match="no checkpoint found"):
        config_from_run(tmp_path / "nothing", [])
    with pytest.raises(ConfigError, match="no key"):
        config_from_run(run_dir, ["trainer.no_such_key=1"])
    with pytest.raises(ConfigError, match="recipes"):
        config_from_run(run_dir, ["+recipe=protein_lm"])


def test_the_command_line(run_dir, capsys):
    from memtrain.cli import estimate_command

    assert estimate_command(["--from-run", str(run_dir), "parallel=zero2", "launcher.nproc_per_node=2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["world_size"] == 2 and out["total"] == estimate(
        load_config([*RUN, "parallel=zero2", "launcher.nproc_per_node=2"])).total
    # --from-run=DIR is the same option
    assert estimate_command([f"--from-run={run_dir}", "parallel=zero2", "launcher.nproc_per_node=2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == out


def test_trainer_resume_names_the_run_as_from_run_does(run_dir, capsys):
    from memtrain.cli import estimate_command

    step2 = run_dir / "checkpoints" / step_dir_name(2)
    assert estimate_command([f"trainer.resume={step2}", "parallel=fsdp", "launcher.nproc_per_node=2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["world_size"] == 2 and out["total"] == estimate(
        load_config([*RUN, "parallel=fsdp", "launcher.nproc_per_node=2"])).total
    # named twice: refused (exit 2) rather than one silently winning
    assert estimate_command(["--from-run", str(run_dir), f"trainer.resume={step2}"]) == 2


def test_trainer_resume_takes_what_train_takes(run_dir):
    """trainer.resume names a checkpoint folder (step_<N>/), as train reads it; a run folder is
    --from-run's, so a value estimate accepts is one train accepts too."""
    from memtrain.cli import estimate_command

    assert estimate_command([f"trainer.resume={run_dir}"]) == 2
    assert estimate_command(["--from-run", str(run_dir)]) == 0


@pytest.mark.parametrize("edit,words", [
    (lambda c: c.update(model={"x": 1}), "names no model.arch"),
    (lambda c: c.pop("hardware"), "no hardware group"),
    (lambda c: c["trainer"].update(micro_batch_size="${oops}"), "oops"),
    (lambda c: c["model"].update(d_model=8), "d_model"),
    (lambda c: c["model"].update(_target_="os.system"), "_target_"),
], ids=["no-arch", "no-group", "interpolation", "unknown-key", "target"])
def test_an_edited_stored_config_is_refused_naming_the_file(run_dir, edit, words):
    """A meta.json config edited by hand or written by another tool is checked as a composed config
    would be (groups, the family's schema, interpolations): one ConfigError naming the file."""
    meta = run_dir / "checkpoints" / step_dir_name(4) / "meta.json"
    record = json.loads(meta.read_text())
    edit(record["config"])
    meta.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="--from-run") as err:
        config_from_run(run_dir, [])
    assert str(meta) in str(err.value) and words in str(err.value)
