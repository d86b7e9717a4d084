"""memtrain plan: every row is a config the validator accepts, rows are ranked by the cost model,
the top row trains, and the estimator moves the right way with each technique."""

from __future__ import annotations

import io
import json
import re

import pytest

from memtrain.config.loader import load_config
from memtrain.distributed.mesh import ParallelDims
from memtrain.memory import planner
from memtrain.memory.cost_model import (
    STEPS_RELATIVE,
    StepCost,
    bubble_fraction,
    spans_nodes,
    step_cost,
)
from memtrain.memory.estimator import MemoryEstimate, estimate
from memtrain.memory.planner import no_fit_message, plan
from tests.conftest import TINY, run_cli

# the plans below are module-scoped and take seconds to tens of seconds each: one xdist worker makes them
pytestmark = pytest.mark.xdist_group("planner")

# The tiny decoder on one CPU "GPU": axes left free are offload, checkpoint and the micro-batch split
TINY_PLAN = [*TINY, "precision=fp32", "optimizer=adamw", "hardware.gpus=1", "hardware.gpu_mem_gb=1"]
# AlphaFold (tiny) on 2 GPUs: data-parallel options, DAP=2, offloads, checkpointing, chunking
AF_PLAN = ["+recipe=alphafold_tiny", "precision=bf16", "optimizer=adamw", "hardware.gpus=2", "hardware.gpu_mem_gb=1"]
# The tiny decoder (4 blocks, 4 heads, 2 KV heads) on 8 GPUs: every parallel layout, the model-
# parallel ones included, with the other axes pinned to keep the plan small
GPT8_PLAN = [*(o for o in TINY if not o.startswith("trainer.micro_batch_size")), "model.n_layers=4", "precision=bf16",
             "optimizer=adamw", "activation_checkpoint=full", "offload=none", "hardware.gpus=8"]


@pytest.fixture(scope="module")
def tiny_plan():
    return plan(TINY_PLAN)


@pytest.fixture(scope="module")
def af_plan():
    return plan(AF_PLAN, verify_top=0)


@pytest.fixture(scope="module")
def gpt8_plan():
    return plan(GPT8_PLAN, global_batch=16, verify_top=0)


@pytest.mark.slow
def test_every_row_is_accepted_by_the_validator(tiny_plan, af_plan, gpt8_plan):
    # through the command line's own path (load_config raises ConfigError if the validator rejects
    # a row): every row of the tiny and the 8-GPU decoder plans (tiny_plan was also verified by
    # plan() itself), and of the AlphaFold plan the top rows and an even sample of the rest
    assert tiny_plan.rows and af_plan.rows and gpt8_plan.rows
    af_rows = af_plan.rows[:10] + af_plan.rows[10::7]
    for row in [*tiny_plan.rows, *gpt8_plan.rows, *af_rows]:
        overrides = row.overrides if row.estimate.world_size == 1 else [*row.overrides, "trainer.device=cpu"]
        load_config(overrides)


@pytest.mark.slow
def test_candidates_the_validator_refuses_are_dropped():
    # regional compilation is refused with DeepSpeed and with pipeline stages: those candidates are
    # composed (nothing prunes them earlier) and the validator drops them
    p = plan([*GPT8_PLAN, "hardware.gpus=2", "trainer.compile=true"], verify_top=0)
    assert p.rows and p.invalid > 0
    layouts = {r.choices["parallel"] for r in p.rows}
    assert "fsdp" in layouts and not any(x.startswith(("zero", "pp=")) for x in layouts)


@pytest.mark.slow
def test_rows_are_ranked_by_the_cost_model(tiny_plan, af_plan, gpt8_plan):
    # by time per unit of progress, up to near-ties: no row is more than NEAR_TIE slower than a later one
    for p in (tiny_plan, af_plan, gpt8_plan):
        t = [r.cost.progress_s for r in p.rows]
        assert all(t[i] <= t[j] * (1 + planner.NEAR_TIE) for i in range(len(t)) for j in range(i + 1, len(t)))
        assert len(set(t)) > 1


@pytest.mark.slow
def test_the_alphafold_plan_covers_dap_and_checkpointing(af_plan):
    parallel = {r.choices["parallel"] for r in af_plan.rows}
    assert {"ddp", "fsdp", "dap=2"} <= parallel
    assert {r.choices["activation_checkpoint"] for r in af_plan.rows} == {"none", "selective", "full"}


