"""The weather models' ModelSpecs (pangu, fuxi): build, feed (ERA5-format lead-time pairs), score
(latitude-weighted MSE, per-variable RMSE), checkpoint and size them."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import enum_names, require
from memtrain.data.era5 import build_era5_data
from memtrain.models.spec import ModelSpec, register_spec
from memtrain.models.weather import flops
from memtrain.models.weather.fuxi import FuXi
from memtrain.models.weather.loss import rmse_tensors, weather_loss
from memtrain.models.weather.pangu import Pangu, padded, token_grid
from memtrain.models.weather.parallelize import parallelize, reduce_gradients, validate_spatial

FP32 = 4


def build_pangu(mcfg: DictConfig) -> Pangu:
    return Pangu(**{k: (list(v) if not isinstance(v, (int, float, str)) else v) for k, v in mcfg.items() if k != "arch"})


def build_fuxi(mcfg: DictConfig) -> FuXi:
    return FuXi(**{k: (list(v) if not isinstance(v, (int, float, str)) else v) for k, v in mcfg.items() if k != "arch"})


def num_targets(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.tensor(targets["upper"].shape[0])


def metrics(cfg: DictConfig):
    d = cfg.data
    upper, surface, levels = list(d.upper_variables), list(d.surface_variables), list(d.levels)
    return lambda outputs, targets: rmse_tensors(outputs, targets, upper, surface, levels)


def _block_bytes(tokens: float, padded_tokens: float, dim: int, heads: int, c: int, r: int) -> float:
    """Bytes one post-norm window block keeps for backward, per the code in windows.py, with M tokens
    (M_p after padding to whole windows) of width C; c = compute, r = residual-stream bytes:
      attention (padded tokens): the qkv Linear's input (c C), q, k, v as SDPA's contiguous inputs (3 c C),
        its output (c C) and log-sum-exp (fp32, per head), the projection's input (c C);
        memory-efficient SDPA keeps no N x N matrix (the math fallback would add 4 N heads per token);
      norm1 of the attention branch (its input in fp32 + mean, rstd), the MLP's fc1 input (c C), fc1 and
      GELU outputs (2 c 4C), norm2's fp32 input and statistics."""
    attention = padded_tokens * (6 * c * dim + FP32 * heads)
    rest = tokens * (FP32 * dim + 8 + c * dim + 2 * c * 4 * dim + FP32 * dim + 8)
    return attention + rest


