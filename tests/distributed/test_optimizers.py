"""Optimizers under data parallelism (gloo, CPU, 2 processes) against the single-process run of
the same global batch: Adam-mini and SM3 under FSDP2 (per-head statistics across row shards, a
column max across shards), Lion under ZeRO-2 (flat partitions), MeZO under DDP. The sharded runs
take the multi-tensor (foreach) steps on DTensor shards, the single process the per-parameter loop
(and torch's fused AdamW against its for-loop one). The multi-process cases run batched
(tests/distributed/batch.py).

Tolerances as tests/distributed/test_data_parallel.py: fp32 sums reordered across ranks; three
steps later losses agree to 1e-5 relative. A wrong partition (e.g. per-row instead of per-head
statistics on a shard) changes the first update's scale by O(1) and the losses by far more."""

from __future__ import annotations

import pytest

from tests.conftest import TINY
from tests.distributed.batch import Case, batched
from tests.distributed.cases import run

pytestmark = pytest.mark.multiprocess

STEPS = ["trainer.max_steps=3", "trainer.warmup_steps=0", "trainer.grad_accum=2"]
OPTIMIZERS = {
    "adam_mini-fsdp": (["optimizer=adam_mini", "optimizer.lr=1e-2"], ["parallel=fsdp"]),
    "sm3-fsdp": (["optimizer=sm3", "optimizer.lr=1e-2"], ["parallel=fsdp"]),
    "came-fsdp": (["optimizer=came", "optimizer.lr=1e-2"], ["parallel=fsdp"]),
    "lion-fsdp": (["optimizer=lion", "optimizer.lr=1e-3"], ["parallel=fsdp"]),
    "adamw_bf16-fsdp": (["optimizer=adamw_bf16", "optimizer.lr=1e-2", "optimizer.stochastic_rounding=false"], ["parallel=fsdp"]),
    "adamw-fsdp": (["optimizer=adamw", "optimizer.lr=1e-2"], ["parallel=fsdp"]),  # torch's fused step on DTensor shards
    "lion-zero2": (["optimizer=lion", "optimizer.lr=1e-3"], ["parallel=zero2"]),
    # one seed on every rank and the loss of the whole batch: the same SPSA step as one process
    "mezo-ddp": (["optimizer=mezo", "optimizer.lr=1e-3"], ["parallel=ddp"]),
}
FAST = {"adam_mini-fsdp"}
CASES = {
    name: Case(2, "train", (*TINY, *STEPS, *optimizer, *parallel, "trainer.micro_batch_size=4"), slow=name not in FAST,
               requires=("deepspeed",) if parallel[0].startswith("parallel=zero") else ())
    for name, (optimizer, parallel) in OPTIMIZERS.items()
}


def per_parameter_loop(optimizer: list[str]) -> list[str]:
    """Overrides for the reference's step: torch's for-loop AdamW (fused=false), memtrain's own
    optimizers parameter by parameter (foreach=false); MeZO has neither."""
    if "optimizer=adamw" in optimizer:
        return ["optimizer.fused=false"]
    return [] if "optimizer=mezo" in optimizer else ["optimizer.foreach=false"]


@pytest.mark.parametrize("case", batched(__name__, CASES))
def test_matches_single_process(case, launched, tmp_path):
    optimizer, _ = OPTIMIZERS[case.split("::")[1]]
    # the reference steps parameter by parameter; the sharded run takes the default multi-tensor /
    # fused step on DTensor shards
    ref = run(str(tmp_path / "single.pt"), [*TINY, *STEPS, *optimizer, *per_parameter_loop(optimizer),
                                            "trainer.micro_batch_size=8"])
    result = launched(case)
    assert result["losses"] == pytest.approx(ref["losses"], rel=1e-5), case
    assert ref["losses"][-1] != ref["losses"][0]  # the optimizer moved the weights