@pytest.mark.slow
def test_the_global_batch_is_kept(af_plan, gpt8_plan):
    for p in (af_plan, gpt8_plan):
        for row in p.rows:
            o = dict(s.split("=", 1) for s in row.overrides)
            dp = row.estimate.dp_replicate * row.estimate.dp_shard
            assert int(o["trainer.micro_batch_size"]) * int(o["trainer.grad_accum"]) * dp == p.global_batch


@pytest.mark.slow
def test_the_gpt_plan_has_model_parallel_rows_only_where_the_model_splits(gpt8_plan):
    layouts = {r.choices["parallel"] for r in gpt8_plan.rows}
    # 4 heads and 2 KV heads: tensor parallelism at 2 only; Ulysses at 2 and 4 (heads), Ring up to 8
    assert {"fsdp+tp=2", "fsdp+ulysses=2", "fsdp+ulysses=4", "fsdp+ring=2", "ring=8"} <= layouts
    assert not {"fsdp+tp=4", "tp=8", "ulysses=8"} & layouts
    # 4 blocks: 1F1B over 2 or 4 stages; interleaved and ZB-V (2 stages per rank) over 2 ranks only
    assert {"pp=2/1f1b", "pp=4/1f1b", "pp=2/interleaved_1f1b", "pp=2/zbv"} <= layouts
    assert not {"pp=4/interleaved_1f1b", "pp=4/zbv", "pp=8/1f1b"} & layouts
    for row in gpt8_plan.rows:
        o = dict(s.split("=", 1) for s in row.overrides)
        if "parallel.pp" in o:  # a micro-batch splits into the pipeline's micro-batches
            assert int(o["trainer.micro_batch_size"]) % int(o["parallel.pp_microbatches"]) == 0
            assert o.get("offload", "none") == "none" and row.estimate.pp == int(o["parallel.pp"])
        if "parallel.tp" in o or "parallel.cp" in o:
            assert row.cost.axial_comm_s > 0  # tp/cp collectives on the critical path


def test_fp8_is_offered_only_on_hardware_with_fp8(monkeypatch):
    # no precision=fp8 option exists yet: the axis offers it once it does, and only on hardware.fp8
    monkeypatch.setattr(planner, "fp8_option_exists", lambda: True)
    h100, a100 = load_config([*TINY, "hardware=h100"]), load_config([*TINY, "hardware=a100"])
    assert h100.hardware.fp8 and not a100.hardware.fp8
    assert "fp8" in planner.precisions(None, h100) and "fp8" not in planner.precisions(None, a100)
    monkeypatch.setattr(planner, "fp8_option_exists", lambda: False)
    assert "fp8" not in planner.precisions(None, h100)


