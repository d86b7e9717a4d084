"""Pipeline parallelism (gloo, CPU) against the single-process run: every schedule on 2
processes, and pipeline x DDP / pipeline x FSDP on 4, give the same first-step gradients and the
same losses and gradient norms over three optimizer steps. The multi-process cases run batched
(tests/distributed/batch.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from tests.distributed.batch import Case, Lazy, batched
from tests.distributed.cases import check_rank_sums, run

pytestmark = pytest.mark.multiprocess

# four blocks: two pipeline ranks x two stages per rank for the multi-stage schedules
COMMON = [*TINY, "model.n_layers=4", "trainer.max_steps=3", "optimizer.lr=1e-2", "trainer.warmup_steps=0",
          "trainer.grad_accum=2"]
TWO = [*COMMON, "parallel=pp", "launcher.nproc_per_node=2", "trainer.micro_batch_size=4", "parallel.pp_microbatches=2"]
FOUR = [*COMMON, "launcher.nproc_per_node=4", "trainer.micro_batch_size=4", "parallel.pp_microbatches=2"]
SCHEDULES = {
    "gpipe": Case(2, "pipeline", (*TWO, "parallel.pp_schedule=gpipe"), slow=True),
    "1f1b": Case(2, "pipeline", (*TWO, "parallel.pp_schedule=1f1b"), slow=True),
    "interleaved_1f1b": Case(2, "pipeline", (*TWO, "parallel.pp_schedule=interleaved_1f1b",
                                             "parallel.pp_stages_per_rank=2")),
    "zero_bubble": Case(2, "pipeline", (*TWO, "parallel.pp_schedule=zero_bubble", "parallel.pp_stages_per_rank=2"),
                        slow=True),
    "zbv": Case(2, "pipeline", (*TWO, "parallel.pp_schedule=zbv", "parallel.pp_stages_per_rank=2")),
}
COMPOSED = {
    "pp2-ddp2": Case(4, "pipeline", (*FOUR, "parallel=pp", "parallel.pp=2", "parallel.dp_replicate=2",
                                     "parallel.pp_schedule=1f1b"), slow=True),
    "pp2-fsdp2": Case(4, "pipeline", (*FOUR, "parallel=fsdp", "parallel.pp=2", "parallel.pp_schedule=interleaved_1f1b",
                                      "parallel.pp_stages_per_rank=2")),
}


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process: micro-batch 4 (what the 2 pipeline ranks train on) and 8 (2 data-parallel ranks' worth)."""
    root = tmp_path_factory.mktemp("single")
    return Lazy(lambda mb: run(str(root / f"mb{mb}.pt"), [*COMMON, f"trainer.micro_batch_size={mb}"]))


@pytest.mark.parametrize("case", batched(__name__, SCHEDULES))
def test_schedule_matches_single_process(case, launched, reference):
    assert_matches(launched(case), reference[4], case)


@pytest.mark.parametrize("case", batched(__name__, COMPOSED))
def test_pipeline_composes_with_data_parallelism(case, launched, reference):
    """2 pipeline ranks x 2 data-parallel ranks, each data-parallel rank with half the batch."""
    assert_matches(launched(case), reference[8], case)


@pytest.mark.parametrize("case", batched(__name__, {
    "sums-pp2": Case(2, "rank_sums", (*TWO, "parallel.pp_schedule=zbv", "parallel.pp_stages_per_rank=2"))}))
def test_sums_over_ranks_count_the_last_stages_loss_once(case, launched):
    """The loss exists on the last stage only; the pipeline strategy gives it to every stage, and
    the step's sums over ranks count it (and the targets every stage reads) once."""
    check_rank_sums(launched(case), case)
