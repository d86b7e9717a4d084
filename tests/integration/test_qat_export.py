"""QAT end to end: a tiny GPT with precision.qat=int8 trains through the command line, and its
checkpoint exports to integer weights whose reloaded model computes the fake-quant forward."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from memtrain import cli
from memtrain.precision.export import (
    build_qat_model, export_model, load_quantized, pack_int4, pack_ternary, unpack_int4, unpack_ternary,
)
from tests.conftest import TINY, run_cli


def test_packing_round_trips():
    g = torch.Generator().manual_seed(0)
    q4 = torch.randint(-8, 8, (5, 12), generator=g, dtype=torch.int8)
    assert pack_int4(q4).shape == (5, 6) and torch.equal(unpack_int4(pack_int4(q4), 12), q4)
    q3 = torch.randint(-1, 2, (5, 11), generator=g, dtype=torch.int8)
    assert pack_ternary(q3).shape == (5, 3) and torch.equal(unpack_ternary(pack_ternary(q3), 11), q3)


@pytest.mark.parametrize("scheme", ["int4", "bitnet"])
def test_export_round_trip(compose, tmp_path, scheme):
    cfg = compose(f"precision.qat={scheme}")
    torch.manual_seed(0)
    model = build_qat_model(cfg).eval()
    export_model(model, cfg, tmp_path)
    loaded = load_quantized(tmp_path)
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        # same integers times the same scales, same input transform: equal up to summation order
        torch.testing.assert_close(loaded(tokens), model(tokens), rtol=1e-5, atol=1e-5)
    layer = loaded.layers[0].attention.wq
    assert layer.qweight.dtype == torch.uint8 and "layers.0.attention.wq.weight" not in loaded.state_dict()
    size = (tmp_path / "weights.pt").stat().st_size
    assert size < sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.slow  # 30 steps through the command line
def test_qat_int8_trains_through_cli_and_exports(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", f"hydra.run.dir={run}", *TINY, "data=protein", "precision.qat=int8",
                   "trainer.max_steps=30", "trainer.log_every=5", "trainer.save_every=30", "trainer.warmup_steps=2", "optimizer.lr=3e-3")
    assert proc.returncode == 0, proc.stderr
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.5, losses  # real protein sequences, as tests/unit/test_trainer.py
    ckpt = run / "checkpoints" / "step_00000030"
    out = tmp_path / "exported"
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    loaded = load_quantized(out)
    assert loaded.layers[0].feed_forward.w1.qweight.dtype == torch.int8
    # the fake-quant model with the checkpoint's weights computes the same logits
    from memtrain.engine.checkpoint import Checkpointer
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    cfg = OmegaConf.create(json.loads((ckpt / "meta.json").read_text())["config"])
    fake = build_qat_model(cfg).eval()
    state = {"model": get_model_state_dict(fake)}
    Checkpointer(ckpt.parent).load(ckpt, state)
    fake.load_state_dict(state["model"])
    tokens = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), fake(tokens), rtol=1e-5, atol=1e-5)  # fp32, summation order only


def test_export_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "no meta.json" in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [("qat", "INT8"), ("qat_activations", "Int8")])
def test_export_names_a_bad_precision_value_of_meta_json(compose, make_trainer, tmp_path, capsys, key, value):
    """meta.json holds enum names as plain strings: export types the precision section by its schema,
    so a name that is no member is one paragraph naming the key, not a traceback from the model build."""
    trainer = make_trainer(compose("precision.qat=int8", "trainer.max_steps=1"), tmp_path / "run")
    trainer.train_step()
    ckpt = trainer.save()
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["config"]["precision"][key] = value
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert cli.main(["export", str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"'precision.{key}'" in err and repr(value) in err, err
