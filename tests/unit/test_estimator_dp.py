"""`memtrain estimate` with data parallelism and offloading: per-rank bytes, checked against the
ZeRO paper's Figure 1 and against counts made here from the model's parameter shapes."""

from __future__ import annotations

import math

import pytest
import torch

from memtrain.config.errors import ConfigError
from memtrain.config.loader import compose_config
from memtrain.memory.estimator import estimate
from memtrain.models import get_spec

# Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
# Figure 1: model-state memory per device for a 7.5B-parameter model, Adam (K = 12), mixed
# precision, 64 data-parallel devices. GB = 1e9 bytes.
FIGURE_1_GB = {"ddp": 120, "zero1": 31.4, "zero2": 16.6, "zero3": 1.9}
MODEL_7_5B = ["model=gpt_small", "model.dim=4096", "model.n_layers=36", "model.n_heads=32",
              "model.vocab_size=32000", "precision=fp16", "optimizer=adamw",
              "launcher.nproc_per_node=8", "launcher.nnodes=8"]


def model_states(est) -> int:
    return est.params + est.grads + est.optimizer


# the terms the paper counts: parameters, gradients and K = 12 bytes of optimizer state (fp32 master
# copy and Adam's moments), each partitioned as the stage does; not DeepSpeed's buffers (the reduce
# bucket, the fp32 gradient of the step, ZeRO-3's gathered parameters)
PAPER_TERMS = {"parameters (flat, model dtype)", "parameter partition", "fp32 master partition", "optimizer state",
               "reduced gradient partition", "gradient partition buffer"}


@pytest.mark.parametrize("parallel", FIGURE_1_GB)
def test_zero_paper_figure_1(parallel):
    est = estimate(compose_config([*MODEL_7_5B, f"parallel={parallel}"]))
    assert est.n_params == pytest.approx(7.5e9, rel=0.01)
    assert est.world_size == 64 and est.dp_replicate * est.dp_shard == 64
    if parallel == "ddp":
        assert model_states(est) / 1e9 == pytest.approx(FIGURE_1_GB[parallel], rel=0.03)
        return
    counted = sum(t["nbytes"] for t in est.model_state_terms if t["label"] in PAPER_TERMS)
    # DeepSpeed's stage 1 keeps only its own partition's reduced gradients (grads_in_partition;
    # measured: the same storages as stage 2), not the paper's whole 2-byte gradient: stage 2's figure
    expected = FIGURE_1_GB["zero2" if parallel == "zero1" else parallel]
    assert counted / 1e9 == pytest.approx(expected, rel=0.03)
    assert model_states(est) + est.gathered > counted  # plus the buffers DeepSpeed allocates besides


def shapes_by_unit(cfg) -> tuple[list[torch.Size], list[list[torch.Size]]]:
    """(root's own parameter shapes, each block's) from a build on the meta device."""
    with torch.device("meta"):
        model = get_spec(cfg.model.arch).build_model(cfg.model)
    blocks = [[p.shape for p in block.parameters()] for block in model.layers]
    root = [p.shape for name, p in model.named_parameters() if not name.startswith("layers.")]
    return root, blocks


def test_fsdp_shards_the_model_states_and_adds_the_gathered_blocks(compose):
    # vocab 50 is not a multiple of 4: the embedding and output shards are padded to 13 rows
    cfg = compose("parallel=fsdp", "launcher.nproc_per_node=4", "precision=bf16", "model.vocab_size=50")
    est, single = estimate(cfg), estimate(compose("precision=bf16", "model.vocab_size=50"))
    root, blocks = shapes_by_unit(cfg)
    shards = [(math.ceil(s[0] / 4), *s[1:]) for s in [*root, *(s for b in blocks for s in b)]]
    n_shard = sum(math.prod(s) for s in shards)
    # fp32 sharded parameters and gradients; Adam's two fp32 moments and a float32 step per tensor
    assert (est.params, est.grads, est.optimizer) == (4 * n_shard, 4 * n_shard, 8 * n_shard + 4 * len(shards))
    assert model_states(est) == pytest.approx(model_states(single) / 4, rel=0.02)
    # bf16 gathered: the root's parameters and the largest block twice (current + prefetched),
    # plus the largest unit's unsharded fp32 gradient for the reduce-scatter
    root_n, block_n = sum(math.prod(s) for s in root), max(sum(math.prod(s) for s in b) for b in blocks)
    assert est.gathered == 2 * (root_n + 2 * block_n) + 4 * max(root_n, block_n)
    assert est.total == model_states(est) + est.gathered + est.activations
    # each rank runs its own micro-batch, computing with bf16 parameters as pure bf16 would
    pure_bf16 = estimate(compose("precision=bf16", "precision.param_dtype=bfloat16", "model.vocab_size=50"))
    assert est.activations == pure_bf16.activations

    kept = estimate(compose("parallel=fsdp", "launcher.nproc_per_node=4", "precision=bf16", "model.vocab_size=50",
                            "parallel.reshard_after_forward=false"))
    assert kept.gathered == 2 * est.n_params + 4 * max(root_n, block_n)


