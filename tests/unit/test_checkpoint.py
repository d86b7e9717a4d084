"""DCP checkpoints: identical resume, crash-safe saves, safe loading."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from memtrain.engine.checkpoint import Checkpointer
from memtrain.safe_pickle import UnsafePickleError


def losses(records):
    return [r["loss"] for r in records]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_continues_with_identical_losses(compose, tmp_path, precision, make_trainer):
    common = [f"precision={precision}", "data=protein", "optimizer.lr=3e-3", "trainer.warmup_steps=2"]
    straight = make_trainer(compose(*common, "trainer.max_steps=8"), tmp_path / "straight").fit()

    run = tmp_path / "interrupted"
    first = make_trainer(compose(*common, "trainer.max_steps=8", "trainer.save_every=4"), run).fit(until=4)  # preempted
    assert (run / "checkpoints" / "step_00000004" / "meta.json").is_file()
    resumed = make_trainer(compose(*common, "trainer.max_steps=8", "trainer.resume=auto"), run)
    rest = resumed.fit()
    assert [r["step"] for r in rest] == [5, 6, 7, 8]
    # CPU, fixed seed, same data order, restored RNG/optimizer/scaler state: bit-identical
    assert losses(first) + losses(rest) == losses(straight)


def test_resume_from_explicit_path_restores_weights(compose, tmp_path, make_trainer):
    trainer = make_trainer(compose("trainer.max_steps=3", "trainer.save_every=3"), tmp_path)
    trainer.fit()
    path = trainer.checkpointer.latest()
    fresh = make_trainer(compose(f"trainer.resume={path}", "trainer.max_steps=3"), tmp_path / "other")
    fresh.load(path)
    assert fresh.step == 3
    for p, q in zip(trainer.model.parameters(), fresh.model.parameters()):
        assert torch.equal(p, q)


def test_keep_last_prunes_old_checkpoints(compose, tmp_path, make_trainer):
    trainer = make_trainer(compose("trainer.max_steps=6", "trainer.save_every=1", "trainer.keep_last=2"), tmp_path)
    trainer.fit()
    assert [p.name for p in trainer.checkpointer.checkpoints()] == ["step_00000005", "step_00000006"]


KILL_MID_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from torch.distributed.checkpoint import filesystem
    from memtrain.config.loader import compose_config
    from memtrain.engine.trainer import Trainer

    overrides, run = sys.argv[2:], sys.argv[1]
    trainer = Trainer(compose_config(overrides + ["trainer.max_steps=2"]), run)
    trainer.fit()
    trainer.save()  # a good checkpoint at step 2
    trainer.train_step()

    real_write = filesystem.FileSystemWriter.write_data
    def write_then_die(self, plan, planner):
        real_write(self, plan, planner).wait()  # shard files are on disk, metadata not yet
        os.kill(os.getpid(), signal.SIGKILL)
    filesystem.FileSystemWriter.write_data = write_then_die
    trainer.save()
    """
)


def test_killed_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, make_trainer):
    from tests.conftest import TINY

    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(tmp_path), *TINY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert [p.name for p in ckpt.checkpoints()] == ["step_00000002"]
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir()), "the kill hit mid-save"

    from memtrain.config.loader import compose_config

    trainer = make_trainer(compose_config([*TINY, "trainer.max_steps=4", "trainer.resume=auto"]), tmp_path)
    assert trainer.resume_path() == ckpt.latest()
    trainer.fit()
    assert trainer.step == 4


def test_loading_refuses_pickled_code_in_metadata(compose, tmp_path, make_trainer):
    trainer = make_trainer(compose("trainer.max_steps=1", "trainer.save_every=1"), tmp_path)
    trainer.fit()
    path = trainer.checkpointer.latest()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        trainer.load(path)
    assert not (tmp_path / "pwned").exists()


# -- the commit routine: a crash at any point leaves a complete checkpoint -----------------------------

from memtrain.engine import checkpoint as checkpoint_module  # noqa: E402

COMMIT_OPS = ("_write_meta", "_fsync_tree", "_fsync_dir", "_rename", "remove_checkpoint")


class Crash(Exception):
    """The process dies here: nothing after this point of the commit runs."""


