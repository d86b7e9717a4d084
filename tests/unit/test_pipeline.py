"""Pipeline parallelism without processes: its configuration errors, the GPT stage split, and the
estimator's schedule rules."""

from __future__ import annotations

import pytest
import torch

from memtrain.config.errors import ConfigError
from memtrain.config.validate import validate
from memtrain.distributed.pipeline import stage_ids
from memtrain.memory.estimator import estimate
from memtrain.memory.pipeline_memory import chunks_in_flight
from memtrain.models import get_spec

PP2 = ["parallel=pp", "launcher.nproc_per_node=2", "model.n_layers=4", "trainer.micro_batch_size=4",
       "parallel.pp_microbatches=2", "data=synthetic"]


@pytest.mark.parametrize("overrides,key,words", [
    (["parallel.pp_schedule=pipedream"], "parallel.pp_schedule", "unknown pipeline schedule"),
    (["parallel.pp_microbatches=3"], "parallel.pp_microbatches", "divisible by parallel.pp_microbatches=3"),
    (["parallel.pp_microbatches=0"], "parallel.pp_microbatches", "at least 1"),
    (["parallel.pp_microbatches=1"], "parallel.pp_microbatches", "1f1b needs at least as many micro-batches"),
    (["model.n_layers=3"], "parallel.pp", "3 blocks do not split evenly"),
    (["parallel.pp_schedule=interleaved_1f1b"], "parallel.pp_stages_per_rank", "at least 2"),
    (["parallel.pp_schedule=zero_bubble"], "parallel.pp_stages_per_rank", "at least 2"),
    (["parallel.pp_schedule=zbv", "parallel.pp_stages_per_rank=3", "model.n_layers=6"],
     "parallel.pp_stages_per_rank", "exactly 2"),
    (["parallel.pp_schedule=gpipe", "parallel.pp_stages_per_rank=2"], "parallel.pp_stages_per_rank", "exactly 1"),
    (["parallel.pp_schedule=interleaved_1f1b", "parallel.pp_stages_per_rank=2", "model.n_layers=8",
      "trainer.micro_batch_size=10", "parallel.pp_microbatches=5"], "parallel.pp_microbatches", "rounds"),
    (["parallel.pp=3"], "parallel", "multiply to 3"),
    (["parallel.name=zero2"], "parallel.pp", "does not compose with parallel=zero2"),
    (["precision=fp16"], "precision.loss_scaling", "loss scaling"),
    (["parallel.name=fsdp", "offload=params_cpu"], "offload.name", "does not work with parallel.pp"),
    (["model.tie_embeddings=true"], "model.tie_embeddings", "first and the last pipeline stage"),
    (["trainer.resume=auto"], "trainer.resume", "not supported yet"),
])
def test_bad_pipeline_configs_are_refused(compose, overrides, key, words):
    cfg = compose(*PP2, *overrides, tiny=False)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == key, err.value
    assert words in str(err.value)


def test_pipeline_needs_a_model_with_a_split(compose):
    cfg = compose("model=alphafold_tiny", "data=structure", "parallel=pp", "launcher.nproc_per_node=2",
                  "trainer.micro_batch_size=4", "parallel.pp_microbatches=2", tiny=False)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == "parallel.pp"
    assert "model.arch=alphafold does not support parallel.pp" in str(err.value) and err.value.allowed == ["gpt"]


@pytest.mark.parametrize("schedule,v", [("gpipe", 1), ("1f1b", 1), ("interleaved_1f1b", 2), ("zero_bubble", 2),
                                        ("zbv", 2)])
def test_good_pipeline_configs_validate(compose, schedule, v):
    validate(compose(*PP2, f"parallel.pp_schedule={schedule}", f"parallel.pp_stages_per_rank={v}", tiny=False))


