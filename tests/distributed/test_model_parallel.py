"""Tensor parallelism (with and without Megatron sequence parallelism), Ulysses and Ring Attention
on 2 gloo processes, and FSDP x TP and FSDP x Ring on 4, against the single-process run of the same
model. The multi-process cases run batched (tests/distributed/batch.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from tests.distributed.batch import Case, Lazy, batched
from tests.distributed.cases import check_rank_sums, run

pytestmark = pytest.mark.multiprocess

STEPS = ["trainer.max_steps=3", "optimizer.lr=1e-2", "trainer.warmup_steps=0", "trainer.grad_accum=2"]


@pytest.mark.parametrize("case", batched(__name__, {"cp-attention": Case(2, "cp_attention")}))
def test_ulysses_and_ring_attention_match_sdpa_on_the_whole_sequence(case, launched):
    # every rank asserted its shard's output and gradients (a failure names the check and the rank)
    assert launched(case) == [f"{impl} h4 kv{kv}" for kv in (4, 2, 1) for impl in ("ring", "ulysses")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process; micro-batch 4 (what each tp/cp rank also reads) and 8 (two fsdp ranks' worth)."""
    root = tmp_path_factory.mktemp("single")
    return Lazy(lambda mb: run(str(root / f"mb{mb}.pt"), [*TINY, *STEPS, f"trainer.micro_batch_size={mb}"]))


def assert_matches(result, reference, case):
    assert result["grads"].keys() == reference["grads"].keys(), case
    for name, g in reference["grads"].items():
        # fp32: the same products, with partial sums over tp shards (all-reduce / reduce-scatter),
        # blockwise softmax merges (ring) or other summation orders: a few ulps of the gradient's scale
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-5, atol=1e-7, msg=f"{case}: {name}")
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5), case


def mp(nproc: int, *overrides: str, slow: bool = False) -> Case:
    return Case(nproc, "train", (*TINY, *STEPS, "trainer.micro_batch_size=4", *overrides), slow=slow)


CASES = {  # name: (the reference's micro-batch, the case)
    "tp2": (4, mp(2, "parallel=tp", slow=True)),
    "tp2-sequence-parallel": (4, mp(2, "parallel=tp_sp")),
    "ulysses2": (4, mp(2, "parallel=ulysses", slow=True)),
    "ring2-checkpoint-full": (4, mp(2, "parallel=ring", "activation_checkpoint=full")),
    "fsdp2-x-tp2": (8, mp(4, "parallel=fsdp_tp")),
    "fsdp2-x-ring2": (8, mp(4, "parallel=fsdp", "parallel.cp=2", "parallel.cp_impl=ring", slow=True)),
}
REFERENCE_MB = {f"model_parallel::{name}": mb for name, (mb, _) in CASES.items()}


@pytest.mark.parametrize("case", batched(__name__, {name: c for name, (_, c) in CASES.items()}))
def test_matches_single_process(case, launched, reference):
    assert_matches(launched(case), reference[REFERENCE_MB[case]], case)


SUMS = {  # the step's sums over ranks where ranks share targets (tp) or split them (cp)
    "sums-tp2": Case(2, "rank_sums", (*TINY, *STEPS, "trainer.micro_batch_size=4", "parallel=tp")),
    "sums-ring2": Case(2, "rank_sums", (*TINY, *STEPS, "trainer.micro_batch_size=4", "parallel=ring")),
}


@pytest.mark.parametrize("case", batched(__name__, SUMS))
def test_sums_over_ranks_count_shared_targets_once(case, launched):
    check_rank_sums(launched(case), case)
