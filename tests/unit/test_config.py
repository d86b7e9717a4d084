"""Every option of every config group and every recipe composes, validates and builds."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from memtrain.config.errors import ConfigError
from memtrain.config.loader import CONF_DIR, compose_config, recipe_names
from memtrain.config.validate import validate
from memtrain.memory.estimator import estimate
from memtrain.models import get_spec
from memtrain.optim.builder import build_optimizer

# options that only make sense together (an AlphaFold model trains on structures, DAP splits its representations)
COMPANIONS = {
    ("model", "alphafold"): ["data=structure"],
    ("model", "alphafold_tiny"): ["data=structure"],
    ("data", "structure"): ["model=alphafold_tiny"],
    ("parallel", "dap"): ["model=alphafold_tiny", "data=structure"],
    ("model", "pangu"): ["data=era5"],
    ("model", "pangu_tiny"): ["data=era5"],
    ("model", "fuxi"): ["data=era5"],
    ("model", "fuxi_tiny"): ["data=era5"],
    ("data", "era5"): ["model=pangu_tiny"],
    ("parallel", "tp"): ["model.n_kv_heads=4"],  # tp=4 over the 4 ranks splits the 4 key/value heads
    ("parallel", "tp_sp"): ["model.n_kv_heads=4"],
    ("parallel", "spatial"): ["model=pangu_tiny", "data=era5", "model.n_lat=128"],  # 32 latitude tokens: 2 x 4 x 4 divides
}
GROUPS = ["model", "parallel", "precision", "optimizer", "offload", "activation_checkpoint", "data", "trainer"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_validates_and_builds(group, option):
    world = ["launcher.nproc_per_node=4"] if group == "parallel" and option != "single" else []
    parallel = {"optimizer_cpu": "zero2", "params_cpu": "zero3", "nvme": "zero3", "activations_cpu": "ddp"}
    if group == "offload" and option in parallel:
        world = [f"parallel={parallel[option]}", "launcher.nproc_per_node=4"]
    cfg = compose_config([f"{group}={option}", "trainer.device=cpu", *world, *COMPANIONS.get((group, option), [])])
    if (group, option) == ("precision", "fp8"):  # FP8 GEMMs need a GPU: refused on trainer.device=cpu
        with pytest.raises(ConfigError, match="precision.fp8"):
            validate(cfg)
        return
    validate(cfg)
    # typed by its schema: a typo'd key under this group is refused
    assert OmegaConf.get_type(cfg[group]) is not dict
    with torch.device("meta"):
        model = get_spec(cfg.model.arch).build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    optimizer = build_optimizer(cfg.optimizer, torch.nn.Linear(2, 2), "cpu")
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert estimate(cfg).total > 0


@pytest.mark.parametrize("recipe", recipe_names())
def test_recipe_composes_and_validates(recipe):
    cfg = compose_config([f"+recipe={recipe}", "trainer.device=cpu"])
    validate(cfg)
    assert instantiate(cfg.optimizer) is not None


def test_recipe_protein_lm_selects_its_groups():
    cfg = compose_config(["+recipe=protein_lm"])
    assert cfg.data.source.name == "protein"
    assert cfg.model.dim == 480
    assert cfg.precision.name == "bf16"


def test_gpt_1b_has_about_1_1b_parameters():
    cfg = compose_config(["model=gpt_1b"])
    n = estimate(cfg).n_params
    assert 1.0e9 < n < 1.2e9, n