def test_stage_placement_matches_torch():
    from torch.distributed.pipelining._utils import generate_stage_to_rank_mapping

    for style in ("loop", "v"):
        mapping = generate_stage_to_rank_mapping(4, 8, style=style)
        for rank in range(4):
            assert sorted(stage_ids(rank, 4, 2, style)) == sorted(s for s, r in mapping.items() if r == rank)


def test_gpt_stages_compose_to_the_model(compose):
    """The stages run one after the other are the whole model, parameters under the same names."""
    cfg = compose("model.n_layers=4")
    spec = get_spec("gpt")
    torch.manual_seed(0)
    model = spec.build_model(cfg.model)
    stages = spec.pipeline_fn(model, [0, 1, 2, 3], 4)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 16))
    x = tokens
    for stage in stages:
        x = stage(x)
    torch.testing.assert_close(x, model(tokens), rtol=0, atol=0)  # the same operations in the same order
    names = {n for s in stages for n, _ in s.named_parameters()}
    assert names == {n for n, _ in model.named_parameters()}
    assert stages[0].tok_embeddings is not None and stages[1].output is None and stages[3].output is not None


def test_in_flight_micro_batches_by_schedule():
    pp, m = 4, 8
    assert [chunks_in_flight("gpipe", pp, m, 1, r) for r in range(pp)] == [8, 8, 8, 8]  # all micro-batches
    assert [chunks_in_flight("1f1b", pp, m, 1, r) for r in range(pp)] == [4, 3, 2, 1]  # pp - r
    assert chunks_in_flight("1f1b", pp, 2, 1, 0) == 2  # fewer micro-batches than stages
    # interleaved, v = 2: (v - 1) pp + 2 (pp - 1) + 1 = 11 chunks of half a stage on rank 0,
    # i.e. pp + (pp - 1) / v = 5.5 micro-batches of the rank's layers (Narayanan et al. 2021)
    assert chunks_in_flight("interleaved_1f1b", pp, m, 2, 0) == 11
    # ZB-1P: rank 0 holds v pp chunks = pp micro-batches of its layers, as 1F1B (Qi et al. 2024)
    assert chunks_in_flight("zero_bubble", pp, m, 2, 0) == 8
    assert [chunks_in_flight("zbv", pp, m, 2, r) for r in range(pp)] == [8, 8, 8, 8]
    assert chunks_in_flight("gpipe", pp, 2, 1, 0) == 2


def test_estimator_by_schedule(compose):
    base = ["model=gpt_small", "parallel=pp", "launcher.nproc_per_node=2", "parallel.pp_microbatches=8"]
    single = estimate(compose("model=gpt_small", tiny=False))
    gpipe = estimate(compose(*base, "parallel.pp_schedule=gpipe", tiny=False))
    one_f = estimate(compose(*base, "parallel.pp_schedule=1f1b", tiny=False))
    zbv = estimate(compose(*base, "parallel.pp_schedule=zbv", "parallel.pp_stages_per_rank=2", tiny=False))
    # parameters: half the blocks, and the embedding or the head (same size here: V x D each)
    assert single.params / 2 * 0.99 < one_f.params <= single.params / 2
    # GPipe keeps all 8 micro-batches of 1/8 of the batch for half the blocks: half the single
    # run's block activations; 1F1B keeps pp = 2 of them on the first rank, a quarter of that
    assert gpipe.activations == pytest.approx(single.activations / 2, rel=0.02)
    assert one_f.activations == pytest.approx(gpipe.activations / 4, rel=0.05)
    assert zbv.activations == pytest.approx(one_f.activations, rel=0.05)
    # one boundary on each rank: micro_batch_size x seq_len x dim fp32 values per step
    cfg = compose(*base, tiny=False)
    boundary = cfg.trainer.micro_batch_size * cfg.data.seq_len * cfg.model.dim * 4
    assert one_f.comm_bytes == {"pp": {"send_recv_activations": boundary}}
    # ZB-V rank 1 holds the middle stages 1 and 2 of 4, each sending activations and gradients
    assert zbv.comm_bytes == {"pp": {"send_recv_activations": 4 * boundary}}
