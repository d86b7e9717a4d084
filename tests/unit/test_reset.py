"""AlphaFold's and the weather models' initialisers of a model materialised from the meta device
(memtrain.models.reset, ModelSpec.init_weights): the same parameters and buffers as the eager
build, buffers recomputed exactly, each parameter drawn from the eager build's distribution."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from torch import nn

from memtrain.config.loader import load_config
from memtrain.engine.init_device import materialize
from memtrain.models import get_spec
from memtrain.models.meta import build_on_meta
from memtrain.models.reset import reset_module_tree

FAMILIES = {
    "alphafold": ["+recipe=alphafold_tiny"],
    "pangu": ["+recipe=weather_swin_tiny"],
    "fuxi": ["+recipe=weather_fuxi_tiny"],
}


def builds(overrides: list[str], generator_for, seed: int = 3):
    """(eager model, model built on meta and materialised with `generator_for`), both under `seed`."""
    cfg = load_config([*overrides, "trainer.device=cpu"])
    spec = get_spec(cfg.model.arch)
    torch.manual_seed(seed)
    eager = spec.build_model(cfg.model)
    model = build_on_meta(spec.build_model, cfg.model)
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        spec.init_weights(model, generator_for)
    return eager, model


def own_generators(name: str, tensor: torch.Tensor) -> torch.Generator:
    """A generator per parameter name, as a rank's shards get (memtrain.engine.init_device)."""
    return torch.Generator().manual_seed(zlib.crc32(f"7/{name}".encode()))


@pytest.mark.parametrize("family", FAMILIES)
def test_materialised_model_redraws_the_eager_weights_exactly(family):
    """Without generators (torch's global RNG, as the eager constructors) the modules are reset in
    the order they were built, so every parameter and buffer equals the eager build's bit for bit:
    the two code paths are one."""
    eager, model = builds(FAMILIES[family], None)
    for kind in ("named_parameters", "named_buffers"):
        want, got = dict(getattr(eager, kind)()), dict(getattr(model, kind)())
        assert want.keys() == got.keys(), kind
        for name, t in want.items():
            assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


@pytest.mark.parametrize("family", FAMILIES)
def test_materialised_parameters_have_the_eager_init_kinds(family):
    """Each parameter drawn from its own generator (as a rank's shard is) follows the eager
    parameter's init kind: constant where eager is constant (zeros: 'final'/'gating' weights and
    biases; ones: LayerNorm weights, gating biases; IPA's head weights, FuXi's logit scale), else
    the same distribution; buffers (index tables, masks) equal eager's exactly."""
    eager, model = builds(FAMILIES[family], own_generators)
    got = dict(model.named_parameters())
    random = 0
    for name, want in eager.named_parameters():
        t = got[name].detach()
        assert t.shape == want.shape and t.dtype == want.dtype, name
        if torch.all(want == want.flatten()[0]):
            assert torch.all(t == want.flatten()[0]), f"{name}: eager is constant {float(want.flatten()[0])}"
            continue
        random += 1
        assert not torch.equal(t, want), f"{name}: drew the global RNG's values, not its own generator's"
        want = want.detach()
        n, s_want, s_got = want.numel(), float(want.std()), float(t.std())
        # Two independent samples of n values from one distribution (uniform, truncated or plain
        # normal, all of kurtosis <= 3): each sample std has a relative standard error of at most
        # 1/sqrt(2n), their ratio at most 1/sqrt(n); 6 of them (a false alarm ~1e-9 per tensor)
        # still catches a wrong kind (e.g. relu's sqrt(2) or glorot's fan sum: >= 15 % at n >= 1600;
        # smaller tensors are looser, their bound check below is exact)
        assert abs(s_got / s_want - 1) < 6 / math.sqrt(n), (name, n, s_got, s_want)
        assert abs(float(t.mean()) - float(want.mean())) < 6 * s_want * math.sqrt(2 / n), name
        # bounded kinds (uniform, truncated normal) stay within eager's bound: eager's own largest
        # value is within a few % of it at these sizes, so allow 25 % (a relu vs default mix-up is 41 %)
        assert float(t.abs().max()) <= 1.25 * float(want.abs().max()) or n < 32, (name, float(t.abs().max()))
    assert random > 10
    for name, want in eager.named_buffers():
        assert torch.equal(dict(model.named_buffers())[name], want), name


def test_spatial_slabs_recompute_their_window_types_and_masks():
    """Pangu under parallel.spatial (rank 1 of 2): a materialised model's per-rank tables (the window
    types of its latitude slab, the shifted blocks' masks cut to them) equal the eager ones."""
    from memtrain.models.weather.parallelize import slice_to_slabs

    overrides = ["+recipe=weather_swin_tiny", "model.window_size=[2,2,4]"]
    cfg = load_config([*overrides, "trainer.device=cpu"])
    spec = get_spec("pangu")
    eager = spec.build_model(cfg.model)
    slice_to_slabs(eager, 1, 2)
    model = build_on_meta(spec.build_model, cfg.model)
    slice_to_slabs(model, 1, 2)
    materialize(model, torch.device("cpu"), 0, spec.init_weights)
    want, got = dict(eager.named_buffers()), dict(model.named_buffers())
    assert want.keys() == got.keys() and any(k.endswith("type_index") for k in want)
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    masked = [b for b in eager.blocks if b.mask is not None]
    assert masked and all(b.mask.shape[0] == b.attention.type_index.shape[0] for b in masked)


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))


@pytest.mark.parametrize("module", [_Scale(), nn.BatchNorm1d(3)], ids=["own-parameter", "stock-with-buffers"])
def test_a_module_no_initialiser_covers_is_refused(module):
    model = nn.Sequential(nn.Linear(3, 3), module)
    with pytest.raises(TypeError, match=rf"{type(module).__name__} at '1'"):
        reset_module_tree(model)
