"""How `memtrain plan` builds its candidates without a Hydra composition or an OmegaConf copy
each: read-only views of one composed config, group options composed from their files exactly as
Hydra composes them, and the micro-batch loop cut at the first micro-batch that does not fit.
Every shortcut is checked against the slow path it replaces."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from memtrain.config.errors import ConfigError
from memtrain.config.loader import CONF_DIR, load_config, recipe_names
from memtrain.memory import planner
from memtrain.memory.cfgview import ConfigView
from memtrain.memory.estimator import estimate
from memtrain.memory.planner import PLANNED_GROUPS, plan
from tests.conftest import TINY

pytestmark = pytest.mark.xdist_group("planner")

# keys of every planned group set on the command line, so the group swap must re-apply them
USER_KEYS = ["activation_checkpoint.every_k=3", "parallel.reshard_after_forward=false", "precision.init_scale=1024",
             "optimizer.weight_decay=0.05", "optimizer.lr=0.002"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def hydra_group(composer, group: str, option: str):
    try:
        return OmegaConf.to_container(composer._compose([f"{group}={option}"])[group], resolve=True)
    except ConfigError:
        return None


def check_groups(base: list[str], chosen: dict[str, list[str]] | None = None) -> int:
    composer = planner._Composer(base)
    try:
        assert not composer._hydra_only, composer._hydra_only  # the fast path reproduced every base choice
        checked = 0
        for group in PLANNED_GROUPS:
            for option in (chosen or {}).get(group, options(group)):
                fast = composer._fast_group(group, option)
                assert fast == hydra_group(composer, group, option), (base, group, option)
                checked += 1
        return checked
    finally:
        composer.close()


def test_group_options_compose_as_hydra_composes_them():
    # a recipe's keys (protein_lm sets optimizer.lr) and the command line's keys of every group,
    # on the options whose files differ most from the defaults
    chosen = {"parallel": ["pp_zbv", "fsdp_tp", "ring"], "precision": ["fp16"], "optimizer": ["lion", "sm3", "mezo"],
              "offload": ["optimizer_cpu"], "activation_checkpoint": ["selective"]}
    assert check_groups(["+recipe=protein_lm", *USER_KEYS], chosen) == 9


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [None, *recipe_names()])
def test_every_group_option_of_every_recipe_composes_as_hydra_does(recipe):
    base = [f"+recipe={recipe}"] if recipe else []
    assert check_groups([*base, *USER_KEYS]) == sum(len(options(g)) for g in PLANNED_GROUPS)


def test_a_view_reads_like_the_config_and_replace_copies_only_the_path():
    cfg = load_config([*TINY, "+recipe=protein_lm"])
    view = ConfigView.of(cfg)
    assert view.model.dim == cfg.model.dim and view["trainer"]["micro_batch_size"] == cfg.trainer.micro_batch_size
    assert view.precision.compute_dtype == cfg.precision.compute_dtype  # the same Enum member
    assert "chunk_size" not in view.model and view.model.get("chunk_size", 7) == 7
    with pytest.raises(TypeError):
        view.model = None
    new = view.replace({"trainer.micro_batch_size": 1, "parallel": {"name": "ddp"}})
    assert new.trainer.micro_batch_size == 1 and new.parallel.name == "ddp"
    assert view.trainer.micro_batch_size == cfg.trainer.micro_batch_size and view.parallel.name == "single"
    assert new.model is view.model and new.model.key() == view.model.key()  # untouched nodes are shared
    with pytest.raises(KeyError):
        view.replace({"trainer.no_such_key": 1})


def test_the_estimate_of_a_view_is_the_estimate_of_the_config():
    for overrides in ([*TINY, "parallel=fsdp", "launcher.nproc_per_node=2", "optimizer=adam_mini"],
                      [*TINY, "parallel=zero2", "launcher.nproc_per_node=2", "precision=bf16"],
                      ["+recipe=alphafold_tiny", "parallel=fsdp", "launcher.nproc_per_node=2", "activation_checkpoint=selective"],
                      [*TINY, "model.n_layers=4", "parallel=pp", "parallel.pp=2", "launcher.nproc_per_node=2"]):
        cfg = load_config([*overrides, "trainer.device=cpu"])
        assert estimate(ConfigView.of(cfg)) == estimate(cfg)


def test_verified_rows_estimate_the_same_from_hydra():
    # every row composed again by Hydra: the estimate from its config equals the view's
    p = plan([*TINY, "precision=fp32", "hardware.gpus=2", "hardware.gpu_mem_gb=1", "activation_checkpoint=full",
              "optimizer=adamw"], verify_top=None)
    assert len(p.rows) > 5 and p.mismatched == 0


@pytest.mark.parametrize("base", [
    # AlphaFold (tiny) on 2 GPUs with little memory: larger micro-batches stop fitting
    ["+recipe=alphafold_tiny", "precision=bf16", "optimizer=adamw", "hardware.gpus=2", "hardware.gpu_mem_gb=0.03"],
    # the decoder on 4 GPUs: layouts including pipelines, whose micro-batches split further
    [*(o for o in TINY if not o.startswith("trainer.micro_batch_size")), "model.n_layers=4", "precision=bf16",
     "optimizer=adamw", "offload=none", "hardware.gpus=4", "hardware.gpu_mem_gb=0.0025"],
])
def test_pruning_the_micro_batch_loop_changes_no_row(base, monkeypatch):
    pruned = plan(base, global_batch=16, verify_top=0)
    monkeypatch.setattr(planner, "PRUNE_MICRO_BATCHES", False)
    full = plan(base, global_batch=16, verify_top=0)
    assert pruned.pruned > 0 and full.pruned == 0
    assert [r.overrides for r in pruned.rows] == [r.overrides for r in full.rows] and pruned.rows
    assert pruned.considered + pruned.pruned == full.considered
    assert pruned.smallest.overrides == full.smallest.overrides


def test_the_micro_batch_without_accumulation_is_tried_after_one_that_does_not_fit(monkeypatch):
    """The planner fits the step's peak: with grad_accum > 1 the gradients live through the next
    forward, at grad_accum = 1 they do not. Here (the tiny decoder, 4 tokens per sample, global batch
    8 on one GPU of 1.906 MB usable) 1x8 and 2x4 fit, 4x2 does not (1,914,900 bytes) and 8x1 does
    (1,898,324): pruning after 4x2 must still try 8x1."""
    base = [*(o for o in TINY if not o.startswith(("trainer.micro_batch_size", "data.seq_len"))), "data.seq_len=4",
            "precision=fp32", "optimizer=adamw", "offload=none", "activation_checkpoint=none", "hardware.gpus=1",
            "hardware.mem_usable=1.0", f"hardware.gpu_mem_gb={1_906_612 / 2**30}"]
    pruned = plan(base, global_batch=8, verify_top=0)
    monkeypatch.setattr(planner, "PRUNE_MICRO_BATCHES", False)
    full = plan(base, global_batch=8, verify_top=0)
    assert sorted(r.choices["micro_batch"] for r in full.rows) == ["1x8", "2x4", "8x1"]
    assert [r.choices["micro_batch"] for r in full.too_big] == ["4x2"]
    assert sorted(r.choices["micro_batch"] for r in pruned.rows) == ["1x8", "2x4", "8x1"]
    assert [r.overrides for r in pruned.rows] == [r.overrides for r in full.rows]


def test_a_missing_group_option_is_no_candidate():
    # group options come from conf/<group>/<option>.yaml
    composer = planner._Composer([*TINY])
    try:
        assert composer.group("optimizer", "no_such_optimizer") is None
        assert composer.group("optimizer", "lion")["_target_"].endswith("Lion")
    finally:
        composer.close()
