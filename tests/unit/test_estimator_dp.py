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


@pytest.mark.parametrize("parallel", FIGURE_1_GB)
def test_zero_paper_figure_1(parallel):
    est = estimate(compose_config([*MODEL_7_5B, f"parallel={parallel}"]))
    assert est.n_params == pytest.approx(7.5e9, rel=0.01)
    assert est.world_size == 64 and est.dp_replicate * est.dp_shard == 64
    assert model_states(est) / 1e9 == pytest.approx(FIGURE_1_GB[parallel], rel=0.03)


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


def test_zero_in_fp32_keeps_no_master_copy(compose):
    ddp = estimate(compose("parallel=ddp", "launcher.nproc_per_node=4"))
    zero3 = estimate(compose("parallel=zero3", "launcher.nproc_per_node=4"))
    assert model_states(zero3) == pytest.approx(model_states(ddp) / 4, rel=0.02)  # 4 + 4 + 8 bytes, sharded


def test_adafactor_under_zero_adds_the_fp32_master_copy(compose):
    ada = estimate(compose("parallel=zero1", "launcher.nproc_per_node=4", "precision=bf16", "optimizer=adafactor"))
    ada_fp32 = estimate(compose("parallel=zero1", "launcher.nproc_per_node=4", "precision=fp32", "optimizer=adafactor"))
    master = 4 * ada.n_params / 4  # 4 bytes per parameter, partitioned over 4 ranks
    assert ada.optimizer - ada_fp32.optimizer == pytest.approx(master, rel=0.02)


OFFLOAD_CASES = ["zero1-optimizer_cpu", "zero2-optimizer_cpu", "zero3-optimizer_cpu", "zero3-params_cpu",
                 "zero3-nvme", "fsdp-params_cpu"]


@pytest.mark.parametrize("case", OFFLOAD_CASES)
def test_offload_moves_model_states_off_the_device(compose, case):
    parallel, offload = case.split("-")
    common = [f"parallel={parallel}", "launcher.nproc_per_node=4", "precision=bf16"]
    base, off = estimate(compose(*common)), estimate(compose(*common, f"offload={offload}"))
    cpu_grads = 2 * base.grads if parallel in ("zero2", "zero3") else 0  # fp32 copy of the bf16 partition
    # device (params, grads, optimizer), then host, nvme
    expected = (0, 0, 0, model_states(base), 0) if parallel == "fsdp" else {
        "optimizer_cpu": (base.params, base.grads, 0, base.optimizer + cpu_grads, 0),
        "params_cpu": (0, base.grads, 0, base.params + base.optimizer + cpu_grads, 0),
        "nvme": (0, base.grads, 0, cpu_grads, base.params + base.optimizer),
    }[offload]
    assert (off.params, off.grads, off.optimizer, off.host, off.nvme) == expected
    assert off.gathered == base.gathered and off.activations == base.activations
    assert off.total < base.total


def test_activation_offload_keeps_one_block_on_the_device(compose):
    base = estimate(compose("checkpoint=none"))
    off = estimate(compose("checkpoint=none", "offload=activations_cpu"))
    assert off.host == sum(base.activations_per_block) + base.activations_outside_blocks == base.activations
    assert off.activations == max(*base.activations_per_block, base.activations_outside_blocks)
    assert off.total == base.total - base.activations + off.activations


def test_an_offload_the_parallel_option_cannot_use_is_refused(compose):
    with pytest.raises(ConfigError, match="offload.name"):
        estimate(compose("parallel=ddp", "launcher.nproc_per_node=2", "offload=optimizer_cpu"))
