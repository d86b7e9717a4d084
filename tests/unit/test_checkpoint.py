"""DCP checkpoints: identical resume, crash-safe saves, safe loading."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from memtrain.engine.checkpoint import Checkpointer, CheckpointError
from memtrain.engine.trainer import Trainer


def losses(records):
    return [r["loss"] for r in records]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_continues_with_identical_losses(compose, tmp_path, precision):
    common = [f"precision={precision}", "data=protein", "optimizer.lr=3e-3", "trainer.warmup_steps=2"]
    straight = Trainer(compose(*common, "trainer.max_steps=8"), tmp_path / "straight").fit()

    run = tmp_path / "interrupted"
    first = Trainer(compose(*common, "trainer.max_steps=8", "trainer.save_every=4"), run).fit(until=4)  # preempted
    assert (run / "checkpoints" / "step_00000004" / "meta.json").is_file()
    resumed = Trainer(compose(*common, "trainer.max_steps=8", "trainer.resume=auto"), run)
    rest = resumed.fit()
    assert [r["step"] for r in rest] == [5, 6, 7, 8]
    # CPU, fixed seed, same data order, restored RNG/optimizer/scaler state: bit-identical
    assert losses(first) + losses(rest) == losses(straight)


def test_resume_from_explicit_path_restores_weights(compose, tmp_path):
    trainer = Trainer(compose("trainer.max_steps=3", "trainer.save_every=3"), tmp_path)
    trainer.fit()
    path = trainer.checkpointer.latest()
    fresh = Trainer(compose(f"trainer.resume={path}", "trainer.max_steps=3"), tmp_path / "other")
    fresh.load(path)
    assert fresh.step == 3
    for p, q in zip(trainer.model.parameters(), fresh.model.parameters()):
        assert torch.equal(p, q)


def test_keep_last_prunes_old_checkpoints(compose, tmp_path):
    trainer = Trainer(compose("trainer.max_steps=6", "trainer.save_every=1", "trainer.keep_last=2"), tmp_path)
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


def test_killed_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    from tests.conftest import TINY

    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(tmp_path), *TINY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert [p.name for p in ckpt.checkpoints()] == ["step_00000002"]
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir()), "the kill hit mid-save"

    from memtrain.config.loader import compose_config

    trainer = Trainer(compose_config([*TINY, "trainer.max_steps=4", "trainer.resume=auto"]), tmp_path)
    assert trainer.resume_path() == ckpt.latest()
    trainer.fit()
    assert trainer.step == 4


def test_loading_refuses_pickled_code_in_metadata(compose, tmp_path):
    trainer = Trainer(compose("trainer.max_steps=1", "trainer.save_every=1"), tmp_path)
    trainer.fit()
    path = trainer.checkpointer.latest()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="refusing to load"):
        trainer.load(path)
    assert not (tmp_path / "pwned").exists()
