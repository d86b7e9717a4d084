"""trainer.init_device (memtrain.config.init_device, memtrain.engine.init_device): auto keeps eager for small models (the
parity tests' bit-identical weights) and picks meta only for layouts that shard parameters
(FSDP2, ZeRO-3) whose full fp32 states exceed the budget; meta is refused where it cannot run;
estimate's start-up term of the whole model vanishes under meta."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from memtrain.config.errors import ConfigError
from memtrain.config.loader import load_config
from memtrain.config.schema import InitDevice
from memtrain.config.init_device import FULL_STATE_BYTES, GIB, budget_bytes, choose_init_device, meta_refusal
from memtrain.engine.init_device import materialize
from memtrain.machine import device_memory_bytes
from memtrain.memory.estimator import estimate
from memtrain.memory.host_memory import host_estimate
from memtrain.models import get_spec
from memtrain.models.meta import build_on_meta

TINY_FSDP = ["model=gpt_tiny", "parallel=fsdp", "launcher.nproc_per_node=2", "trainer.device=cpu"]


def n_params(cfg) -> int:
    return sum(p.numel() for p in build_on_meta(get_spec(cfg.model.arch).build_model, cfg.model).parameters())


def choice(cfg) -> InitDevice:
    return choose_init_device(cfg, n_params(cfg), budget_bytes(cfg, device_memory_bytes(torch.device("cpu"))))


def test_auto_keeps_eager_for_a_tiny_model():
    cfg = load_config(TINY_FSDP)
    assert cfg.trainer.init_device is InitDevice.auto  # the default
    assert choice(cfg) is InitDevice.eager


def test_auto_picks_meta_when_the_budget_is_below_the_full_fp32_states():
    cfg = load_config(TINY_FSDP)
    full_gib = n_params(cfg) * FULL_STATE_BYTES / GIB  # ~0.8M parameters: ~12 MiB
    assert choice(load_config([*TINY_FSDP, f"trainer.init_budget_gb={full_gib * 0.99}"])) is InitDevice.meta
    assert choice(load_config([*TINY_FSDP, f"trainer.init_budget_gb={full_gib * 1.01}"])) is InitDevice.eager
    # a layout that holds the whole model on every rank stays eager whatever the budget
    ddp = ["model=gpt_tiny", "parallel=ddp", "launcher.nproc_per_node=2", "trainer.device=cpu"]
    assert choice(load_config([*ddp, f"trainer.init_budget_gb={full_gib * 0.5}"])) is InitDevice.eager


def test_estimate_says_which_build_auto_picks():
    """`memtrain estimate` names the build trainer.init_device=auto resolves to, in the JSON
    (host_memory.init_device) and on the table's start-up row."""
    from rich.console import Console

    from memtrain import cli
    from memtrain.memory.report import render_table

    full_gib = n_params(load_config(TINY_FSDP)) * FULL_STATE_BYTES / GIB
    for budget, expected in ((full_gib * 0.5, "meta"), (full_gib * 2, "eager")):
        cfg = load_config([*TINY_FSDP, f"trainer.init_budget_gb={budget}"])
        assert host_estimate(cfg, estimate(cfg)).init_device == expected
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["estimate", *TINY_FSDP, f"trainer.init_budget_gb={full_gib * 0.5}", "--json"]) == 0
    assert json.loads(out.getvalue())["host_memory"]["init_device"] == "meta"
    cfg = load_config([*TINY_FSDP, f"trainer.init_budget_gb={full_gib * 0.5}"])
    console = Console(file=io.StringIO(), width=200)
    console.print(render_table(cfg, estimate(cfg)))
    assert "start-up (meta build, wrap)" in console.file.getvalue()


@pytest.mark.parametrize("parallel", ["ddp", "zero2", "single"])
def test_meta_is_refused_where_the_wrapping_needs_the_whole_model(parallel):
    with pytest.raises(ConfigError) as info:
        load_config(["model=gpt_tiny", f"parallel={parallel}", "launcher.nproc_per_node=2", "trainer.device=cpu",
                     "trainer.init_device=meta"] if parallel != "single" else
                    ["model=gpt_tiny", "parallel=single", "trainer.device=cpu", "trainer.init_device=meta"])
    message = str(info.value)
    assert "trainer.init_device" in message and f"parallel={parallel}" in message, message


