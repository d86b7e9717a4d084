"""Tensor parallelism (with and without Megatron sequence parallelism), Ulysses and Ring Attention
on 2 gloo processes, and FSDP x TP and FSDP x Ring on 4, against the single-process run of the same model."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from tests.distributed.harness import HERE, torchrun, torchrun_worker
from tests.distributed.worker import run

STEPS = ["trainer.max_steps=3", "optimizer.lr=1e-2", "trainer.warmup_steps=0", "trainer.grad_accum=2"]


def test_ulysses_and_ring_attention_match_sdpa_on_the_whole_sequence():
    proc = torchrun(2, HERE / "sp_attention_worker.py", timeout=300)
    assert proc.stdout.count(": ok") == 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process; micro-batch 4 (what each tp/sp rank also reads) and 8 (two fsdp ranks' worth)."""
    root = tmp_path_factory.mktemp("single")
    return {mb: run(str(root / f"mb{mb}.pt"), [*TINY, *STEPS, f"trainer.micro_batch_size={mb}"]) for mb in (4, 8)}


def assert_matches(result, reference, case):
    assert result["grads"].keys() == reference["grads"].keys()
    for name, g in reference["grads"].items():
        # fp32: the same products, with partial sums over tp shards (all-reduce / reduce-scatter),
        # blockwise softmax merges (ring) or other summation orders: a few ulps of the gradient's scale
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-5, atol=1e-7, msg=f"{case}: {name}")
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5)


CASES = {
    "tp2": (2, 4, ["parallel=tp"]),
    "tp2-sequence-parallel": (2, 4, ["parallel=tp_sp"]),
    "ulysses2": (2, 4, ["parallel=ulysses"]),
    "ring2-checkpoint-full": (2, 4, ["parallel=ring", "checkpoint=full"]),
    "fsdp2-x-tp2": (4, 8, ["parallel=fsdp_tp"]),
    "fsdp2-x-ring2": (4, 8, ["parallel=fsdp", "parallel.sp=2", "parallel.sp_impl=ring"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_single_process(case, reference, tmp_path):
    nproc, ref_mb, overrides = CASES[case]
    result = torchrun_worker(nproc, tmp_path / "result.pt", *TINY, *STEPS, "trainer.micro_batch_size=4", *overrides, timeout=500)
    assert_matches(result, reference[ref_mb], case)