def _pangu_activation_bytes(cfg: DictConfig, c: int, r: int) -> dict[str, float]:
    """Saved bytes for one micro-batch, analytic (not yet checked against a measured forward).
    `block` is the mean over all blocks (the first and last stages' blocks keep about twice the
    middle stages', on 4 x the tokens at half the width); `block_input` likewise."""
    m, b = cfg.model, cfg.trainer.micro_batch_size
    window = tuple(m.window_size)
    s1 = token_grid(m.n_levels, m.n_lat, m.n_lon, m.patch_size)
    s2 = (s1[0], math.ceil(s1[1] / 2), s1[2] // 2)
    stages = [(s1, m.dim), (s2, 2 * m.dim), (s2, 2 * m.dim), (s1, m.dim)]
    total, inputs = 0.0, 0.0
    for (shape, dim), depth, heads in zip(stages, m.depths, m.heads):
        tokens, ptokens = b * math.prod(shape), b * math.prod(padded(shape, window))
        total += depth * _block_bytes(tokens, ptokens, dim, heads, c, r)
        inputs += depth * r * tokens * dim
    n_blocks = sum(m.depths)
    t1, t2 = b * math.prod(s1), b * math.prod(s2)
    channels = m.n_upper * m.n_levels + m.n_surface
    grid = b * m.n_lat * m.n_lon
    outside = (c * grid * channels  # embedding convolutions' (padded) inputs
               + (FP32 + c) * t2 * 4 * m.dim + FP32 * 2 * t2  # down-sample: LayerNorm (fp32) and Linear inputs
               + c * t2 * 2 * m.dim + FP32 * t1 * m.dim + c * t1 * m.dim  # up-sample: Linear, LayerNorm, Linear inputs
               + c * t1 * 2 * m.dim  # skip concatenation: patch recovery's input
               + 2 * FP32 * grid * channels)  # the loss: fp32 outputs and differences
    return {"block": total / n_blocks, "block_input": inputs / n_blocks, "attention_core_freed": 0.0,
            "outside_blocks": outside}


def _fuxi_activation_bytes(cfg: DictConfig, c: int, r: int) -> dict[str, float]:
    """As for Pangu, for FuXi's blocks on one level of ceil(H'/2) x W'/2 tokens (analytic, unmeasured)."""
    m, b = cfg.model, cfg.trainer.micro_batch_size
    h1, w1 = math.ceil(m.n_lat / m.patch_size), math.ceil(m.n_lon / m.patch_size)
    tokens = b * math.ceil(h1 / 2) * (w1 // 2)
    ptokens = b * -(-math.ceil(h1 / 2) // m.window_size[0]) * m.window_size[0] * (w1 // 2)
    # cosine attention also keeps the normalized q and k and their norms (2 c C + 2 fp32 per head)
    block = _block_bytes(tokens, ptokens, m.dim, m.heads, c, r) + ptokens * (2 * c * m.dim + 8 * m.heads)
    channels = m.n_upper * m.n_levels + m.n_surface
    grid = b * m.n_lat * m.n_lon
    t1 = b * h1 * w1
    outside = c * grid * channels + 4 * c * t1 * m.dim + 2 * c * t1 * m.dim + 2 * FP32 * grid * channels
    return {"block": block, "block_input": r * tokens * m.dim, "attention_core_freed": 0.0, "outside_blocks": outside}


def _validate_common(cfg: DictConfig, lon_tokens: list[int], lon_window: int) -> None:
    m, d = cfg.model, cfg.data
    source = enum_names(d.source)
    require(source == "era5", "data", f"model.arch={m.arch} trains on gridded fields, data=era5; got data={source}",
            allowed=["era5"])
    require(len(d.levels) == m.n_levels, "data.levels",
            f"{len(d.levels)} pressure levels but model.n_levels={m.n_levels}")
    require(len(d.upper_variables) == m.n_upper, "data.upper_variables",
            f"{len(d.upper_variables)} upper-air variables but model.n_upper={m.n_upper}")
    require(len(d.surface_variables) == m.n_surface, "data.surface_variables",
            f"{len(d.surface_variables)} surface variables but model.n_surface={m.n_surface}")
    require(d.lead_time >= 1, "data.lead_time", f"must be at least 1 time step, got {d.lead_time}")
    require(d.format in ("netcdf", "zarr"), "data.format", f"unknown format {d.format!r}", allowed=["netcdf", "zarr"])
    for n in lon_tokens:
        require(n % lon_window == 0, "model.n_lon",
                f"n_lon={m.n_lon} gives {n} longitude tokens at a stage, not a multiple of the window's {lon_window} "
                "(longitude wraps around the globe, so it is never padded)")


def validate_pangu(cfg: DictConfig) -> None:
    m = cfg.model
    require(len(m.patch_size) == 3 and len(m.window_size) == 3, "model.window_size",
            "patch_size and window_size are (level, latitude, longitude) triples")
    require(len(m.depths) == 4 and len(m.heads) == 4, "model.depths", "Pangu has 4 stages: depths and heads of length 4")
    for i, (dim, h) in enumerate(zip([m.dim, 2 * m.dim, 2 * m.dim, m.dim], m.heads)):
        require(dim % h == 0, "model.heads", f"stage {i + 1} width {dim} is not divisible by heads={h}")
    require(m.n_lon % m.patch_size[2] == 0, "model.n_lon", f"n_lon={m.n_lon} must be a multiple of the patch's {m.patch_size[2]}")
    w1 = m.n_lon // m.patch_size[2]
    require(w1 % 2 == 0, "model.n_lon", f"{w1} longitude tokens cannot be merged 2 by 2")
    _validate_common(cfg, [w1, w1 // 2], m.window_size[2])
    if cfg.parallel.name == "spatial":
        from memtrain.distributed.launch import world_size
        from memtrain.distributed.mesh import ParallelDims

        validate_spatial(cfg, ParallelDims.from_config(cfg.parallel, world_size(cfg)).spatial)


def validate_fuxi(cfg: DictConfig) -> None:
    m = cfg.model
    require(m.dim % m.heads == 0, "model.heads", f"dim={m.dim} is not divisible by heads={m.heads}")
    require(m.n_lon % (2 * m.patch_size) == 0, "model.n_lon", f"n_lon={m.n_lon} must be a multiple of 2 x patch_size")
    _validate_common(cfg, [m.n_lon // m.patch_size // 2], m.window_size[1])


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.blocks


for _arch, _build, _act, _validate, _flops in (
        ("pangu", build_pangu, _pangu_activation_bytes, validate_pangu, flops.pangu_forward_flops),
        ("fuxi", build_fuxi, _fuxi_activation_bytes, validate_fuxi, flops.fuxi_forward_flops)):
    register_spec(ModelSpec(
        arch=_arch,
        build_model=_build,
        build_data=build_era5_data,
        loss_fn=weather_loss,
        num_targets=num_targets,
        blocks=blocks,
        attention_core="attention",
        flops_per_token=lambda mcfg, seq_len: None,
        forward_flops=_flops,
        activation_bytes=_act,
        num_blocks=(lambda mcfg: sum(mcfg.depths)) if _arch == "pangu" else (lambda mcfg: mcfg.depth),
        validate=_validate,
        target_unit="samples",
        metrics=metrics,
        **({"parallelize": parallelize, "reduce_gradients": reduce_gradients, "spatial": True} if _arch == "pangu" else {}),
    ))
