"""Nothing read from disk can run code: every loader refuses crafted pickles (a dotted name reached
by attribute walk, builtins.getattr/__import__ chains, a __reduce__ of os.system, a DCP byte item)
with one paragraph naming the file, and the payload's marker file is never created. Each payload is
first shown to run under the standard unpickler, so these tests fail if a loader falls back to it."""

from __future__ import annotations

import io
import json
import pickle
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from memtrain.engine.checkpoint import Checkpointer, CheckpointError, read_meta
from memtrain.engine.trainer import Trainer
from memtrain.errors import UserError
from memtrain.safe_pickle import CorruptFileError, SafeUnpickler, UnsafePickleError, load_pickle, torch_load
from tests.payloads import FORMS, _RunsCommand, assert_runs_code, torch_file_with_pickle, touch


def one_paragraph(exc: BaseException, names: str) -> str:
    text = str(exc)
    assert "\n" not in text and names in text, text
    return text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real one-step DCP checkpoint of the tiny model (copied by each test before it is edited)."""
    from memtrain.config.loader import compose_config
    from tests.conftest import TINY

    run = tmp_path_factory.mktemp("run")
    with Trainer(compose_config([*TINY, "trainer.max_steps=1", "trainer.save_every=1"]), run) as trainer:
        trainer.fit()
    return trainer.checkpointer.latest()


def copy_of(checkpoint, tmp_path):
    target = tmp_path / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, target)
    return target


def resuming_trainer(make_trainer, path, tmp_path):
    from memtrain.config.loader import compose_config
    from tests.conftest import TINY

    return make_trainer(compose_config([*TINY, "trainer.max_steps=2", f"trainer.resume={path}"]), tmp_path / "resumed")


# -- DCP metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_dcp_metadata_payload_is_refused(form, checkpoint, tmp_path, make_trainer):
    marker = tmp_path / "marker"
    payload = FORMS[form](touch(marker))
    assert_runs_code(payload, marker)
    path = copy_of(checkpoint, tmp_path)
    (path / ".metadata").write_bytes(payload)
    trainer = resuming_trainer(make_trainer, path, tmp_path)  # the meta.json still matches: the load reaches .metadata
    with pytest.raises(UnsafePickleError) as info:
        trainer.load(path)
    one_paragraph(info.value, str(path / ".metadata"))
    assert "refusing to load" in str(info.value)
    assert not marker.exists()


def test_dcp_byte_item_payload_is_refused(checkpoint, tmp_path, make_trainer):
    """A byte item (DCP unpickles these with torch.load(weights_only=False) by default) holding a
    __reduce__ of os.system, in place of an optimizer hyper-parameter."""
    marker = tmp_path / "marker"
    trainer = resuming_trainer(make_trainer, checkpoint, tmp_path)
    state = trainer.strategy.state()
    state["optimizer"]["param_groups"][0]["lr"] = _RunsCommand(touch(marker))
    crafted = Checkpointer(tmp_path / "crafted").save(1, state, read_meta(checkpoint))
    # torch's own planner would run it
    plain = trainer.strategy.state()
    with pytest.warns(UserWarning):
        dcp.load(plain, storage_reader=FileSystemReader(crafted), no_dist=True)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafePickleError) as info:
        trainer.load(crafted)
    text = one_paragraph(info.value, str(crafted / "__0_0.distcp"))
    assert "optimizer.param_groups" in text
    assert not marker.exists()


def test_dcp_metadata_allow_list_names_exact_top_level_classes():
    from memtrain.engine.checkpoint import DCP_METADATA_NAMES

    assert all("." not in name for _, name in DCP_METADATA_NAMES)
    with pytest.raises(ValueError, match="top-level"):
        SafeUnpickler(io.BytesIO(), {("torch.distributed.checkpoint.metadata", "os.system"): None}, "x")


# -- torch.save files: DeepSpeed's checkpoint files, exported weights --------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_deepspeed_checkpoint_file_payload_is_refused(form, tmp_path):
    pytest.importorskip("deepspeed")
    from memtrain.distributed.zero import load_checkpoint_file

    marker = tmp_path / "marker"
    payload = FORMS[form](touch(marker))
    file = tmp_path / "mp_rank_00_model_states.pt"
    file.write_bytes(torch_file_with_pickle(payload))
    torch.load(file, weights_only=False)  # what DeepSpeed's own checkpoint engine does: runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafePickleError) as info:
        load_checkpoint_file(file)
    one_paragraph(info.value, str(file))
    assert not marker.exists()


@pytest.mark.parametrize("form", FORMS)
def test_exported_weights_payload_is_refused(form, tmp_path):
    from memtrain.precision.export import load_quantized

    marker = tmp_path / "marker"
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format_version": 1, "config": {}}))
    (folder / "weights.pt").write_bytes(torch_file_with_pickle(FORMS[form](touch(marker))))
    with pytest.raises(UnsafePickleError) as info:
        load_quantized(folder)
    one_paragraph(info.value, str(folder / "weights.pt"))
    assert not marker.exists()


def test_torch_load_keeps_the_allowed_globals_exact(tmp_path):
    """An allow-listed class is accepted, a payload next to it is not."""
    file = tmp_path / "x.pt"
    torch.save({"shape": torch.Size([2, 3]), "t": torch.ones(2)}, file)
    assert torch_load(file, [torch.Size])["shape"] == torch.Size([2, 3])
    file.write_bytes(torch_file_with_pickle(pickle.dumps({"ok": torch.Size([1]), "x": _RunsCommand("true")}, protocol=2)))
    with pytest.raises(UnsafePickleError):
        torch_load(file, [torch.Size])


# -- damaged files: one paragraph, no traceback material ----------------------------------------------


def test_garbage_and_truncated_pickles_are_corrupt_file_errors(tmp_path):
    file = tmp_path / "f.pkl"
    for data in (b"garbage" * 20, pickle.dumps({"a": list(range(100))})[:-7], b""):
        file.write_bytes(data)
        with open(file, "rb") as stream, pytest.raises(CorruptFileError) as info:
            load_pickle(stream, {}, str(file))
        one_paragraph(info.value, str(file))
        assert isinstance(info.value, UserError)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"step": "three"}', b"\xff\xfe\x00"])
def test_garbage_meta_json_names_the_file(content, tmp_path):
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_meta(tmp_path)
    one_paragraph(info.value, str(tmp_path / "meta.json"))


# -- what a loadable .metadata may point at ------------------------------------------------------------


def rewritten_metadata(path, edit):
    """Re-pickle the checkpoint's (safely read) metadata after `edit(metadata)`: only allowed classes."""
    from memtrain.engine.checkpoint import DCP_METADATA_NAMES, load_pickle

    with open(path / ".metadata", "rb") as stream:
        metadata = load_pickle(stream, DCP_METADATA_NAMES, "x")
    edit(metadata)
    (path / ".metadata").write_bytes(pickle.dumps(metadata))


