"""The weather models' declarations (memtrain.models.family): their config schemas; Pangu splits its
latitude grid over ranks (spatial parallelism); FuXi has no model parallelism."""

from __future__ import annotations

from dataclasses import dataclass

from memtrain.config.schema import ModelConfig, checked
from memtrain.models.family import Family


@dataclass
class PanguConfig(ModelConfig):
    """Pangu-Weather's 3D Earth-specific transformer (Bi et al. 2023, Nature 619; Methods and its
    pseudocode). Defaults are the published model at 0.25 degrees."""

    arch: str = "pangu"
    n_levels: int = checked(13, ge=1)  # pressure levels of the upper-air variables
    n_lat: int = checked(721, ge=1)
    n_lon: int = checked(1440, ge=1)
    n_upper: int = checked(5, ge=1)  # z, q, t, u, v
    n_surface: int = checked(4, ge=1)  # msl, u10, v10, t2m
    patch_size: list[int] = checked(factory=lambda: [2, 4, 4], length=3, ge=1)  # (level, lat, lon); surface uses (lat, lon)
    window_size: list[int] = checked(factory=lambda: [2, 6, 12], length=3, ge=1)  # (level, lat, lon) tokens per window
    dim: int = checked(192, ge=1)  # C of the first stage; the second stage has 2C
    depths: list[int] = checked(factory=lambda: [2, 6, 6, 2], length=4, ge=1)
    heads: list[int] = checked(factory=lambda: [6, 12, 12, 6], length=4, ge=1)
    mlp_ratio: float = checked(4.0, gt=0)
    drop_path: float = checked(0.2, ge=0, lt=1)  # stochastic depth, linearly increasing to this rate


@dataclass
class FuXiConfig(ModelConfig):
    """FuXi's Swin V2 U-transformer (Chen et al. 2023, npj Clim. Atmos. Sci. 6:190). Defaults are
    the published width and depth at 0.25 degrees."""

    arch: str = "fuxi"
    n_levels: int = checked(13, ge=1)
    n_lat: int = checked(721, ge=1)
    n_lon: int = checked(1440, ge=1)
    n_upper: int = checked(5, ge=1)
    n_surface: int = checked(4, ge=1)
    patch_size: int = checked(4, ge=1)  # cube embedding's spatial patch (lat, lon)
    window_size: list[int] = checked(factory=lambda: [9, 9], length=2, ge=1)  # (lat, lon) tokens per window
    dim: int = checked(1536, ge=1)
    depth: int = checked(48, ge=1)
    heads: int = checked(24, ge=1)
    mlp_ratio: float = checked(4.0, gt=0)
    drop_path: float = checked(0.2, ge=0, lt=1)


FAMILIES = (
    Family("pangu", "memtrain.models.weather.spec", model_parallel=("spatial",), schema=PanguConfig),
    Family("fuxi", "memtrain.models.weather.spec", schema=FuXiConfig),
)
