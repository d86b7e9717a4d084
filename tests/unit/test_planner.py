"""memtrain plan: every row is a config the validator accepts, rows are ranked by the cost model,
the top row trains, and the estimator moves the right way with each technique."""

from __future__ import annotations

import json

import pytest

from memtrain.config.loader import load_config
from memtrain.memory.estimator import estimate
from memtrain.memory.planner import no_fit_message, plan
from tests.conftest import TINY, run_cli

# The tiny decoder on one CPU "GPU": axes left free are offload, checkpoint and the micro-batch split
TINY_PLAN = [*TINY, "precision=fp32", "optimizer=adamw", "hardware.gpus=1", "hardware.gpu_mem_gb=1"]
# AlphaFold (tiny) on 2 GPUs: data-parallel options, DAP=2, offloads, checkpointing, chunking
AF_PLAN = ["+recipe=alphafold_tiny", "precision=bf16", "optimizer=adamw", "hardware.gpus=2", "hardware.gpu_mem_gb=1"]


@pytest.fixture(scope="module")
def tiny_plan():
    return plan(TINY_PLAN)


@pytest.fixture(scope="module")
def af_plan():
    return plan(AF_PLAN, verify_top=0)


def test_every_row_is_accepted_by_the_validator(tiny_plan, af_plan):
    for p in (tiny_plan, af_plan):
        assert p.rows and p.invalid > 0  # some candidates were refused (e.g. optimizer_cpu without ZeRO)
        for row in p.rows:
            overrides = row.overrides if row.estimate.world_size == 1 else [*row.overrides, "trainer.device=cpu"]
            load_config(overrides)  # raises ConfigError if the validator rejects it


def test_rows_are_ranked_by_the_cost_model(tiny_plan, af_plan):
    for p in (tiny_plan, af_plan):
        keys = [(r.cost.total_s, r.peak_bytes) for r in p.rows]
        assert keys == sorted(keys)
        assert len({r.cost.total_s for r in p.rows}) > 1


def test_the_alphafold_plan_covers_dap_and_checkpointing(af_plan):
    parallel = {r.choices["parallel"] for r in af_plan.rows}
    assert {"ddp", "fsdp", "dap=2"} <= parallel
    assert {r.choices["checkpoint"] for r in af_plan.rows} == {"none", "selective", "full"}


def test_the_global_batch_is_kept(af_plan):
    for row in af_plan.rows:
        o = dict(s.split("=", 1) for s in row.overrides)
        dp = row.estimate.dp_replicate * row.estimate.dp_shard
        assert int(o["trainer.micro_batch_size"]) * int(o["trainer.grad_accum"]) * dp == af_plan.global_batch


def test_the_top_row_trains_through_the_cli(tiny_plan, tmp_path):
    top = tiny_plan.rows[0].overrides
    proc = run_cli("train", *top, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_hardware_too_small_gives_a_clear_message():
    p = plan([*TINY_PLAN, "checkpoint=full", "offload=none", "hardware.gpu_mem_gb=0.0001"])
    assert not p.rows and p.too_big
    msg = no_fit_message(p)
    assert "nothing fits" in msg and "hardware.gpu_mem_gb=0.0001" in msg and "GiB per device" in msg


def test_cli_table_and_json():
    proc = run_cli("plan", *TINY_PLAN, "checkpoint=full", "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert "memtrain plan" in proc.stdout and "GiB/device" in proc.stdout
    proc = run_cli("plan", *TINY_PLAN, "checkpoint=full", "--json", "--top", "2")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert 1 <= len(data["rows"]) <= 2 and data["rows"][0]["command"].startswith("memtrain train")
    proc = run_cli("plan", *TINY_PLAN, "hardware.gpu_mem_gb=0.0001")
    assert proc.returncode == 1 and "nothing fits" in proc.stderr


# -- the estimator moves the right way with each technique ----------------------------------------

def est(*overrides, base=TINY):
    return estimate(load_config([*base, *overrides]))


def test_checkpointing_lowers_activations():
    # 8 blocks: selective (every 2nd block) keeps 4 blocks + 4 inputs + one recompute buffer
    deep = "model.n_layers=8"
    assert (est(deep, "checkpoint=full").activations < est(deep, "checkpoint=selective").activations
            < est(deep, "checkpoint=none").activations)


def test_zero3_divides_parameters_by_dp():
    one = est("parallel=zero1", "launcher.nproc_per_node=4")
    three = est("parallel=zero3", "launcher.nproc_per_node=4")
    assert three.params == pytest.approx(one.params / 4, rel=0.02)


def test_offload_moves_optimizer_bytes_to_host():
    on, off = est("parallel=zero2", "launcher.nproc_per_node=2"), est("parallel=zero2", "launcher.nproc_per_node=2",
                                                                       "offload=optimizer_cpu")
    assert off.optimizer == 0 and on.optimizer > 0 and off.host >= on.optimizer and off.total < on.total


def test_bf16_halves_activation_bytes_under_sharded_compute():
    # FSDP computes with bf16 parameters, so every saved activation is 2 bytes instead of 4
    fp32 = est("parallel=fsdp", "launcher.nproc_per_node=2", "precision=fp32")
    bf16 = est("parallel=fsdp", "launcher.nproc_per_node=2", "precision=bf16")
    assert bf16.activations == pytest.approx(fp32.activations / 2, rel=0.1)


def test_smaller_micro_batch_lowers_activations():
    assert est("trainer.micro_batch_size=2").activations < est("trainer.micro_batch_size=4").activations


def test_dap_lowers_evoformer_activations():
    af = ["+recipe=alphafold_tiny", "trainer.device=cpu"]
    single = est(base=af)
    dap = est("parallel=dap", "parallel.dap=2", "launcher.nproc_per_node=2", base=af)
    assert sum(dap.activations_per_block) < sum(single.activations_per_block)