@pytest.mark.parametrize("where, words", [
    ("../../../etc/passwd", "shard location"),
    ("/dev/zero", "shard location"),
    ("huge", "is shorter"),
])
def test_metadata_cannot_send_reads_outside_the_shards(where, words, checkpoint, tmp_path, make_trainer):
    """A .metadata made only of allowed classes can still name where the shards are: a path out
    of the folder, a device file, or a length past the file's end are refused before DCP reads."""
    path = copy_of(checkpoint, tmp_path)

    def edit(metadata):
        for info in metadata.storage_data.values():
            if where == "huge":
                info.length = 2**40
            else:
                info.relative_path = where

    rewritten_metadata(path, edit)
    with pytest.raises(CheckpointError, match=words):
        resuming_trainer(make_trainer, path, tmp_path).load(path)


def test_an_oversized_or_special_meta_json_is_refused(tmp_path):
    (tmp_path / "meta.json").write_bytes(b" " * (17 * 2**20))
    with pytest.raises(CheckpointError, match="larger than"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").unlink()
    (tmp_path / "meta.json").symlink_to("/dev/urandom")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_meta(tmp_path)
    assert Checkpointer(tmp_path.parent).checkpoints() == []  # never a complete checkpoint


def test_a_checkpoint_of_another_model_family_names_the_arch(checkpoint, tmp_path):
    from memtrain.config.loader import compose_config
    from memtrain.engine.resume import check_resume

    with pytest.raises(CheckpointError, match='model.arch "gpt" -> "alphafold"'):
        check_resume(checkpoint, compose_config(["+recipe=alphafold_tiny"]), world_size=1)
