"""DDP and FSDP2 (gloo, CPU, 2-4 processes) against the single-process run: same losses, same
gradients, for the decoder and (FSDP2) AlphaFold and Pangu; fp16 overflow on one rank skips the step everywhere. The multi-process cases run
batched (tests/distributed/batch.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from tests.distributed.batch import Case, batched
from tests.distributed.cases import run

pytestmark = pytest.mark.multiprocess

STEPS = ["trainer.max_steps=3", "optimizer.lr=1e-2", "trainer.warmup_steps=0"]
TWO = ["trainer.micro_batch_size=4", "trainer.grad_accum=2"]  # per rank: x 2 ranks = the reference's 8 x 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process with the whole batch: micro-batch 8 x grad_accum 2."""
    out = tmp_path_factory.mktemp("single") / "result.pt"
    return run(str(out), [*TINY, *STEPS, "trainer.micro_batch_size=8", "trainer.grad_accum=2"])


def train(nproc: int, *overrides: str, slow: bool = False) -> Case:
    return Case(nproc, "train", (*TINY, *STEPS, "trainer.grad_accum=2", *overrides), slow=slow)


CASES = {
    "ddp": train(2, "parallel=ddp", "trainer.micro_batch_size=4"),
    "fsdp": train(2, "parallel=fsdp", "trainer.micro_batch_size=4"),
    "fsdp-no-reshard": train(2, "parallel=fsdp", "parallel.reshard_after_forward=false", "trainer.micro_batch_size=4",
                             slow=True),
    "fsdp-cpu-offload": train(2, "parallel=fsdp", "offload=params_cpu", "trainer.micro_batch_size=4"),
    "ddp-activations-cpu-checkpoint-full": train(2, "parallel=ddp", "offload=activations_cpu", "activation_checkpoint=full",
                                                 "trainer.micro_batch_size=4"),
    # HSDP's 2-D mesh on 2 ranks (replicated x 1 shard), and on 4 (2 x 2)
    "hsdp-2x1": train(2, "parallel=hsdp", "parallel.dp_replicate=2", "trainer.micro_batch_size=4"),
    "hsdp-2x2": train(4, "parallel=hsdp", "parallel.dp_replicate=2", "trainer.micro_batch_size=2", slow=True),
}


@pytest.mark.parametrize("case", batched(__name__, CASES))
def test_matches_single_process(case, launched, reference):
    result = launched(case)
    assert result["grads"].keys() == reference["grads"].keys(), case
    for name, g in reference["grads"].items():
        # fp32: the same per-token terms, summed across ranks in another order (allreduce /
        # reduce-scatter of 2-4 partial sums): a few ulps of the gradient's scale
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-5, atol=1e-7, msg=f"{case}: {name}")
    # three optimizer steps later the losses still agree to fp32 round-off
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5), case


@pytest.mark.parametrize("case", batched(__name__, {"fp16-skip": Case(2, "fp16_skip", tuple(TINY))}))
def test_fp16_overflow_on_one_rank_skips_the_step_on_every_rank(case, launched):
    results = launched(case)
    assert results == [(True, False, 32768.0), (True, False, 32768.0)]  # skipped, unchanged, scale halved


# The other families under FSDP2, 2 ranks of one sample each against one process of both: AlphaFold
# (dropout off: one process draws one mask for both samples, two ranks one each) and Pangu on the
# same synthetic ERA5 files, written into the case's folder before the launch.
ALPHAFOLD = ["+recipe=alphafold_tiny", "data.crop_size=16", "data.max_msa=4", "trainer.max_steps=2",
             "trainer.warmup_steps=0", "trainer.log_every=1", "model.num_recycles=1", "model.structure_dropout=0.0",
             "trainer.device=cpu"]
PANGU = ["+recipe=weather_swin_tiny", "model.window_size=[2,2,4]", "trainer.max_steps=2", "trainer.warmup_steps=0",
         "trainer.log_every=1", "trainer.device=cpu"]
ERA5 = ["data.root={dir}/era5", "data.stats={dir}/era5/stats.nc", "data.synthetic_time_steps=8"]
FAMILIES = {
    "alphafold-fsdp": (Case(2, "train", (*ALPHAFOLD, "parallel=fsdp", "trainer.micro_batch_size=1")), ALPHAFOLD, []),
    "pangu-fsdp": (Case(2, "train", (*PANGU, *ERA5, "parallel=fsdp", "trainer.micro_batch_size=1"), prepare="era5_32x64"),
                   PANGU, ERA5),
}


@pytest.mark.parametrize("case", batched(__name__, {name: case for name, (case, _, _) in FAMILIES.items()}))
def test_other_families_under_fsdp_match_single_process(case, launched, tmp_path):
    _, base, data = FAMILIES[case.split("::")[-1]]
    result = launched(case)  # the launch writes the case's data files first
    data = [a.replace("{dir}", str(launched.folder(case))) for a in data]  # the files the ranks read
    reference = run(str(tmp_path / "single.pt"), [*base, *data, "trainer.micro_batch_size=2"])
    assert result["grads"].keys() == reference["grads"].keys(), case
    for name, g in reference["grads"].items():
        # fp32: each gradient is the two samples' terms, reduce-scattered over 2 ranks instead of summed
        # in one process's backward; deeper models than the decoder above accumulate more round-off
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-4, atol=1e-6, msg=f"{case}: {name}")
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5), case