def test_hsdp_shards_only_over_dp_shard(compose):
    hsdp = estimate(compose("parallel=hsdp", "launcher.nproc_per_node=4", "launcher.nnodes=2"))
    fsdp4 = estimate(compose("parallel=fsdp", "launcher.nproc_per_node=4"))
    fsdp8 = estimate(compose("parallel=fsdp", "launcher.nproc_per_node=4", "launcher.nnodes=2"))
    assert (hsdp.world_size, hsdp.dp_replicate, hsdp.dp_shard) == (8, 2, 4)
    assert (hsdp.params, hsdp.grads, hsdp.optimizer, hsdp.gathered) == \
        (fsdp4.params, fsdp4.grads, fsdp4.optimizer, fsdp4.gathered)
    assert model_states(fsdp8) < model_states(hsdp)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_zero_keeps_an_fp32_master_partition_in_every_precision(compose, precision, optimizer):
    """DeepSpeed copies its partition to fp32 also when the model is fp32 (a clone, measured in
    tests/distributed/test_zero.py); the optimizer's state is that of one flat fp32 partition."""
    est = estimate(compose("parallel=zero1", "launcher.nproc_per_node=4", f"precision={precision}",
                           f"optimizer={optimizer}"))
    terms = {t["label"]: t for t in est.model_state_terms}
    part = math.ceil(est.n_params / 4)
    assert terms["fp32 master partition"]["nbytes"] == 4 * part
    state = 2 * 4 * part + 4 if optimizer == "adamw" else 4 * part + 4  # Adafactor: a vector's full variance
    assert terms["optimizer state"]["nbytes"] == state
    assert est.optimizer == 4 * part + state


OFFLOAD_CASES = ["zero1-optimizer_cpu", "zero2-optimizer_cpu", "zero3-optimizer_cpu", "zero3-params_cpu",
                 "zero3-nvme", "fsdp-params_cpu"]


def zero_counts(est, cfg, b: int = 2) -> tuple[int, int, int, int]:
    """(N, P = ceil(N / 4), largest parameter, reduce bucket bytes) counted here."""
    root, blocks = shapes_by_unit(cfg)
    largest = max(math.prod(s) for s in [*root, *(s for blk in blocks for s in blk)])
    return est.n_params, math.ceil(est.n_params / 4), largest, 500_000_000 * b


@pytest.mark.parametrize("case", OFFLOAD_CASES)
def test_offload_moves_model_states_off_the_device(compose, case):
    parallel, offload = case.split("-")
    common = [f"parallel={parallel}", "launcher.nproc_per_node=4", "precision=bf16"]
    base, off = estimate(compose(*common)), estimate(compose(*common, f"offload={offload}"))
    if parallel == "fsdp":
        assert (off.params, off.grads, off.optimizer, off.host, off.nvme) == (0, 0, 0, model_states(base), 0)
    else:
        n, p, largest, bucket = zero_counts(off, compose(*common))
        adam = 2 * 4 * p + 4  # two fp32 moments of the flat partition and the step count
        # device (params, grads, optimizer), then host, nvme; bf16 = 2 bytes
        expected = {
            "zero1-optimizer_cpu": (2 * n, 2 * largest, 0, 4 * p + adam + 4 * p + 2 * p + 2 * largest, 0),
            "zero2-optimizer_cpu": (2 * n, 2 * largest, 0, 4 * p + adam + 4 * p + 2 * p + 2 * largest, 0),
            # ZeRO-3 under optimizer offload: the gradient partition buffer (2 p) on the host too
            "zero3-optimizer_cpu": (2 * p, 0, 0, 4 * p + adam + 4 * p + 2 * p, 0),
            "zero3-params_cpu": (0, 2 * p + 4 * p, 4 * p + adam, 2 * p, 0),
            "zero3-nvme": (0, 0, 0, 4 * p + 2 * p, 2 * p + 4 * p + adam),
        }[case]
        assert (off.params, off.grads, off.optimizer, off.host, off.nvme) == expected
        # the reduce bucket and one autograd gradient stay on the device (and ZeRO-3's gathered set)
        assert off.gathered == base.gathered >= bucket + 2 * largest
    assert off.activations == base.activations
    assert off.total < base.total


def test_activation_offload_keeps_one_block_on_the_device(compose):
    base = estimate(compose("activation_checkpoint=none"))
    off = estimate(compose("activation_checkpoint=none", "offload=activations_cpu"))
    assert off.host == sum(base.activations_per_block) + base.activations_outside_blocks == base.activations
    assert off.activations == max(*base.activations_per_block, base.activations_outside_blocks)
    assert off.total == base.total - base.activations + off.activations


def test_an_offload_the_parallel_option_cannot_use_is_refused(compose):
    with pytest.raises(ConfigError, match="offload.name"):
        estimate(compose("parallel=ddp", "launcher.nproc_per_node=2", "offload=optimizer_cpu"))
