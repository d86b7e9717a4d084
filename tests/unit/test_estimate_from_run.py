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


def test_a_run_folder_whose_path_holds_an_equals_sign(tmp_path, run_dir, capsys):
    """Hydra's own folder names hold '=' (a sweep's override_dirname, hydra.run.dir=outputs/lr=0.1):
    --from-run takes such a folder in both forms; a word with '=' that names no folder is still
    taken for a forgotten DIR."""
    from memtrain.cli import estimate_command

    swept = tmp_path / "sweep" / "optimizer=lion,trainer.seed=1"
    swept.parent.mkdir()
    swept.mkdir()
    (swept / "checkpoints").symlink_to(run_dir / "checkpoints")
    for args in ([f"--from-run={swept}"], ["--from-run", str(swept)]):
        assert estimate_command([*args, "--json"]) == 0, args
        assert json.loads(capsys.readouterr().out)["total"] == estimate(load_config(RUN)).total
    assert estimate_command(["--from-run", "parallel=fsdp"]) == 2
    assert "--from-run needs a run folder" in capsys.readouterr().err


def test_an_option_given_twice_is_named_as_such(run_dir, tmp_path, capsys):
    from memtrain.cli import estimate_command

    for option, value in (("--from-run", str(run_dir)), ("--plot", str(tmp_path / "m.png"))):
        assert estimate_command([f"{option}={value}", option, value]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{option} is given twice" in err and "unknown option" not in err, err


@pytest.mark.parametrize("key,value,override", [
    ("precision.qat", "INT8", False), ("activation_checkpoint.mode", "Full", False),
    ("trainer.device", "CPU", True), ("precision.param_dtype", "bf16", True),
], ids=["stored-qat", "stored-ac-mode", "override-device", "override-dtype"])
def test_an_enum_name_that_is_no_member_is_named_with_its_key(run_dir, key, value, override):
    """meta.json and key=value overrides give enum values as plain names: one that names no member
    is a ConfigError naming the key and the allowed names, not a ValueError from deep in validation."""
    overrides = [f"{key}={value}"] if override else []
    if not override:
        meta = run_dir / "checkpoints" / step_dir_name(4) / "meta.json"
        record = json.loads(meta.read_text())
        group, leaf = key.split(".")
        record["config"][group][leaf] = value
        meta.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="Allowed values") as err:
        config_from_run(run_dir, overrides)
    assert err.value.key == key and repr(value) in str(err.value)


def test_an_enum_key_an_older_release_did_not_store_takes_its_default(run_dir):
    meta = run_dir / "checkpoints" / step_dir_name(4) / "meta.json"
    record = json.loads(meta.read_text())
    del record["config"]["trainer"]["init_device"], record["config"]["data"]["template_source"]
    meta.write_text(json.dumps(record))
    assert estimate(config_from_run(run_dir, [])) == estimate(load_config(RUN))
