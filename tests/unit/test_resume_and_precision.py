"""Resumes that refuse cleanly (checked against the checkpoint's stored config before any weights
load), an fp16 schedule that only moves on applied updates, and bf16 parameters that keep their
updates."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from rich.console import Console

from memtrain.config.errors import ConfigError, to_container
from memtrain.config.loader import load_config
from memtrain.engine.checkpoint import CheckpointError
from memtrain.engine.resume import check_resume
from memtrain.engine.trainer import Trainer
from memtrain.optim.adamw_bf16 import AdamWBF16
from memtrain.optim.builder import lr_at
from tests.conftest import TINY


def saved_run(compose, tmp_path, *overrides, steps=2):
    with Trainer(compose(*overrides, f"trainer.max_steps={steps}", f"trainer.save_every={steps}"), tmp_path / "first") as trainer:
        trainer.fit()
    return trainer, trainer.checkpointer.latest()


def refused(compose, tmp_path, path, *overrides) -> str:
    """The paragraph a resume is refused with; it must come before anything is built or loaded."""
    with pytest.raises(CheckpointError) as info:
        Trainer(compose(*overrides, "trainer.max_steps=4", f"trainer.resume={path}"), tmp_path / "second")
    text = str(info.value)
    assert "\n" not in text and str(path) in text, text
    return text


# -- 3. resume mismatches -------------------------------------------------------------------------


def test_a_dtype_change_is_refused_unless_asked_for(compose, tmp_path, make_trainer):
    """fp32 weights resumed as bfloat16 parameters: refused naming precision.param_dtype; with
    trainer.resume_cast=true the weights are cast and the run says what it cast."""
    first, path = saved_run(compose, tmp_path, "optimizer=adamw_bf16")
    bf16 = ["precision=bf16", "precision.param_dtype=bfloat16", "optimizer=adamw_bf16"]
    text = refused(compose, tmp_path, path, *bf16)
    assert "precision.param_dtype" in text and "trainer.resume_cast=true" in text

    out = io.StringIO()
    cfg = compose(*bf16, "trainer.max_steps=3", f"trainer.resume={path}", "trainer.resume_cast=true")
    trainer = make_trainer(cfg, tmp_path / "cast", console=Console(file=out, width=300))
    trainer.load(path)
    said = out.getvalue()
    # every model tensor is cast; adamw_bf16 keeps its moments in bfloat16 in both runs
    n_model = len(first.model.state_dict())
    assert "precision.param_dtype" in said and f"cast {n_model} model tensors from float32 to bfloat16" in said, said
    assert "optimizer tensors" not in said, said
    for p, q in zip(first.model.parameters(), trainer.model.parameters()):
        assert q.dtype == torch.bfloat16 and torch.equal(q, p.detach().to(torch.bfloat16))


def test_a_shape_change_is_refused_before_the_model_is_built(compose, tmp_path, monkeypatch):
    _, path = saved_run(compose, tmp_path)
    from memtrain.engine import trainer as trainer_module

    built = []
    monkeypatch.setattr(trainer_module, "parallelize", lambda *a, **k: built.append(a))
    text = refused(compose, tmp_path, path, "model.dim=128")
    assert "model.dim 64 -> 128" in text and "layers.0.attention.wq.weight [64, 64] -> [128, 128]" in text
    assert not built  # compared on the meta device (memtrain.models.meta) before the run is set up


def test_keys_that_do_not_change_state_may_change(compose, tmp_path, make_trainer):
    """A different lr, batch, schedule or activation checkpointing resumes; the optimizer's
    hyper-parameters are the new run's, not the checkpoint's."""
    _, path = saved_run(compose, tmp_path)
    cfg = compose("trainer.max_steps=4", f"trainer.resume={path}", "optimizer.lr=1e-3", "optimizer.weight_decay=0.3",
                  "trainer.micro_batch_size=2", "activation_checkpoint=full", "precision=fp16")
    trainer = make_trainer(cfg, tmp_path / "second")
    trainer.fit()
    assert trainer.step == 4
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.3, 0.0}


def test_another_optimizer_is_refused(compose, tmp_path):
    _, path = saved_run(compose, tmp_path)
    assert "optimizer._target_" in refused(compose, tmp_path, path, "optimizer=lion")


def test_zero_checkpoints_resume_only_on_their_world_size_and_format(compose, tmp_path):
    """meta.json records the world size and the format: a ZeRO checkpoint of 2 ranks is refused on
    1, a DCP checkpoint by parallel=zero*, before DeepSpeed is started."""
    path = tmp_path / "step_00000002"
    path.mkdir()
    stored = to_container(load_config([*TINY, "parallel=zero2", "launcher.nproc_per_node=2"]))
    (path / "meta.json").write_text(json.dumps({"step": 2, "config": stored, "world_size": 2, "format": "deepspeed"}))
    with pytest.raises(CheckpointError, match=r"world size 2 -> 1"):
        check_resume(path, compose("parallel=zero2"), world_size=1)
    with pytest.raises(CheckpointError, match=r"parallel.name \"zero2\" -> \"zero3\""):
        check_resume(path, compose("parallel=zero3", "launcher.nproc_per_node=2"), world_size=2)
    with pytest.raises(CheckpointError, match="a deepspeed checkpoint"):
        check_resume(path, compose("parallel=single"), world_size=1)
    check_resume(path, compose("parallel=zero2", "launcher.nproc_per_node=2"), world_size=2)  # the same: accepted


def test_a_checkpoint_without_a_stored_config_is_refused(tmp_path, compose):
    path = tmp_path / "step_00000001"
    path.mkdir()
    (path / "meta.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="holds no run config"):
        check_resume(path, compose(), world_size=1)


# -- 4. fp16: skipped steps do not consume the schedule --------------------------------------------


def overflow_at_first_step(trainer):
    """Inf gradients in the first step only (an fp16 overflow)."""
    handle = trainer.model.output.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    calls = []

    def train_step(original=trainer.train_step):
        result = original()
        if not calls:
            handle.remove()
        calls.append(result.skipped)
        return result

    trainer.train_step = train_step
    return calls


def test_a_skipped_step_gives_its_learning_rate_to_the_next(compose, tmp_path, make_trainer):
    over = ["precision=fp16", "trainer.warmup_steps=5", "optimizer.lr=1e-3", "trainer.max_steps=4"]
    trainer = make_trainer(compose(*over), tmp_path)
    skipped = overflow_at_first_step(trainer)
    records = trainer.fit()
    assert skipped == [True, False, False, False]
    first_lr = lr_at(0, 1e-3, 5, 4, "cosine", 0.1)
    assert records[0]["lr"] == records[1]["lr"] == first_lr  # step 2 gets the lr step 1 would have had
    assert records[2]["lr"] == lr_at(1, 1e-3, 5, 4, "cosine", 0.1)
    assert [(r["step"], r["updates"], r["skipped_steps"]) for r in records] == [(1, 0, 1), (2, 1, 1), (3, 2, 1), (4, 3, 1)]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["updates"], r["skipped_steps"]) for r in logged] == [(1, 0, 1), (2, 1, 1), (3, 2, 1), (4, 3, 1)]


def test_a_resumed_run_keeps_the_counters(compose, tmp_path, make_trainer):
    over = ["precision=fp16", "trainer.warmup_steps=5", "optimizer.lr=1e-3", "trainer.max_steps=4"]
    straight = make_trainer(compose(*over), tmp_path / "straight")
    overflow_at_first_step(straight)
    whole = straight.fit()

    first = make_trainer(compose(*over, "trainer.save_every=2"), tmp_path / "run")
    overflow_at_first_step(first)
    first.fit(until=2)
    assert json.loads((first.checkpointer.latest() / "meta.json").read_text())["skipped_steps"] == 1
    resumed = make_trainer(compose(*over, "trainer.resume=auto"), tmp_path / "run")
    rest = resumed.fit()
    assert (resumed.updates, resumed.skipped_steps) == (3, 1)
    strip = ("tokens_per_s", "peak_mem_bytes", "mfu")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rest] == \
        [{k: v for k, v in r.items() if k not in strip} for r in whole[2:]]


def test_the_lr_scheduler_position_is_checkpointed_and_the_schedule_is_the_resuming_runs(compose, tmp_path, make_trainer):
    """The scheduler (a torch LRScheduler, stepped per applied update) is at updates=1 after a
    skipped and an applied step; the checkpoint keeps that position, and a resumed run with
    another optimizer.lr and warm-up continues from it on its own schedule."""
    over = ["precision=fp16", "trainer.warmup_steps=5", "optimizer.lr=1e-3", "trainer.max_steps=4"]
    first = make_trainer(compose(*over, "trainer.save_every=2"), tmp_path)
    overflow_at_first_step(first)
    first.fit(until=2)
    assert isinstance(first.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
    saved = json.loads((first.checkpointer.latest() / "meta.json").read_text())["lr_scheduler"]
    assert (saved["last_epoch"], saved["base_lrs"]) == (1, [1e-3, 1e-3])
    resumed = make_trainer(compose("precision=fp16", "trainer.warmup_steps=8", "optimizer.lr=2e-3", "trainer.max_steps=4",
                                   "trainer.resume=auto"), tmp_path)
    resumed.load(resumed.resume.path)
    assert resumed.lr_scheduler.last_epoch == 1
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [lr_at(1, 2e-3, 8, 4, "cosine", 0.1)] * 2
    assert all("initial_lr" not in g for g in resumed.optimizer.param_groups)  # the optimizer state's layout


# -- 5. bfloat16 parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw", "lion", "sm3", "came", "adam_mini"])
def test_bf16_parameters_without_stochastic_rounding_are_refused(optimizer):
    with pytest.raises(ConfigError) as info:
        load_config([*TINY, "precision=bf16", "precision.param_dtype=bfloat16", f"optimizer={optimizer}"])
    assert info.value.key == "optimizer" and "optimizer=adamw_bf16" in str(info.value)
    with pytest.raises(ConfigError):
        load_config([*TINY, "precision=bf16", "precision.param_dtype=bfloat16", "optimizer=adamw_bf16",
                     "optimizer.stochastic_rounding=false"])
    load_config([*TINY, "precision=bf16", "precision.param_dtype=float32", f"optimizer={optimizer}"])  # autocast: fine


def unchanged_fraction(trainer) -> float:
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step()
    same = sum(int((a == p).sum()) for a, p in zip(before, trainer.model.parameters()))
    return same / sum(p.numel() for p in before)


def test_pure_bf16_training_keeps_its_updates(compose, tmp_path, make_trainer):
    """One gpt_tiny step at the issue's lr 1e-2: adamw_bf16 (stochastic rounding) leaves few
    parameter elements unchanged; Adafactor on the same bf16 parameters (refused by validation,
    built here directly) leaves most of them unchanged: its updates round away."""
    common = ["data=protein", "precision=bf16", "precision.param_dtype=bfloat16", "optimizer.lr=1e-2",
              "trainer.warmup_steps=0"]
    kept = unchanged_fraction(make_trainer(compose(*common[:-2], "optimizer=adamw_bf16", *common[-2:]), tmp_path / "a"))
    lost = unchanged_fraction(make_trainer(compose(*common[:-2], "optimizer=adafactor", *common[-2:]), tmp_path / "b"))
    # seen on the 2-core CPU: 0.025 and 0.84 (the issue saw 0.685 for Adafactor); the bounds are
    # far from both, and a plain fp32-parameter step leaves about 0.007 unchanged
    assert kept < 0.1 and lost > 0.5, (kept, lost)


def test_stochastic_rounding_keeps_updates_under_half_an_ulp_in_expectation():
    """AdamW's first step moves every weight by lr * sign(g). At lr 1e-5 that is under half a bf16
    ulp of most weights of size 0.02 (ulp 1.2e-4): round-to-nearest drops most of it, stochastic
    rounding keeps it on average. Tolerance: with 1e6 elements the mean's standard error is about
    0.3% of lr, so 3% is ten of them; round-to-nearest keeps about 19%."""
    torch.manual_seed(0)
    start = (torch.randn(1_000_000) * 0.02).to(torch.bfloat16)
    ratios = {}
    for stochastic in (True, False):
        p = torch.nn.Parameter(start.clone())
        p.grad = torch.randn_like(p)
        AdamWBF16([p], lr=1e-5, weight_decay=0.0, stochastic_rounding=stochastic).step()
        moved = (p.detach().float() - start.float()) * -torch.sign(p.grad.float())
        ratios[stochastic] = float(moved.mean()) / 1e-5
    assert math.isclose(ratios[True], 1.0, abs_tol=0.03), ratios
    assert ratios[False] < 0.5, ratios
