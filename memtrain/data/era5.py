"""ERA5-format gridded fields read with xarray (NetCDF through netCDF4/h5netcdf, or Zarr), served
as lead-time pairs for weather models.

A sample is (fields at time step t, fields at t + lead_time), normalized per variable and level:

    inputs  {"upper": [B, V_u, L, H, W], "surface": [B, V_s, H, W]}
    targets {"upper", "surface" (as above), "lat_weight": [B, H] (cos(lat) / mean cos(lat)),
             "upper_std": [B, V_u, L], "surface_std": [B, V_s] (to report errors in physical units)}

Files: every *.nc file and *.zarr store under `root` (or `root` itself if it is one), in name order,
concatenated along time; each must hold the configured variables on the same grid. Coordinate
names follow ERA5 (time, level, latitude, longitude); the CDS's newer names (valid_time,
pressure_level) and lat/lon are accepted. Micro-batch i depends only on (seed, i), like the token
streams in memtrain.data.lm, so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import json

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memtrain.data.errors import DataFormatError, DataNotFoundError

_ALIASES = {"time": ("time", "valid_time"), "level": ("level", "pressure_level", "isobaricInhPa", "plev"),
            "latitude": ("latitude", "lat"), "longitude": ("longitude", "lon")}
STATS_SAMPLES = 32  # time steps (evenly spaced) the statistics are computed from when no stats file is given


def latitude_weights(lat_degrees: np.ndarray | torch.Tensor) -> torch.Tensor:
    """WeatherBench's area weights: cos(latitude), normalized to mean 1 over the grid's rows."""
    w = torch.cos(torch.deg2rad(torch.tensor(np.array(lat_degrees), dtype=torch.float64)))
    return (w / w.mean()).float()


def _refuse_pickled_arrays(store: Path) -> None:
    """A Zarr store can declare object arrays stored with numcodecs' Pickle codec, which unpickles
    every chunk on read (code from the file); refuse such a store before any chunk is read. Only
    the JSON metadata files are inspected (.zarray, .zmetadata, zarr.json)."""
    def flagged(node: object) -> list[str]:
        """Pickle codecs ('id'/'name') and object dtypes ('dtype' |O, 'data_type' object) in the JSON."""
        if isinstance(node, dict):
            found = [node[k] for k in ("id", "name") if isinstance(node.get(k), str) and "pickle" in node[k].lower()]
            found += [f"dtype {node['dtype']}"] if node.get("dtype") in ("|O", "O", "object") else []
            found += [f"data_type {node['data_type']}"] if node.get("data_type") == "object" else []
            return found + [c for v in node.values() for c in flagged(v)]
        if isinstance(node, list):
            return [c for v in node for c in flagged(v)]
        return []

    for meta in [*store.rglob(".zarray"), *store.rglob(".zmetadata"), *store.rglob("zarr.json")]:
        try:
            parsed = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"{meta}: unreadable Zarr metadata ({exc})") from exc
        bad = sorted(set(flagged(parsed)))
        if bad:
            raise DataFormatError(f"refusing to read {meta}: it declares {', '.join(bad)}: object arrays, whose "
                                  "chunks are unpickled on read (code from the file); ERA5 fields are numeric arrays")


def _open(path: Path):
    import xarray as xr

    if path.suffix == ".zarr" or path.is_dir():
        _refuse_pickled_arrays(path)
    try:
        if path.suffix == ".zarr" or path.is_dir():
            return xr.open_zarr(path, consolidated=None)
        return xr.open_dataset(path)
    except Exception as exc:  # any reader failure: report which file, keep the cause
        raise DataFormatError(f"{path}: cannot be read as NetCDF or Zarr ({exc})") from exc


def _rename(ds, path: Path):
    names = {}
    for canonical, aliases in _ALIASES.items():
        found = [a for a in aliases if a in ds.dims or a in ds.coords]
        if found and found[0] != canonical:
            names[found[0]] = canonical
        if not found and canonical != "level":
            raise DataFormatError(f"{path}: no {canonical} coordinate (looked for {', '.join(aliases)})")
    return ds.rename(names) if names else ds


def data_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DataNotFoundError(f"ERA5 data folder {root} does not exist (data.root)", str(root))
    if root.suffix in (".nc", ".zarr"):
        return [root]
    files = sorted(p for p in root.iterdir() if p.suffix in (".nc", ".zarr") and p.name != "stats.nc"
                   and not p.name.startswith("."))
    if not files:
        raise DataNotFoundError(f"no *.nc or *.zarr under {root} (data.root names the folder of the ERA5 files, or "
                                "one file)", str(root))
    return files


@dataclass
class ERA5Fields:
    """The selected variables and levels of a set of ERA5-format files, lazily indexed by time."""

    upper_variables: list[str]
    surface_variables: list[str]
    levels: list[int]

    def __init__(self, root: str | Path, upper_variables, surface_variables, levels, grid: tuple[int, int] | None = None,
                 time_steps: int | None = None):
        import xarray as xr

        self.upper_variables, self.surface_variables = list(upper_variables), list(surface_variables)
        self.levels = [int(x) for x in levels]
        self.files = data_files(root)
        parts, ref = [], None
        self._starts: list[tuple[int, Path]] = []  # (first global time step, file): which file holds step t
        first = 0
        for path in self.files:
            ds = _rename(_open(path), path)
            self._check(ds, path, grid)
            shape = (ds.sizes["latitude"], ds.sizes["longitude"])
            if ref is None:
                ref = (path, shape, ds["latitude"].values, ds["longitude"].values)
            elif shape != ref[1] or not np.allclose(ds["latitude"].values, ref[2]):
                raise DataFormatError(f"{path}: grid {shape[0]} x {shape[1]} (latitude x longitude) differs from "
                                      f"{ref[0]}'s {ref[1][0]} x {ref[1][1]}")
            keep = [*self.upper_variables, *self.surface_variables]
            if self.upper_variables:
                ds = ds.sel(level=self.levels)
            parts.append(ds[keep])
            self._starts.append((first, path))
            first += ds.sizes["time"]
        self.ds = parts[0] if len(parts) == 1 else xr.concat(parts, dim="time", data_vars="minimal", coords="minimal",
                                                             compat="override", join="override")
        if time_steps is not None:
            self.ds = self.ds.isel(time=slice(0, time_steps))
        self.latitude = self.ds["latitude"].values
        self.n_time = self.ds.sizes["time"]

    def _check(self, ds, path: Path, grid: tuple[int, int] | None) -> None:
        for name in [*self.upper_variables, *self.surface_variables]:
            if name not in ds.data_vars:
                raise DataFormatError(f"{path}: variable {name!r} is missing (the file has: {', '.join(sorted(ds.data_vars))})")
            var, upper = ds[name], name in self.upper_variables
            want = ("time", "level", "latitude", "longitude") if upper else ("time", "latitude", "longitude")
            if tuple(var.dims) != want:
                raise DataFormatError(f"{path}: variable {name!r} has dimensions {tuple(var.dims)}, expected {want}")
            if grid is not None and (var.sizes["latitude"], var.sizes["longitude"]) != tuple(grid):
                raise DataFormatError(
                    f"{path}: variable {name!r} is on a {var.sizes['latitude']} x {var.sizes['longitude']} grid "
                    f"(latitude x longitude), but the model expects {grid[0]} x {grid[1]} (model.n_lat x model.n_lon)")
        if self.upper_variables:
            have = [int(x) for x in ds["level"].values] if "level" in ds.coords else []
            missing = [lv for lv in self.levels if lv not in have]
            if missing:
                raise DataFormatError(f"{path}: variable {self.upper_variables[0]!r} has no pressure level(s) "
                                      f"{missing} hPa (the file has {have})")

    def step(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(upper [V_u, L, H, W], surface [V_s, H, W]) at time step t, float32, physical units."""
        snap = self.ds.isel(time=t)
        values = {v: snap[v].values for v in (*self.upper_variables, *self.surface_variables)}
        for name, x in values.items():
            if not np.isfinite(x).all():  # a NaN (missing value) or inf would train NaN losses
                start, path = next((s, p) for s, p in reversed(self._starts) if s <= t)
                raise DataFormatError(f"{path}: variable {name!r} has {int((~np.isfinite(x)).sum())} NaN or infinite "
                                      f"values at time step {t - start} of the file; fill or drop them (they would make "
                                      "the loss NaN)")
        upper = np.stack([values[v] for v in self.upper_variables]) if self.upper_variables else np.zeros((0,))
        surface = np.stack([values[v] for v in self.surface_variables]) if self.surface_variables else np.zeros((0,))
        return upper.astype(np.float32), surface.astype(np.float32)


