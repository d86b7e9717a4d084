"""Synthetic ERA5-format data at any resolution, for tests, tiny recipes and benchmarks.

The fields are smooth and physically plausible (not realistic weather): a zonal-mean state
(temperature falling with height at a constant lapse rate, geopotential from the hypsometric
equation, so it grows with height; mid-latitude westerly jets strongest near 250 hPa; humidity
concentrated in the warm lower troposphere) plus a few planetary waves that travel eastward at a
latitude-dependent speed. A sample at t + lead is therefore a predictable function of the sample at
t (the waves move), so lead-time prediction is learnable.

Files follow ERA5's conventions: variables z, q, t, u, v on (time, level, latitude, longitude),
msl, u10, v10, t2m on (time, latitude, longitude), latitude from 90 to -90 (both poles
included), longitude from 0 eastward, level in hPa, 6-hourly time.

    python -m memtrain.data.era5_synthetic --out DIR --lat 32 --lon 64 --time-steps 24 [--format zarr]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

UPPER = ("z", "q", "t", "u", "v")
SURFACE = ("msl", "u10", "v10", "t2m")
LEVELS = (1000, 925, 850, 700, 600, 500, 400, 300, 250, 200, 150, 100, 50)
UNITS = {"z": "m**2 s**-2", "q": "kg kg**-1", "t": "K", "u": "m s**-1", "v": "m s**-1",
         "msl": "Pa", "u10": "m s**-1", "v10": "m s**-1", "t2m": "K"}

R_DRY, GRAVITY, LAPSE_RATE, P0 = 287.05, 9.80665, 6.5e-3, 1013.25  # J/(kg K), m/s^2, K/m, hPa
EARTH_RADIUS = 6.371e6


def grid(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """ERA5's regular grid: latitude 90 -> -90 inclusive, longitude 0 -> 360 exclusive (degrees)."""
    return np.linspace(90.0, -90.0, n_lat), np.arange(n_lon) * (360.0 / n_lon)


def fields(n_lat: int, n_lon: int, levels=LEVELS, time_steps: int = 24, hours: int = 6,
           seed: int = 0) -> dict[str, np.ndarray]:
    """{name: array}: upper-air [T, L, H, W], surface [T, H, W], float32."""
    rng = np.random.default_rng(seed)
    lat, lon = grid(n_lat, n_lon)
    phi = np.deg2rad(lat)[:, None]  # [H, 1]
    lam = np.deg2rad(lon)[None, :]  # [1, W]
    p = np.asarray(levels, dtype=np.float64)[:, None, None]  # [L, 1, 1]
    t_hours = np.arange(time_steps) * hours

    # zonal-mean state
    t_surface = 300.0 - 45.0 * np.sin(phi) ** 2  # K, [H, 1]
    exponent = R_DRY * LAPSE_RATE / GRAVITY
    temp_mean = t_surface * (p / P0) ** exponent  # constant lapse rate: T = T_s (p / p0)^(R Gamma / g)
    temp_mean = np.maximum(temp_mean, 205.0)  # isothermal stratosphere
    jet = 35.0 * np.exp(-(((np.abs(lat)[:, None] - 40.0) / 12.0) ** 2)) * np.exp(-((np.log(p / 250.0)) ** 2))
    u_mean = 5.0 * np.cos(phi) + jet  # westerlies, strongest near 250 hPa at +-40 degrees

    # planetary waves travelling east at the local zonal wind (their phase speed, rad/hour)
    waves = []
    for k in (2, 3, 5):
        amp, phase = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)
        waves.append((k, amp, phase))
    speed = (u_mean.mean(axis=0) + 3.0) / (EARTH_RADIUS * np.maximum(np.cos(phi), 0.05)) * 3600.0  # [H, 1]
    envelope = np.cos(phi) ** 2  # vanishes at the poles
    out = {name: [] for name in (*UPPER, *SURFACE)}
    for th in t_hours:
        anomaly = sum(a * np.cos(k * (lam - speed * th) + ph) for k, a, ph in waves) * envelope  # [H, W]
        d_dlam = sum(-k * a * np.sin(k * (lam - speed * th) + ph) for k, a, ph in waves) * envelope
        height_scale = np.log(P0 / p)  # [L, 1, 1], grows with height
        temp = temp_mean + 4.0 * anomaly * (1.0 - 0.5 * height_scale / height_scale.max())
        # hypsometric equation with the column-mean temperature: Phi = R T_bar ln(p0 / p)
        z = R_DRY * 0.5 * (t_surface + temp) * height_scale + 600.0 * anomaly * (1.0 + height_scale)
        # geostrophic wind of the geopotential anomaly's zonal gradient (sign by hemisphere)
        f = np.sign(lat)[:, None] + (lat[:, None] == 0)
        v = 8.0 * f * d_dlam * (1.0 + height_scale) / 3.0
        u = u_mean - 2.0 * anomaly * (1.0 + height_scale) / 3.0
        q = 0.018 * np.exp(-(height_scale / 0.6)) * np.cos(phi) ** 3 * (1.0 + 0.2 * anomaly)
        out["z"].append(z), out["t"].append(temp), out["u"].append(u), out["v"].append(v), out["q"].append(q)
        out["msl"].append(101325.0 - 1500.0 * np.sin(2 * phi) ** 2 + 800.0 * anomaly)
        out["u10"].append(0.7 * (u_mean[0] - 2.0 * anomaly) - 3.0 * np.cos(phi))
        out["v10"].append(0.7 * 8.0 * f * d_dlam / 3.0)
        out["t2m"].append(t_surface - 2.0 + 4.0 * anomaly)
    shape_up, shape_sf = (len(levels), n_lat, n_lon), (n_lat, n_lon)
    return {name: np.stack([np.broadcast_to(x, shape_up if name in UPPER else shape_sf) for x in arrs]).astype(np.float32)
            for name, arrs in out.items()}