def test_meta_is_refused_for_a_family_without_an_initialiser():
    cfg = load_config(["+recipe=alphafold_tiny", "parallel=fsdp", "launcher.nproc_per_node=2", "trainer.device=cpu"])
    message = meta_refusal(cfg, has_initialiser=False)
    assert "trainer.init_device" in message and "model.arch=alphafold" in message, message
    assert meta_refusal(cfg, has_initialiser=True) is None


@pytest.mark.parametrize("recipe", ["alphafold_tiny", "weather_swin_tiny", "weather_fuxi_tiny"])
def test_every_family_builds_on_meta_under_fsdp(recipe):
    cfg = load_config([f"+recipe={recipe}", "parallel=fsdp", "launcher.nproc_per_node=2", "trainer.device=cpu",
                       "trainer.init_device=meta"])
    assert choice(cfg) is InitDevice.meta


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_estimate_has_no_whole_model_build_under_meta(device):
    """trainer.device=cpu: eager holds the whole model on each rank at start-up (N x 4 B); meta
    only the shards (the persistent parameters term). trainer.device=auto (the GPU) has no host
    copy either way."""
    base = ["model=gpt_1b", "parallel=fsdp", "launcher.nproc_per_node=8", f"trainer.device={device}"]
    eager = load_config([*base, "trainer.init_device=eager"])
    meta = load_config([*base, "trainer.init_device=meta"])
    est = estimate(eager)
    hosts = {name: host_estimate(cfg, est) for name, cfg in (("eager", eager), ("meta", meta))}
    built = {name: [t for t in h.terms if t["label"].startswith("model built whole")] for name, h in hosts.items()}
    assert built["meta"] == []
    if device == "cpu":
        assert built["eager"][0]["nbytes"] == 4 * est.n_params
        assert hosts["meta"].startup_per_rank < hosts["eager"].startup_per_rank
        assert hosts["meta"].startup_per_rank <= est.n_params * 4 / 8 * 1.01  # the shard: 1/8 of fp32 weights
    else:
        assert built["eager"] == [] and hosts["meta"].startup_per_rank == hosts["eager"].startup_per_rank