def load_stats(path: str | Path, fields: ERA5Fields) -> tuple[np.ndarray, ...]:
    """(upper mean, upper std [V_u, L], surface mean, surface std [V_s]) from a file holding
    <var>_mean and <var>_std (per level for upper-air variables)."""
    path = Path(path)
    ds = _open(path)
    ds = ds.rename({a: "level" for a in _ALIASES["level"] if a in ds.dims and a != "level"})

    def get(name: str, upper: bool) -> np.ndarray:
        if name not in ds.data_vars:
            raise DataFormatError(f"{path}: normalization statistic {name!r} is missing")
        x = ds[name]
        if upper:
            have = [int(v) for v in x["level"].values]
            missing = [lv for lv in fields.levels if lv not in have]
            if missing:
                raise DataFormatError(f"{path}: variable {name!r} has no level(s) {missing} hPa")
            x = x.sel(level=fields.levels)
        values = np.asarray(x.values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataFormatError(f"{path}: normalization statistic {name!r} has NaN or infinite values")
        return values

    um = np.stack([get(f"{v}_mean", True) for v in fields.upper_variables]) if fields.upper_variables else np.zeros((0, 0))
    us = np.stack([get(f"{v}_std", True) for v in fields.upper_variables]) if fields.upper_variables else np.zeros((0, 0))
    sm = np.array([get(f"{v}_mean", False) for v in fields.surface_variables])
    ss = np.array([get(f"{v}_std", False) for v in fields.surface_variables])
    return um, us, sm, ss


def compute_stats(fields: ERA5Fields) -> tuple[np.ndarray, ...]:
    """Mean and standard deviation per variable and level over STATS_SAMPLES evenly spaced time
    steps, latitude and longitude (unweighted, as ERA5 normalization files are usually made)."""
    ts = np.unique(np.linspace(0, fields.n_time - 1, min(STATS_SAMPLES, fields.n_time)).round().astype(int))
    ups, sfs = zip(*(fields.step(int(t)) for t in ts))
    up, sf = np.stack(ups).astype(np.float64), np.stack(sfs).astype(np.float64)  # [T, V, L, H, W], [T, V, H, W]
    return up.mean((0, 3, 4)), up.std((0, 3, 4)), sf.mean((0, 2, 3)), sf.std((0, 2, 3))


class ERA5Pairs:
    """Lead-time pairs (t, t + lead_time) of normalized fields; batch(i, B) is micro-batch i."""

    def __init__(self, fields: ERA5Fields, lead_time: int, seed: int, stats: tuple[np.ndarray, ...] | None = None):
        if lead_time < 1:
            raise DataFormatError(f"lead_time must be at least 1 time step, got {lead_time}")
        self.fields, self.lead, self.seed = fields, lead_time, seed
        self.num_pairs = fields.n_time - lead_time
        if self.num_pairs < 1:
            raise DataFormatError(f"{fields.files[0]}: {fields.n_time} time steps hold no pair {lead_time} steps apart "
                                  f"(data.lead_time={lead_time})")
        um, us, sm, ss = stats if stats is not None else compute_stats(fields)
        for name, s in (("upper", us), ("surface", ss)):
            if np.any(s <= 0):
                raise DataFormatError(f"{fields.files[0]}: a {name} variable has zero standard deviation; "
                                      "it cannot be normalized (constant field?)")
        self.upper_mean = torch.tensor(um, dtype=torch.float32)[..., None, None]
        self.upper_std = torch.tensor(us, dtype=torch.float32)[..., None, None]
        self.surface_mean = torch.tensor(sm, dtype=torch.float32)[..., None, None]
        self.surface_std = torch.tensor(ss, dtype=torch.float32)[..., None, None]
        self.lat_weight = latitude_weights(fields.latitude)
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def normalized(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        up, sf = self.fields.step(t)
        return (torch.from_numpy(up) - self.upper_mean) / self.upper_std, (torch.from_numpy(sf) - self.surface_mean) / self.surface_std

    def _pair_ids(self, start: int, count: int) -> list[int]:
        ids = []
        for sample in range(start, start + count):
            epoch, pos = divmod(sample, self.num_pairs)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._order = epoch, torch.randperm(self.num_pairs, generator=g)
            ids.append(int(self._order[pos]))
        return ids

    def batch(self, index: int, micro_batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        xs, ys = [], []
        for t in self._pair_ids(index * micro_batch_size, micro_batch_size):
            xs.append(self.normalized(t))
            ys.append(self.normalized(t + self.lead))
        b = micro_batch_size
        inputs = {"upper": torch.stack([x[0] for x in xs]), "surface": torch.stack([x[1] for x in xs])}
        targets = {"upper": torch.stack([y[0] for y in ys]), "surface": torch.stack([y[1] for y in ys]),
                   "lat_weight": self.lat_weight.expand(b, -1).contiguous(),
                   "upper_std": self.upper_std[..., 0, 0].expand(b, -1, -1).contiguous(),
                   "surface_std": self.surface_std[..., 0, 0].expand(b, -1).contiguous()}
        return inputs, targets


def synthetic_root(cfg) -> Path:
    """Where data.root=None generates its synthetic dataset: the run directory (trainer.run_dir, or
    the Hydra job's output directory), else a folder under the system's temporary directory."""
    import tempfile

    base = cfg.trainer.run_dir
    if base is None:
        from hydra.core.hydra_config import HydraConfig

        base = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else tempfile.gettempdir() + "/memtrain"
    m = cfg.model
    return Path(base) / f"era5_synthetic_{m.n_lat}x{m.n_lon}x{len(cfg.data.levels)}_seed{cfg.trainer.seed}"


def _check_synthetic_size(cfg, root: Path) -> None:
    """The generated dataset is built in memory and written to the run folder: refuse one that
    this machine's RAM or that folder's disk cannot hold, before generating it."""
    import shutil

    from memtrain.config.errors import ConfigError
    from memtrain.machine import host_memory_bytes

    d, m = cfg.data, cfg.model
    fields = len(d.upper_variables) * len(d.levels) + len(d.surface_variables)
    need = 4 * d.synthetic_time_steps * fields * m.n_lat * m.n_lon  # float32
    existing = next(p for p in (Path(root), *Path(root).parents) if p.exists())
    room = min(host_memory_bytes(), shutil.disk_usage(existing).free)
    if need > room:
        raise ConfigError("data.synthetic_time_steps", f"the synthetic ERA5 dataset (data.root unset) of "
                                                       f"{d.synthetic_time_steps} time steps on the {m.n_lat} x {m.n_lon} "
                                                       f"grid needs {need / 2**30:.1f} GiB, more than this machine's RAM "
                                                       f"or the free disk under {existing} ({room / 2**30:.1f} GiB); "
                                                       "generate fewer time steps or set data.root to real files")


def build_era5_data(cfg) -> ERA5Pairs:
    """The ERA5Pairs a weather model trains on: files under data.root, or a synthetic dataset on the
    model's grid generated in the run directory when data.root is null."""
    d, m = cfg.data, cfg.model
    root, stats_path = d.root, d.stats
    if root is None:
        from memtrain.data.era5_synthetic import write

        root = synthetic_root(cfg)
        _check_synthetic_size(cfg, root)
        write(root, m.n_lat, m.n_lon, list(d.levels), d.synthetic_time_steps, seed=cfg.trainer.seed, fmt=d.format)
        stats_path = stats_path or str(root / "stats.nc")
    fields = ERA5Fields(root, d.upper_variables, d.surface_variables, d.levels, grid=(m.n_lat, m.n_lon),
                        time_steps=d.time_steps)
    stats = load_stats(stats_path, fields) if stats_path else None
    return ERA5Pairs(fields, d.lead_time, cfg.trainer.seed, stats)
