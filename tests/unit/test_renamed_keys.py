"""Context parallelism's keys were parallel.sp / parallel.sp_impl: the new names work, and the old ones
still do for one release (command line of train, estimate, plan, submit; a checkpoint's meta.json)
with exactly one deprecation line naming old and new. These tests use the old names on purpose."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from memtrain import cli
from memtrain.config import aliases as renames
from memtrain.config.errors import to_container
from memtrain.config.loader import load_config
from memtrain.engine.checkpoint import read_meta, step_dir_name
from memtrain.engine.resume import check_resume
from memtrain.memory.estimator import estimate
from memtrain.memory.from_run import config_from_run
from memtrain.memory.planner import PlanContext, model_parallel_layouts
from tests.conftest import TINY, run_cli
from tests.unit.test_planner import TINY_PLAN

RING = [*TINY, "parallel=fsdp", "parallel.cp=2", "parallel.cp_impl=ring", "launcher.nproc_per_node=4"]
OLD_RING = [*TINY, "parallel=fsdp", "parallel.sp=2", "parallel.sp_impl=ring", "launcher.nproc_per_node=4"]


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test is a new process as far as the once-per-process deprecation line goes."""
    monkeypatch.setattr(renames, "_reported", set())
    monkeypatch.delenv("RANK", raising=False)


def deprecation_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated" in line]


def test_overrides_are_renamed_with_one_line_naming_old_and_new(capsys):
    got = renames.rename_overrides(["parallel.sp=2", "+parallel.sp_impl=ring", "~parallel.sp", "++parallel.sp=1,2",
                                    "parallel=fsdp", "parallel.tp_sp=true", "parallel.spatial=2", "--json"])
    assert got == ["parallel.cp=2", "+parallel.cp_impl=ring", "~parallel.cp", "++parallel.cp=1,2",
                   "parallel=fsdp", "parallel.tp_sp=true", "parallel.spatial=2", "--json"]
    renames.rename_overrides(["parallel.sp=4"])  # once per process
    [line] = deprecation_lines(capsys.readouterr().err)
    assert "parallel.sp is now parallel.cp" in line and "parallel.sp_impl is now parallel.cp_impl" in line


def test_new_names_and_other_ranks_print_nothing(capsys, monkeypatch):
    assert renames.rename_overrides(["parallel.cp=2", "parallel.cp_impl=ring"]) == ["parallel.cp=2", "parallel.cp_impl=ring"]
    monkeypatch.setenv("RANK", "1")
    assert renames.rename_overrides(["parallel.sp=2"]) == ["parallel.cp=2"]
    assert capsys.readouterr().err == ""


def test_a_stored_config_is_renamed():
    stored = {"parallel": {"name": "sp", "sp": 2, "sp_impl": "ring", "tp": 1}, "model": {"arch": "gpt"}}
    assert renames.rename_stored_config(stored) == {"parallel": {"name": "cp", "cp": 2, "cp_impl": "ring", "tp": 1},
                                                    "model": {"arch": "gpt"}}
    new = {"parallel": {"name": "cp", "cp": 2, "cp_impl": "ulysses"}}
    assert renames.rename_stored_config(json.loads(json.dumps(new))) == new


def test_estimate_takes_both_names(capsys):
    assert cli.main(["estimate", *RING, "--json"]) == 0
    new = capsys.readouterr()
    assert cli.main(["estimate", *OLD_RING, "--json"]) == 0
    old = capsys.readouterr()
    assert json.loads(old.out) == json.loads(new.out) and json.loads(new.out)["comm_bytes"]["cp"]["p2p_kv"] > 0
    assert deprecation_lines(new.err) == [] and len(deprecation_lines(old.err)) == 1


def test_plan_takes_the_old_name_and_prints_the_new_ones(capsys):
    assert cli.main(["plan", *TINY_PLAN, "parallel.sp=1", "--top", "2"]) == 0
    out = capsys.readouterr()
    assert "parallel.cp=1" in out.out and "parallel.sp" not in out.out
    assert len(deprecation_lines(out.err)) == 1
    # the context-parallel layouts the planner proposes (and prints for users to copy) use the new keys
    cfg = load_config(TINY)
    keys = {k for option in model_parallel_layouts(PlanContext([], cfg, 4, 1, 16), cfg) for k, _ in option.overrides
            if k.startswith("parallel.")}
    assert {"parallel.cp", "parallel.cp_impl"} <= keys and not any(".sp" in k for k in keys)


def test_a_train_sweep_hands_hydra_the_new_names(tmp_path):
    proc = run_cli("train", "-m", *TINY, "trainer.max_steps=1", "parallel.sp=1", "parallel.sp_impl=ring,ulysses",
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    jobs = [OmegaConf.load(tmp_path / str(n) / ".hydra" / "config.yaml").parallel for n in (0, 1)]
    assert [(p.cp, p.cp_impl) for p in jobs] == [(1, "ring"), (1, "ulysses")] and "sp" not in jobs[0]
    assert len(deprecation_lines(proc.stderr)) == 1, proc.stderr


def test_submit_writes_the_new_names(tmp_path, capsys):
    assert cli.main(["submit", "--dry-run", "--run-dir", str(tmp_path), "--", *TINY, "parallel.sp=1"]) == 0
    out = capsys.readouterr()
    assert '"parallel.cp=1"' in out.out and "parallel.sp=" not in out.out
    assert len(deprecation_lines(out.err)) == 1


def to_old(stored: dict) -> dict:
    """A config as the previous release stored it in meta.json: parallel.sp, parallel.sp_impl, and
    parallel.name=sp for parallel=ulysses|ring."""
    p = stored["parallel"]
    p["sp"], p["sp_impl"] = p.pop("cp"), p.pop("cp_impl")
    p["name"] = "sp" if p["name"] == "cp" else p["name"]
    return stored


def test_an_old_meta_json_estimates_and_passes_the_resume_check(tmp_path, capsys):
    ring = load_config([*TINY, "parallel=ring", "launcher.nproc_per_node=2"])
    folder = tmp_path / "checkpoints" / step_dir_name(2)
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"config": to_old(to_container(ring)), "step": 2, "updates": 2,
                                                  "skipped_steps": 0, "world_size": 2}))
    assert read_meta(folder)["config"]["parallel"]["name"] == "cp"
    assert estimate(config_from_run(tmp_path, [])) == estimate(ring)
    check_resume(folder, ring, world_size=2)  # raises CheckpointError on a mismatch
    assert len(deprecation_lines(capsys.readouterr().err)) == 1


def test_a_run_resumes_from_an_old_meta_json(compose, tmp_path, capsys, make_trainer):
    first = make_trainer(compose("trainer.max_steps=2", "trainer.save_every=2"), tmp_path / "run")
    first.fit()
    file = first.checkpointer.latest() / "meta.json"
    meta = json.loads(file.read_text())
    meta["config"] = to_old(meta["config"])
    file.write_text(json.dumps(meta))
    resumed = make_trainer(compose("trainer.max_steps=3", "trainer.resume=auto"), tmp_path / "run")
    records = resumed.fit()
    assert resumed.step == 3 and [r["step"] for r in records] == [3]
    assert len(deprecation_lines(capsys.readouterr().err)) == 1


def test_the_old_module_path_reexports_context_parallelism():
    from memtrain.distributed import context_parallel, sequence_parallel

    assert sequence_parallel.RingAttention is context_parallel.RingAttention
    assert sequence_parallel.shard_positions is context_parallel.shard_positions