@pytest.mark.parametrize("attention", ["performer", "linformer"])
def test_materialised_gpt_recomputes_buffers_and_initialises_every_tensor(attention):
    """A GPT built on the meta device and materialised in one process (plain tensors, the global
    RNG): the Performer's random features are those of an eager build (drawn from the layer's own
    seed), its counters zero, the Linformer projections U(-1/sqrt(N), 1/sqrt(N)), no tensor left
    as to_empty's uninitialised memory."""
    cfg = load_config(["model=gpt_tiny", f"model.attention={attention}", "trainer.device=cpu"])
    spec = get_spec("gpt")
    model = build_on_meta(spec.build_model, cfg.model)
    materialize(model, torch.device("cpu"), 0, spec.init_weights)
    eager = spec.build_model(cfg.model)
    cores = [(layer.attention.core, ref.attention.core) for layer, ref in zip(model.layers, eager.layers)]
    for core, ref in cores:
        if attention == "performer":
            assert torch.equal(core.features, ref.features)
            assert int(core.draws) == 0 and int(core.forwards) == 0
        else:
            bound = 1 / math.sqrt(core.proj_k.shape[1])
            for p in (core.proj_k, core.proj_v):
                assert p.abs().max() <= bound
                # U(-b, b) has std b / sqrt(3); n = 32 x 512 draws: the sample std within 5 % (> 8 standard errors)
                assert float(p.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(t).all(), name
    assert float(model.layers[0].attention.wq.weight.detach().std()) == pytest.approx(0.02, rel=0.05)


def test_zero3_builds_under_zero_init_and_auto_picks_it_past_the_budget():
    """parallel=zero3 takes meta (deepspeed.zero.Init: no family initialiser needed) and auto picks
    it as for FSDP; its estimate trades the whole model and the partitions made beside it for the
    largest module built whole (fp32 and its bf16 cast) next to the partitions."""
    base = ["model=gpt_1b", "parallel=zero3", "launcher.nproc_per_node=8", "trainer.device=cpu", "precision=bf16"]
    assert meta_refusal(load_config(base), has_initialiser=False) is None
    small = ["model=gpt_tiny", "parallel=zero3", "launcher.nproc_per_node=2", "trainer.device=cpu"]
    full_gib = n_params(load_config(small)) * FULL_STATE_BYTES / GIB
    assert choice(load_config([*small, f"trainer.init_budget_gb={full_gib * 0.99}"])) is InitDevice.meta
    assert choice(load_config([*small, f"trainer.init_budget_gb={full_gib * 1.01}"])) is InitDevice.eager
    eager, meta = (load_config([*base, f"trainer.init_device={d}"]) for d in ("eager", "meta"))
    est = estimate(eager)
    hosts = {name: host_estimate(cfg, est) for name, cfg in (("eager", eager), ("meta", meta))}
    labels = {name: {t["label"]: t["nbytes"] for t in h.terms if t["phase"] == "startup"} for name, h in hosts.items()}
    assert "model built whole on each rank (param_dtype)" in labels["eager"]
    assert not any("whole model" in k or k.startswith("model built whole") for k in labels["meta"]), labels["meta"]
    largest = labels["meta"]["largest module built whole inside zero.Init (fp32 and its cast)"]
    vocab, dim = load_config(base).model.vocab_size, load_config(base).model.dim
    assert largest == vocab * dim * (4 + 2)  # the embedding [V, D]: fp32, then bf16
    assert hosts["meta"].startup_per_rank < hosts["eager"].startup_per_rank / 2


@pytest.mark.parametrize("base", [
    ["model=gpt_1b", "launcher.nproc_per_node=8"],
    ["+recipe=alphafold_tiny", "launcher.nproc_per_node=2"],
], ids=["gpt_1b-8", "alphafold_tiny-2"])
def test_zero_init_build_peak_is_the_partitions_and_one_module(base):
    """Under zero.Init the module being built coexists with the partitions built so far, not with
    the fp32 master partition and the gradient buffer deepspeed.initialize makes after the build:
    the start-up peak is the larger of (partitions + the largest module in fp32 and its cast) and
    deepspeed.initialize's persistent terms, never above eager's."""
    cfgs = {d: load_config([*base, "parallel=zero3", "trainer.device=cpu", f"trainer.init_device={d}"])
            for d in ("eager", "meta")}
    est = estimate(cfgs["eager"])
    hosts = {d: host_estimate(cfg, est) for d, cfg in cfgs.items()}
    part = -(-est.n_params // est.world_size)
    largest = max(p.numel() for p in build_on_meta(get_spec(cfgs["meta"].model.arch).build_model,
                                                   cfgs["meta"].model).parameters())
    # fp32 run: the parameter partition, the fp32 master partition and the gradient partition buffer
    # (4 bytes per element each) after deepspeed.initialize; the partitions and one module (fp32, and
    # its cast to the fp32 compute dtype) while zero.Init builds the model
    assert hosts["meta"].startup_per_rank == max(3 * part * 4, part * 4 + largest * (4 + 4))
    assert hosts["meta"].startup_per_rank <= hosts["eager"].startup_per_rank


@pytest.mark.parametrize("recipe", ["model=gpt_tiny", "+recipe=weather_swin_tiny", "+recipe=weather_fuxi_tiny"])
def test_materialised_fp8_layers_start_with_an_empty_amax_history(recipe):
    """precision=fp8 with delayed scaling swaps the blocks' nn.Linear layers for FP8Linear, whose
    amax history buffers the family's initialiser does not know: after to_empty they must still
    start at zero (as an eager swap makes them), not as uninitialised memory, and a family that
    initialises module by module (memtrain.models.reset) must not refuse the swapped layer. The
    swap runs on CPU here; the FP8 matmul itself needs a GPU."""
    from memtrain.precision.fp8 import FP8Linear, swap_to_fp8

    cfg = load_config([recipe, "trainer.device=cpu"])
    spec = get_spec(cfg.model.arch)
    model = build_on_meta(spec.build_model, cfg.model)
    swapped = swap_to_fp8(spec.blocks(model), history=16)
    poison = torch.full((1 << 20,), float("nan"))  # freed memory that to_empty may hand out again
    del poison
    materialize(model, torch.device("cpu"), 0, spec.init_weights)
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    assert len(layers) == swapped > 0
    for layer in layers:
        for name in ("amax_x", "amax_w", "amax_g"):
            assert torch.equal(getattr(layer, name), torch.zeros(16)), name
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(t).all(), name
