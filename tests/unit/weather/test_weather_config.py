"""Weather configs: bad combinations are refused naming the keys; the estimator sizes Pangu at 0.25 degrees."""

from __future__ import annotations

import pytest

from memtrain.config.errors import ConfigError
from memtrain.config.loader import load_config
from memtrain.memory.estimator import estimate


@pytest.mark.parametrize("overrides,key", [
    (["model=pangu_tiny", "data=protein"], "'data'"),
    (["model=pangu_tiny", "data=era5", "data.levels=[1000,500]"], "'data.levels'"),
    (["model=pangu_tiny", "data=era5", "model.n_lon=72"], "'model.n_lon'"),
    (["model=fuxi_tiny", "data=era5", "model.heads=3"], "'model.heads'"),
    (["model=gpt_tiny", "data=era5"], "'data'"),
    # spatial parallelism: weather (Pangu) only, latitude tokens a multiple of 2 x window x degree
    (["model=gpt_tiny", "parallel=spatial", "launcher.nproc_per_node=2"], "'parallel.spatial'"),
    (["model=fuxi_tiny", "data=era5", "parallel=spatial", "launcher.nproc_per_node=2"], "'parallel.spatial'"),
    (["model=pangu_tiny", "data=era5", "parallel=spatial", "launcher.nproc_per_node=2"], "'model.n_lat'"),
    (["model=pangu_tiny", "data=era5", "parallel=spatial", "parallel.spatial=2", "launcher.nproc_per_node=2",
      "model.n_lat=66"], "'model.n_lat'"),
    (["model=pangu_tiny", "data=era5", "parallel=ddp", "parallel.spatial=2", "launcher.nproc_per_node=2"], "'parallel.spatial'"),
    (["model=pangu_tiny", "data=era5", "parallel=spatial", "parallel.dp_replicate=2", "parallel.spatial=2",
      "launcher.nproc_per_node=4", "model.n_lat=64"], "'parallel.dp_replicate'"),
])
def test_bad_weather_combinations_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config([*overrides, "trainer.device=cpu"])


def test_spatial_pangu_grid_that_divides_is_accepted_and_splits_the_blocks():
    base = ["model=pangu_tiny", "data=era5", "trainer.device=cpu", "model.n_lat=64"]
    one = estimate(load_config(base))
    two = estimate(load_config([*base, "parallel=spatial", "launcher.nproc_per_node=2"]))
    assert two.activations < one.activations


def test_estimator_sizes_pangu_at_quarter_degree():
    base = ["+recipe=weather_swin", "trainer.device=cpu"]
    plain = estimate(load_config([*base, "precision=fp32", "activation_checkpoint=none"]))
    bf16 = estimate(load_config([*base, "precision=bf16", "activation_checkpoint=none"]))
    ckpt = estimate(load_config([*base, "precision=bf16", "activation_checkpoint=full"]))
    assert 63e6 < plain.n_params < 65e6
    # activations dominate at 721 x 1440 and each technique lowers the device total
    assert plain.activations > 10 * (plain.params + plain.grads + plain.optimizer)
    assert plain.total > bf16.total > ckpt.total
    assert 20 * 2**30 < plain.total < 200 * 2**30  # tens of GiB without any technique
