"""Pipeline parallelism (gloo, CPU) against the single-process run: every schedule on 2
processes, and pipeline x DDP / pipeline x FSDP on 4, give the same first-step gradients and the
same losses and gradient norms over three optimizer steps."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from tests.distributed.harness import HERE, torchrun
from tests.distributed.worker import run

# four blocks: two pipeline ranks x two stages per rank for the multi-stage schedules
COMMON = [*TINY, "model.n_layers=4", "trainer.max_steps=3", "optimizer.lr=1e-2", "trainer.warmup_steps=0",
          "trainer.grad_accum=2"]
SCHEDULES = {
    "gpipe": ["parallel.pp_schedule=gpipe"],
    "1f1b": ["parallel.pp_schedule=1f1b"],
    "interleaved_1f1b": ["parallel.pp_schedule=interleaved_1f1b", "parallel.pp_stages_per_rank=2"],
    "zero_bubble": ["parallel.pp_schedule=zero_bubble", "parallel.pp_stages_per_rank=2"],
    "zbv": ["parallel.pp_schedule=zbv", "parallel.pp_stages_per_rank=2"],
}
COMPOSED = {
    "pp2-ddp2": ["parallel=pp", "parallel.pp=2", "parallel.dp_replicate=2", "parallel.pp_schedule=1f1b"],
    "pp2-fsdp2": ["parallel=fsdp", "parallel.pp=2", "parallel.pp_schedule=interleaved_1f1b",
                  "parallel.pp_stages_per_rank=2"],
}


def launch(nproc: int, tmp_path, common: list[str], cases: dict[str, list[str]]) -> dict[str, dict]:
    """Every case in one launch of the pipeline worker."""
    out = tmp_path / "result.pt"
    args = [str(out), *common]
    for overrides in cases.values():
        args += ["--", *overrides]
    torchrun(nproc, HERE / "pipeline_worker.py", *args, timeout=900)
    results = torch.load(out, weights_only=True)
    return {name: results[i] for i, name in enumerate(cases)}


def assert_matches(result: dict, reference: dict, case: str) -> None:
    assert result["grads"].keys() == reference["grads"].keys(), case
    for name, g in reference["grads"].items():
        # fp32: the same per-token terms, but summed per pipeline micro-batch (1-2 samples) and
        # then across micro-batches (and data-parallel ranks), where the single process sums per
        # trainer micro-batch: a reordering of fp32 sums, a few ulps of the gradient's scale
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-5, atol=1e-7, msg=f"{case}: {name}")
    # three optimizer steps later (clipped by the norm combined over the stages) still fp32 round-off
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5), case
    assert result["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-5), case


def test_every_schedule_matches_single_process(tmp_path):
    reference = run(str(tmp_path / "single.pt"), [*COMMON, "trainer.micro_batch_size=4"])
    results = launch(2, tmp_path, [*COMMON, "parallel=pp", "launcher.nproc_per_node=2", "trainer.micro_batch_size=4",
                                   "parallel.pp_microbatches=2"], SCHEDULES)
    for case, result in results.items():
        assert_matches(result, reference, case)


def test_pipeline_composes_with_data_parallelism(tmp_path):
    """2 pipeline ranks x 2 data-parallel ranks, each data-parallel rank with half the batch."""
    reference = run(str(tmp_path / "single.pt"), [*COMMON, "trainer.micro_batch_size=8"])
    results = launch(4, tmp_path, [*COMMON, "launcher.nproc_per_node=4", "trainer.micro_batch_size=4",
                                   "parallel.pp_microbatches=2"], COMPOSED)
    for case, result in results.items():
        assert_matches(result, reference, case)
