"""The ERA5-format reader gives back what the generator wrote, and names file and variable on errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memtrain.data import era5_synthetic as gen
from memtrain.data.era5 import ERA5Fields, ERA5Pairs, latitude_weights, load_stats
from memtrain.data.errors import DataFormatError

LEVELS = [1000, 850, 500]


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_reading_a_generated_file_gives_back_what_was_written(tmp_path, fmt):
    path = gen.write(tmp_path, 16, 24, LEVELS, time_steps=4, fmt=fmt)
    written = gen.fields(16, 24, LEVELS, time_steps=4)
    fields = ERA5Fields(path, gen.UPPER, gen.SURFACE, [850, 500], grid=(16, 24))
    for t in range(4):
        upper, surface = fields.step(t)
        # float32 written and read back: bit-exact
        np.testing.assert_array_equal(upper, np.stack([written[v][t][1:] for v in gen.UPPER]))
        np.testing.assert_array_equal(surface, np.stack([written[v][t] for v in gen.SURFACE]))


def test_lead_time_pairs_and_normalization(tmp_path):
    gen.write(tmp_path, 16, 24, LEVELS, time_steps=5)
    fields = ERA5Fields(tmp_path, ["z", "t"], ["t2m"], LEVELS, grid=(16, 24))
    pairs = ERA5Pairs(fields, lead_time=2, seed=0, stats=load_stats(tmp_path / "stats.nc", fields))
    assert pairs.num_pairs == 3
    t = pairs._pair_ids(0, 1)[0]
    x, y = pairs.batch(0, 1)
    mean, std = pairs.upper_mean[0, 1, 0, 0], pairs.upper_std[0, 1, 0, 0]
    raw_target = torch.from_numpy(fields.step(t + 2)[0][0, 1])
    torch.testing.assert_close(y["upper"][0, 0, 1] * std + mean, raw_target, rtol=1e-5, atol=1e-2)
    assert x["upper"].shape == (1, 2, 3, 16, 24) and y["surface"].shape == (1, 1, 16, 24)
    # the fields move between time steps (the lead-time target is not the input)
    assert (x["upper"] - y["upper"]).abs().max() > 0.05


def test_physically_plausible_profile():
    f = gen.fields(9, 8, gen.LEVELS, time_steps=1)
    z, temp = f["z"][0, :, 4, 0], f["t"][0, :, 4, 0]  # equator column, 1000 -> 50 hPa
    assert np.all(np.diff(z) > 0)  # geopotential grows with height (falling pressure)
    assert np.all(np.diff(temp[:8]) < 0)  # temperature falls with height in the troposphere
    u = f["u"][0, gen.LEVELS.index(250), :, 0]
    assert u[2] > 20 and u[6] > 20 and abs(u[4]) < 10  # mid-latitude jets, weak at the equator


def test_missing_variable_names_file_and_variable(tmp_path):
    path = gen.write(tmp_path, 8, 16, LEVELS, time_steps=2)
    with pytest.raises(DataFormatError, match=r"era5_synthetic\.nc: variable 'sst' is missing"):
        ERA5Fields(path, ["z"], ["sst"], LEVELS)


def test_mismatched_grid_names_file_and_variable(tmp_path):
    path = gen.write(tmp_path, 8, 16, LEVELS, time_steps=2)
    with pytest.raises(DataFormatError, match=r"era5_synthetic\.nc: variable 'z' is on a 8 x 16 grid.*expects 8 x 32"):
        ERA5Fields(path, ["z"], ["msl"], LEVELS, grid=(8, 32))
    with pytest.raises(DataFormatError, match=r"era5_synthetic\.nc: variable 'z' has no pressure level\(s\) \[700\]"):
        ERA5Fields(path, ["z"], ["msl"], [700])


def test_latitude_weights_follow_weatherbench():
    w = latitude_weights(np.array([60.0, 0.0, -60.0]))
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0, 0.5]) / (2 / 3))
