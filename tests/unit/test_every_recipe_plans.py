"""`memtrain estimate` and `memtrain plan` run for every recipe and every model option (plan on the
weather recipes used to crash: the cost model had no FLOPs for them and read AlphaFold's keys)."""

from __future__ import annotations

import math

import pytest

from memtrain.config.loader import CONF_DIR, compose_config, load_config, recipe_names
from memtrain.memory.estimator import estimate
from memtrain.memory.planner import plan

pytestmark = pytest.mark.xdist_group("planner")

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
# the data each model family trains on
DATA = {"gpt": "data=synthetic", "alphafold": "data=structure", "pangu": "data=era5", "fuxi": "data=era5"}
# a small search space: one GPU, the generic axes pinned; AlphaFold's chunking and attention axes
# and the micro-batch split stay free
PINNED = ["hardware.gpus=1", "hardware.gpu_mem_gb=1000", "hardware.host_mem_gb=4000", "precision=bf16",
          "optimizer=adamw", "offload=none", "activation_checkpoint=full"]


def model_overrides(option: str) -> list[str]:
    arch = compose_config([f"model={option}"]).model.arch
    return [f"model={option}", DATA[arch]]


CASES = [[f"+recipe={r}"] for r in recipe_names()] + [model_overrides(m) for m in MODELS]
IDS = [f"recipe={r}" for r in recipe_names()] + [f"model={m}" for m in MODELS]


@pytest.mark.parametrize("overrides", CASES, ids=IDS)
def test_estimate(overrides):
    est = estimate(load_config([*overrides, "trainer.device=cpu"]))
    assert est.n_params > 0 and est.activations > 0
    assert est.total == est.params + est.grads + est.optimizer + est.gathered + est.activations + est.precision_state


def test_plan_on_a_weather_recipe():
    # the regression: a weather recipe plans, and its cost has the weather model's FLOPs
    p = plan(["+recipe=weather_swin_tiny", *PINNED], global_batch=2, verify_top=1)
    assert p.rows and p.mismatched == 0
    assert all(math.isfinite(r.cost.total_s) and r.cost.compute_s > 0 for r in p.rows)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", CASES, ids=IDS)
def test_plan(overrides):
    p = plan([*overrides, *PINNED], global_batch=2, verify_top=1)
    assert p.rows, (p.considered, p.invalid)
    assert p.mismatched == 0
    for row in p.rows:
        assert math.isfinite(row.cost.total_s) and row.cost.compute_s > 0
        # fitted by the step's peak, not the sum of the terms
        assert 0 < row.peak_bytes == row.estimate.peak <= p.hardware["gpu_mem_gb"] * 2**30 * p.hardware["mem_usable"]