@pytest.mark.slow
def test_new_optimizers_are_planned_where_they_run():
    # 4 GiB: DeepSpeed's ZeRO keeps a 5e8-element reduce bucket (2 GB in fp32, memtrain.memory.zero_memory)
    # even for this tiny model, so the ZeRO rows need more than 1 GiB
    p = plan([*TINY, "precision=fp32", "activation_checkpoint=none", "offload=none", "hardware.gpus=2", "hardware.gpu_mem_gb=4"],
             verify_top=0)
    by_layout: dict[str, set[str]] = {}
    for r in p.rows:
        by_layout.setdefault(r.choices["parallel"], set()).add(r.choices["optimizer"])
    assert {"adamw", "lion", "came", "sm3", "adam_mini", "adamw_bf16", "adafactor", "mezo"} <= by_layout["ddp"]
    assert not {"adafactor", "sm3", "came", "adam_mini", "mezo"} & by_layout["zero2"]  # flat partitions; MeZO
    assert "mezo" not in by_layout["fsdp"]
    for row in p.rows[:: max(1, len(p.rows) // 8)]:  # a sample, through load_config
        load_config([*row.overrides, "trainer.device=cpu"])


def test_mezo_costs_two_forwards_and_no_backward():
    base = [*TINY, "precision=fp32", "activation_checkpoint=full", "model.dim=512", "data.seq_len=128"]
    cfgs = {o: load_config([*base, f"optimizer={o}"]) for o in ("adamw", "mezo")}
    cost = {o: step_cost(c, estimate(c)) for o, c in cfgs.items()}
    hw, n = cfgs["mezo"].hardware, estimate(cfgs["mezo"]).n_params
    param_passes = 4 * 2 * n * 4 / (1e9 * hw.hbm_gbps)
    assert cost["mezo"].recompute_s == 0 < cost["adamw"].recompute_s
    assert cost["mezo"].compute_s - param_passes == pytest.approx(2 / 3 * cost["adamw"].compute_s, rel=1e-9)
    assert cost["mezo"].total_s < cost["adamw"].total_s


def test_pipeline_bubble():
    assert bubble_fraction("1f1b", 4, 4, 1) == pytest.approx(3 / 7)  # (pp-1)/(m+pp-1)
    assert bubble_fraction("gpipe", 4, 12, 1) == pytest.approx(3 / 15)
    assert bubble_fraction("interleaved_1f1b", 4, 4, 2) == pytest.approx(1.5 / 5.5)
    assert bubble_fraction("zero_bubble", 4, 4, 2) < bubble_fraction("1f1b", 4, 4, 1)
    assert bubble_fraction("zbv", 4, 8, 2) == 0 and bubble_fraction("1f1b", 1, 4, 1) == 0


def test_communication_crosses_nodes_only_where_a_dimension_spans_them():
    hsdp = ParallelDims(world_size=16, pp=1, dp_replicate=2, dp_shard=8, tp=1, cp=1, dap=1)
    assert spans_nodes(hsdp, "dp_replicate", 8) and not spans_nodes(hsdp, "dp_shard", 8)
    tp = ParallelDims(world_size=16, pp=1, dp_replicate=1, dp_shard=8, tp=2, cp=1, dap=1)
    assert not spans_nodes(tp, "tp", 8) and spans_nodes(tp, "dp_shard", 8)
    # tp's bytes (memtrain.memory.comm) over NVLink are the step's model-parallel communication
    cfg = load_config([*TINY, "parallel=tp", "launcher.nproc_per_node=2", "trainer.device=cpu"])
    e = estimate(cfg)
    assert step_cost(cfg, e).axial_comm_s == pytest.approx(sum(e.comm_bytes["tp"].values()) / (1e9 * cfg.hardware.intra_node_gbps))


@pytest.mark.slow
def test_the_top_row_trains_through_the_cli(tiny_plan, tmp_path):
    top = tiny_plan.rows[0].overrides
    proc = run_cli("train", *top, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_hardware_too_small_gives_a_clear_message():
    p = plan([*TINY_PLAN, "activation_checkpoint=full", "offload=none", "hardware.gpu_mem_gb=0.0001"])
    assert not p.rows and p.too_big
    msg = no_fit_message(p)
    assert "nothing fits" in msg and "hardware.gpu_mem_gb=0.0001" in msg
    # below one GiB the sizes are given in MiB / KiB, not as 0.00 GiB
    assert re.search(r"needs [0-9.,]+ (MiB|KiB) per device", msg) and re.search(r"leaves [0-9.,]+ KiB usable", msg), msg


def test_a_pinned_layout_that_cannot_fill_the_gpus_says_why():
    """parallel=tp parallel.tp=3 on 4 GPUs forms no candidate at all: the message gives the
    degrees' reason, not "all 0 candidates were refused by validation"."""
    base = [o for o in TINY if not o.startswith("trainer.micro_batch_size")]  # the micro-batch axis left free
    for pinned, considered in ((base, 0), (TINY, None)):  # no candidate formed; every candidate refused
        p = plan([*pinned, "parallel=tp", "parallel.tp=3", "hardware.gpus=4"])
        assert not p.rows and not p.too_big and (considered is None or p.considered == considered)
        msg = " ".join(no_fit_message(p).split())
        assert "all 0 candidates" not in msg, msg
        assert "parallel.tp=3" in msg and "world size" in msg and "hardware.gpus=4" in msg, msg


def _one_candidate(base: list[str], usable_bytes: int) -> planner.Plan:
    """A plan of one candidate (every axis pinned, one GPU) on a GPU of `usable_bytes` usable."""
    return plan([*base, "hardware.gpus=1", "hardware.mem_usable=1.0", f"hardware.gpu_mem_gb={usable_bytes / 2**30}"],
                verify_top=0)


def test_rows_fit_by_the_step_peak_not_the_sum_of_the_terms():
    """The sum of the terms overstates the decoder (its gradients and activations never coexist in
    full) and understates AlphaFold (the FAPE loss's transient tensors): a GPU between the two
    takes the decoder and refuses AlphaFold, and the rows show the peak."""
    gpt = [*(o for o in TINY if not o.startswith("data.seq_len")), "data.seq_len=4", "precision=fp32",
           "optimizer=adamw", "offload=none", "activation_checkpoint=none"]
    af = ["+recipe=alphafold_tiny", "trainer.device=cpu", "precision=fp32", "optimizer=adamw", "offload=none",
          "activation_checkpoint=none", "model.chunk_size=null", "model.attention_backend=naive", "trainer.micro_batch_size=1"]
    e_gpt, e_af = est(base=gpt), est(base=af)
    assert e_gpt.peak < e_gpt.total and e_af.total < e_af.peak
    fits = _one_candidate(gpt, (e_gpt.peak + e_gpt.total) // 2)
    assert fits.considered == 1 and [r.peak_bytes for r in fits.rows] == [e_gpt.peak]
    refused = _one_candidate(af, (e_af.peak + e_af.total) // 2)
    assert refused.considered == 1 and not refused.rows and refused.smallest.peak_bytes == e_af.peak
    from memtrain.memory.report import human

    assert f"{human(e_af.peak)} per device" in no_fit_message(refused)


@pytest.mark.slow
def test_cli_table_and_json(capsys):
    proc = run_cli("plan", *TINY_PLAN, "activation_checkpoint=full", "--top", "2")  # as a user runs it
    assert proc.returncode == 0, proc.stderr
    assert "memtrain plan" in proc.stdout and "GiB dev" in proc.stdout and "memtrain train " in proc.stdout
    from memtrain.cli import (
        plan_command,  # the same entry point, in this interpreter (faster)
    )

    assert plan_command([*TINY_PLAN, "activation_checkpoint=full", "--json", "--top", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 1 <= len(data["rows"]) <= 2 and data["rows"][0]["command"].startswith("memtrain train")
    assert plan_command([*TINY_PLAN, "hardware.gpu_mem_gb=0.0001"]) == 1
    assert "nothing fits" in capsys.readouterr().err


# -- the estimator moves the right way with each technique ----------------------------------------

def est(*overrides, base=TINY):
    return estimate(load_config([*base, *overrides]))


def test_checkpointing_lowers_activations():
    # 8 blocks: selective (every 2nd block) keeps 4 blocks + 4 inputs + one recompute buffer
    deep = "model.n_layers=8"
    assert (est(deep, "activation_checkpoint=full").activations < est(deep, "activation_checkpoint=selective").activations
            < est(deep, "activation_checkpoint=none").activations)


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


# -- ranking: time to a trained model, near-ties, exposed communication (issue: planner ranking) --

def _row(choices: dict, step_s: float, peak: int = 1, steps_relative: float = 1.0) -> planner.PlanRow:
    # the planner reads the step's peak (MemoryEstimate.peak); the per-term total is set alike
    est = MemoryEstimate(params=0, grads=0, optimizer=0, activations=0, total=peak, n_params=1, peak=peak)
    cost = StepCost(step_s, 0.0, 0.0, 0.0, 0.0, 0.0, steps_relative)
    return planner.PlanRow([f"{k}={v}" for k, v in choices.items()], choices, est, cost)


def test_mezo_is_ranked_by_the_steps_it_needs():
    cfg = load_config([*TINY, "precision=fp32", "optimizer=mezo"])
    cost = step_cost(cfg, estimate(cfg))
    assert cost.steps_relative == STEPS_RELATIVE["MeZO"] and cost.progress_s == pytest.approx(100 * cost.total_s)
    adamw = load_config([*TINY, "precision=fp32", "optimizer=adamw"])
    assert step_cost(adamw, estimate(adamw)).steps_relative == 1
    # a MeZO row three times faster per step still ranks after AdamW
    rows = planner.rank([_row({"optimizer": "mezo"}, 1.0, steps_relative=100), _row({"optimizer": "adamw"}, 3.0)])
    assert [r.choices["optimizer"] for r in rows] == ["adamw", "mezo"]


def test_near_ties_go_to_the_simplest_configuration():
    rows = planner.rank([
        _row({"parallel": "zero3", "optimizer": "adamw_8bit"}, 1.00, peak=1),
        _row({"parallel": "fsdp", "optimizer": "adamw"}, 1.02, peak=3),
        _row({"parallel": "ddp", "optimizer": "adamw"}, 1.025, peak=9),
        _row({"parallel": "ddp", "optimizer": "lion"}, 1.01, peak=5),
        _row({"parallel": "single", "optimizer": "adamw"}, 1.2, peak=9),  # not a near-tie: 20% slower
    ])
    assert [(r.choices["parallel"], r.choices["optimizer"]) for r in rows] == [
        ("ddp", "adamw"), ("ddp", "lion"), ("fsdp", "adamw"), ("zero3", "adamw_8bit"), ("single", "adamw")]


def test_zero_gradient_reduction_is_exposed_as_deepspeed_is_configured():
    # memtrain's DeepSpeed config sets overlap_comm=false: ZeRO-2's reduce-scatter and its
    # all-gather after the step are both exposed; DDP's all-reduce hides behind the backward
    from memtrain.distributed.zero import deepspeed_config

    base = [*TINY, "launcher.nproc_per_node=8", "trainer.device=cpu", "precision=bf16", "model.dim=512",
            "hardware.intra_node_gbps=1"]
    zero2 = load_config([*base, "parallel=zero2"])
    assert deepspeed_config(zero2, ParallelDims.from_config(zero2.parallel, 8), "cuda")["zero_optimization"][
        "overlap_comm"] is False
    e = estimate(zero2)
    total = sum(e.comm_bytes["dp_shard"].values()) / 1e9
    assert step_cost(zero2, e).dp_comm_s == pytest.approx(total)
    zero3 = load_config([*base, "parallel=zero3"])
    e3, c3 = estimate(zero3), None
    c3 = step_cost(zero3, e3)
    hidden = c3.compute_s + c3.recompute_s
    gathers = e3.comm_bytes["dp_shard"]["all_gather_params"] / 1e9
    assert c3.dp_comm_s == pytest.approx(e3.comm_bytes["dp_shard"]["reduce_scatter_grads"] / 1e9
                                         + max(0.0, gathers - hidden))
    ddp = load_config([*base, "parallel=ddp"])
    ed = estimate(ddp)
    cd = step_cost(ddp, ed)
    assert cd.dp_comm_s == pytest.approx(max(0.0, sum(ed.comm_bytes["dp_replicate"].values()) / 1e9 - 2 / 3 * cd.compute_s))


def test_choices_name_the_axes_that_applied():
    # the decoder has no chunk axis: the micro-batch split is labelled micro_batch, not chunk
    free = [o for o in TINY if not o.startswith("trainer.micro_batch_size")]
    p = plan([*free, "precision=fp32", "optimizer=adamw", "activation_checkpoint=none", "hardware.gpus=1"], verify_top=0)
    assert p.rows
    for row in p.rows:
        assert "chunk" not in row.choices and "attention" not in row.choices
        mb, accum = row.choices["micro_batch"].split("x")
        assert f"trainer.micro_batch_size={mb}" in row.overrides and f"trainer.grad_accum={accum}" in row.overrides


def test_the_table_fits_80_columns_and_prints_every_command_whole():
    from rich.console import Console

    p = plan(AF_PLAN, verify_top=0)
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(planner.render_plan(p, 5))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = " ".join(line.strip() for line in lines)
    for row in p.rows[:5]:
        assert "memtrain train " + " ".join(row.overrides) in text


def test_validate_shrinks_rows_to_this_machine_and_says_what_it_skips(monkeypatch):
    from memtrain.memory import plan_validate

    row = [*TINY, "launcher.nproc_per_node=8", "parallel=fsdp", "parallel.tp=4", "parallel.dp_shard=-1"]
    shrunk, note = plan_validate.shrink(row, 2)
    assert "launcher.nproc_per_node=2" in shrunk and "parallel.tp=2" in shrunk and "8 to 2" in note
    assert plan_validate.shrink(row, 8) == (row, None)
    pp = [*TINY, "launcher.nproc_per_node=8", "parallel=pp", "parallel.pp=4", "parallel.pp_stages_per_rank=2",
          "parallel.pp_microbatches=8"]
    assert "parallel.pp_microbatches=4" in plan_validate.shrink(pp, 2)[0]
    # a row whose estimate exceeds this machine's memory is skipped with the reason, without a run
    monkeypatch.setattr(plan_validate, "available_bytes", lambda: 1024)
    monkeypatch.setattr(plan_validate, "_idle_rss", lambda: 0)
    p = plan([*TINY_PLAN, "activation_checkpoint=full"], verify_top=1)
    (entry,) = list(plan_validate.validate_rows(p.rows[:1], steps=1))
    assert entry["measured_peak_bytes"] is None and "GiB available" in entry["skipped"]