def crash_at(monkeypatch, k: int | None) -> list[str]:
    """Make the k-th file-system step of the next commits raise Crash (None: count them only);
    returns the names of the steps run so far. A crash inside remove_checkpoint happens halfway:
    after meta.json is gone, before the rest of the folder is."""
    done: list[str] = []

    def wrap(name, fn):
        def step(*args, **kwargs):
            i = len(done)
            done.append(name)
            if i == k:
                if name == "remove_checkpoint":
                    (args[0] / "meta.json").unlink(missing_ok=True)
                raise Crash(name)
            return fn(*args, **kwargs)
        return step

    for name in COMMIT_OPS:
        monkeypatch.setattr(checkpoint_module, name, wrap(name, getattr(checkpoint_module, name)))
    return done


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def loads_as(reader, path):
    """The model weights stored in checkpoint `path`, loaded into `reader` (another trainer: DCP
    loads in place)."""
    state = reader.strategy.state()
    Checkpointer(path.parent).load(path, state)
    return {k: v.detach().clone() for k, v in state["model"].items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("resave", [True, False], ids=["same-step", "next-step"])
def test_a_crash_at_every_point_of_the_commit_leaves_a_complete_checkpoint(compose, tmp_path, monkeypatch, resave, make_trainer):
    """keep_last=1, the issue's setting: re-saving step 2 (a preemption on a save step) or saving
    step 3 over it. At every file-system step of the commit the process dies; a fresh look at the
    folder then finds a complete checkpoint of step 2 (old or new contents) or of step 3, loadable,
    and the next save cleans up and leaves one complete checkpoint."""
    trainer = make_trainer(compose("trainer.max_steps=10", "trainer.keep_last=1"), tmp_path / "run")
    reader = make_trainer(compose("trainer.max_steps=10"), tmp_path / "reader")
    trainer.fit(until=2)
    trainer.save()
    old = weights(trainer)
    trainer.train_step()  # new weights; saved as step 2 again, or as step 3
    if resave:
        trainer.step = 2
    new = weights(trainer)
    folder = trainer.checkpointer.folder
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)

    with monkeypatch.context() as m:
        steps = crash_at(m, None)
        trainer.save()
    assert len(steps) >= 6 and "_rename" in steps, steps
    for k in range(len(steps)):
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        with monkeypatch.context() as m:
            crash_at(m, k)
            with pytest.raises(Crash):
                trainer.save()
        latest = Checkpointer(folder).latest()
        assert latest is not None, (k, steps[k], sorted(p.name for p in folder.iterdir()))
        got = loads_as(reader, latest)
        step = json.loads((latest / "meta.json").read_text())["step"]
        assert (step, same(got, old) or same(got, new)) in ((2, True), (3, True)), (k, steps[k], latest)
        if step == 3 or not same(got, old):
            assert same(got, new)
        # the next save (here: the same step again) recovers and prunes to one complete checkpoint
        trainer.save()
        assert [p.name for p in Checkpointer(folder).checkpoints()] == [f"step_0000000{trainer.step}"]
        assert sorted(p.name for p in folder.iterdir()) == [f"step_0000000{trainer.step}"], (k, steps[k])


def test_checkpoints_fall_back_to_the_copy_set_aside_and_pruning_keeps_it(compose, tmp_path, make_trainer):
    """Between the two renames only .old-step_N is complete: latest() returns it, and pruning for
    a later save (keep_last=1) puts it back rather than deleting the last complete checkpoint."""
    trainer = make_trainer(compose("trainer.max_steps=4", "trainer.keep_last=1"), tmp_path)
    trainer.fit(until=2)
    path = trainer.save()
    aside = path.with_name(".old-" + path.name)
    path.rename(aside)
    (path.parent / ".tmp-step_00000002").mkdir()  # the new copy, never completed
    ckpt = Checkpointer(path.parent, keep_last=1)
    assert ckpt.latest() == aside
    ckpt._prune()
    assert ckpt.latest() == path and sorted(p.name for p in path.parent.iterdir()) == ["step_00000002"]


def test_step_numbers_beyond_eight_digits_sort_numerically(tmp_path):
    for step in (99_999_999, 100_000_000, 7):
        folder = tmp_path / f"step_{step:08d}"
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps({"step": step}))
    assert [p.name for p in Checkpointer(tmp_path).checkpoints()] == ["step_00000007", "step_99999999", "step_100000000"]
