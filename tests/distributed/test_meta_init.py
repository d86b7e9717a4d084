"""trainer.init_device=meta under FSDP2 (gloo, CPU, 2 processes): the model is built on the meta
device, sharded, and only each rank's shards are allocated and initialised (memtrain.engine.init_device),
for the GPT, AlphaFold and the weather models. The multi-process cases run batched
(tests/distributed/batch.py)."""

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


# AlphaFold and Pangu (its Earth-specific bias, position indices and shifted-window masks): one step
# each, on the tiny recipes' shapes (AlphaFold on 24-residue crops of the real structures, Pangu on
# a synthetic 32 x 64 ERA5-format data set written before the launch)
ALPHAFOLD = ["+recipe=alphafold_tiny", "data.crop_size=24", "data.max_msa=6", "trainer.max_steps=1",
             "trainer.warmup_steps=0", "trainer.log_every=1", "trainer.device=cpu"]
PANGU = ["+recipe=weather_swin_tiny", "trainer.micro_batch_size=1", "trainer.max_steps=1", "trainer.warmup_steps=0",
         "trainer.log_every=1", "trainer.device=cpu", "data.root={dir}/era5", "data.stats={dir}/era5/stats.nc",
         "data.synthetic_time_steps=8"]
FAMILIES = batched(__name__, {
    "alphafold": Case(2, "meta_init", (*ALPHAFOLD, "parallel=fsdp", "trainer.init_device=meta")),
    "pangu": Case(2, "meta_init", (*PANGU, "parallel=fsdp", "trainer.init_device=meta"), prepare="era5_32x64"),
})


@pytest.mark.parametrize("case", FAMILIES)
def test_meta_build_of_alphafold_and_pangu_trains_a_step(case, launched):
    """Each rank holds its shards only, filled by the family's initialiser (memtrain.models.reset:
    the init kinds against eager's are tests/unit/test_reset.py's), and the step runs on them."""
    result = launched(case)
    assert InitDevice[result["init_device"]] is InitDevice.meta
    # fully_shard's dim-0 chunks: about half each (a parameter of one row stays whole on rank 0)
    assert result["shard_bytes"] < 0.6 * result["full_bytes"], (result["shard_bytes"], result["full_bytes"])
    assert len(result["losses"]) == 1 and math.isfinite(result["losses"][0]), result["losses"]
    rank0, rank1 = result["heads"]
    random = [n for n, (count, mean, sd) in result["stats"].items() if sd > 0]
    assert len(random) > 10, sorted(result["stats"])
    same = [n for n in random if n in rank1 and rank1[n].numel() == rank0[n].numel() and torch.equal(rank0[n], rank1[n])]
    assert not same, f"both ranks drew the same shard: {same}"


# ZeRO-3 under trainer.init_device=meta: the model built inside deepspeed.zero.Init (DeepSpeed's
# cases run last in the launch, batch.py). The tiny GPT in bf16, so the casts of the eager path
# (param_dtype, then DeepSpeed's bf16) are checked too; fp32 parity with one process is test_zero.py's.
ZERO3 = ["model=gpt_tiny", "data=synthetic", "data.seq_len=32", "data.num_synthetic_tokens=264",
         "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.device=cpu", "parallel=zero3",
         "trainer.max_steps=2", "optimizer.lr=3e-3", "trainer.warmup_steps=0", "precision=bf16"]
ZERO_INIT = batched(__name__, {"zero3-bf16": Case(2, "zero_init", (*ZERO3, "trainer.init_device=meta"))})


@pytest.mark.parametrize("case", ZERO_INIT)
def test_zero_init_partitions_the_eager_weights(case, launched):
    """zero.Init builds each module as the eager build does and partitions it at once: gathered,
    the weights are the eager build's bit for bit (cast to bf16 as DeepSpeed casts a whole model),
    the buffers too (param_dtype, as model.to), the weight-decay groups are the eager ones (by
    whole shape, not the empty placeholders'), and training runs on them."""
    result = launched(case)
    assert InitDevice[result["init_device"]] is InitDevice.meta and result["dtype"] == "torch.bfloat16"
    assert result["names_equal"] and result["params_differ"] == [] and result["buffers_differ"] == [], result
    groups, eager_groups = result["groups"]
    assert groups == eager_groups and groups[0] > 0 and groups[1] > 0, result["groups"]
    assert result["partition_bytes"] == pytest.approx(result["full_bytes"] / 2, rel=0.01)
    # While it is built a rank holds its bf16 partitions, and the one module being built: in fp32
    # and its bf16 cast (1.5 x its fp32 bytes), or gathered by GPT.init_weights' Module.apply; the
    # 1 % of the whole model bounds the few scalars besides. An eager build holds the whole model
    # in fp32 (2 x full_bytes here), which the bound is far below.
    bound = result["partition_bytes"] + 1.5 * result["largest_module_bytes"] + 0.01 * result["full_bytes"]
    assert result["build_peak_bytes"] <= bound < result["full_bytes"], (result["build_peak_bytes"], bound)
    assert len(result["losses"]) == 2 and all(math.isfinite(x) for x in result["losses"]), result["losses"]
