"""trainer.init_device=meta under FSDP2 (gloo, CPU, 2 processes): the model is built on the meta
device, sharded, and only each rank's shards are allocated and initialised (memtrain.engine.init_device).
The multi-process cases run batched (tests/distributed/batch.py)."""

from __future__ import annotations

import math

import pytest
import torch

from memtrain.config.schema import InitDevice
from tests.distributed.batch import Case, batched

pytestmark = pytest.mark.multiprocess

# gpt_tiny (~0.8M parameters, 3.2 MB in fp32); a synthetic data set of 8 windows (264 tokens, 2 KB),
# which the model learns within a few steps
MODEL = ["model=gpt_tiny", "data=synthetic", "data.seq_len=32", "data.num_synthetic_tokens=264",
         "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.device=cpu", "parallel=fsdp",
         "trainer.max_steps=6", "optimizer.lr=3e-3", "trainer.warmup_steps=0"]

META = batched(__name__, {"meta": Case(2, "meta_init", (*MODEL, "trainer.init_device=meta"))})
EAGER = batched(__name__, {"eager": Case(2, "meta_init", (*MODEL, "trainer.init_device=eager"))})


@pytest.mark.parametrize("case", META)
def test_meta_build_never_allocates_the_whole_model(case, launched):
    result = launched(case)
    assert InitDevice[result["init_device"]] is InitDevice.meta
    full, shard = result["full_bytes"], result["shard_bytes"]
    assert shard == pytest.approx(full / 2, rel=0.01)  # fully_shard's dim-0 chunks of even sizes: half each
    # Construction allocates the rank's shards plus what is not the model: the data set's 264 int64
    # tokens (2 KB) and a few scalars; 1 % of the full model (32 KB) bounds them with room. The peak
    # must be the shard's, far below the whole model, which an eager build holds on every rank
    # (test_eager_build_holds_the_whole_model: the measurement tells the two apart).
    assert shard <= result["peak_bytes"] < shard + 0.01 * full, (result["peak_bytes"], shard, full)


@pytest.mark.parametrize("case", EAGER)
def test_eager_build_holds_the_whole_model(case, launched):
    result = launched(case)
    assert InitDevice[result["init_device"]] is InitDevice.eager
    assert result["peak_bytes"] >= result["full_bytes"], (result["peak_bytes"], result["full_bytes"])


@pytest.mark.parametrize("case", META)
def test_meta_shards_have_the_init_schemes_statistics_and_differ_across_ranks(case, launched):
    result = launched(case)
    std, residual = 0.02, 0.02 / math.sqrt(2 * result["n_layers"])  # GPT.init_weights: N(0, 0.02), wo/w2 / sqrt(2L)
    for name, (n, mean, sd) in result["stats"].items():
        if name.endswith("norm.weight"):
            assert (mean, sd) == (1.0, 0.0), name  # RMSNorm weights: ones
            continue
        want = residual if name.endswith(("wo.weight", "w2.weight")) else std
        # a sample std of n >= 4096 normal values is within 5 % of sigma with > 4 standard errors
        # (relative standard error 1/sqrt(2n) <= 1.1 %); the mean within 5 standard errors of 0
        assert sd == pytest.approx(want, rel=0.05), (name, n, sd)
        assert abs(mean) < 5 * want / math.sqrt(n), (name, n, mean)
    rank0, rank1 = result["heads"]
    for name, values in rank0.items():
        if not name.endswith("norm.weight"):
            assert not torch.equal(values, rank1[name]), f"{name}: both ranks drew the same shard"


@pytest.mark.parametrize("case", META)
def test_meta_build_trains(case, launched):
    losses = launched(case)["losses"]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0] - 0.3, losses  # from ~ln(64) = 4.16: it learns the 8 windows (264 tokens)


HSDP = batched(__name__, {"hsdp-2x1": Case(2, "meta_init", (*MODEL, "trainer.init_device=meta", "parallel=hsdp",
                                                              "parallel.dp_replicate=2", "parallel.dp_shard=1"))})


@pytest.mark.parametrize("case", HSDP)
def test_meta_build_replicas_agree(case, launched):
    """HSDP over 2 replicas of 1 shard: the generators are seeded from the sharded mesh dimensions
    only, so the replicas draw the same weights without communicating."""
    result = launched(case)
    rank0, rank1 = result["heads"]
    assert rank0.keys() == rank1.keys()
    for name, values in rank0.items():
        assert torch.equal(values, rank1[name]), f"{name}: the replicas differ"