def dataset(n_lat: int, n_lon: int, levels=LEVELS, time_steps: int = 24, hours: int = 6, seed: int = 0):
    """The synthetic fields as an xarray.Dataset with ERA5's coordinates and units."""
    import xarray as xr

    lat, lon = grid(n_lat, n_lon)
    data = fields(n_lat, n_lon, levels, time_steps, hours, seed)
    time = np.datetime64("2020-01-01T00") + np.arange(time_steps) * np.timedelta64(hours, "h")
    variables = {}
    for name, arr in data.items():
        dims = ("time", "level", "latitude", "longitude") if name in UPPER else ("time", "latitude", "longitude")
        variables[name] = xr.Variable(dims, arr, attrs={"units": UNITS[name]})
    coords = {"time": time, "level": ("level", np.asarray(levels, dtype=np.int32), {"units": "hPa"}),
              "latitude": ("latitude", lat, {"units": "degrees_north"}),
              "longitude": ("longitude", lon, {"units": "degrees_east"})}
    return xr.Dataset(variables, coords=coords, attrs={"source": "memtrain synthetic ERA5-format fields"})


def stats_dataset(ds):
    """Normalization statistics: <var>_mean and <var>_std per level (upper-air) or scalar (surface),
    over time, latitude and longitude."""
    import xarray as xr

    out = {}
    for name in ds.data_vars:
        dims = [d for d in ds[name].dims if d != "level"]
        out[f"{name}_mean"] = ds[name].mean(dims)
        out[f"{name}_std"] = ds[name].std(dims)
    return xr.Dataset(out)


def _atomic_write(ds, path: Path, fmt: str) -> None:
    """Write to a temporary name, then rename: processes generating the same file concurrently
    never read a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if fmt == "zarr":
        ds.to_zarr(tmp, mode="w")
    else:
        ds.to_netcdf(tmp)
    if path.exists():  # another process finished first: same content
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        return
    os.replace(tmp, path)


def write(out: str | Path, n_lat: int, n_lon: int, levels=LEVELS, time_steps: int = 24, hours: int = 6,
          seed: int = 0, fmt: str = "netcdf") -> Path:
    """Write era5_synthetic.nc (or .zarr) and stats.nc under `out`; returns the data file's path.
    An existing file of the same name is kept (the generator is deterministic)."""
    if fmt not in ("netcdf", "zarr"):
        raise ValueError(f"format must be netcdf or zarr, got {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("era5_synthetic.zarr" if fmt == "zarr" else "era5_synthetic.nc")
    stats = out / "stats.nc"
    if path.exists() and stats.exists():
        return path
    ds = dataset(n_lat, n_lon, levels, time_steps, hours, seed)
    _atomic_write(ds, path, fmt)
    _atomic_write(stats_dataset(ds), stats, "netcdf")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--lat", type=int, default=32, help="latitude points (721 for 0.25 degrees)")
    parser.add_argument("--lon", type=int, default=64, help="longitude points (1440 for 0.25 degrees)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="pressure levels (hPa)")
    parser.add_argument("--time-steps", type=int, default=24)
    parser.add_argument("--hours", type=int, default=6, help="hours between time steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["netcdf", "zarr"], default="netcdf")
    a = parser.parse_args(argv)
    path = write(a.out, a.lat, a.lon, a.levels, a.time_steps, a.hours, a.seed, a.format)
    print(path)


if __name__ == "__main__":
    main()
