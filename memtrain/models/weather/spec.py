"""The weather models' ModelSpecs (pangu, fuxi): build, feed (ERA5-format lead-time pairs), score
(latitude-weighted MSE, per-variable RMSE), checkpoint and size them."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import as_enum, require
from memtrain.config.parallel import ParallelDims
from memtrain.config.schema import DataSource, Device
from memtrain.data.era5 import build_era5_data
from memtrain.models.reset import reset_module_tree
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


def sdpa_math(cfg: DictConfig) -> bool:
    """Whether the window attention runs as SDPA's math fallback: on the CPU (trainer.device=cpu),
    where F.scaled_dot_product_attention with an attention bias that needs a gradient has no fused
    kernel. On CUDA the memory-efficient kernel takes the bias and keeps no N x N matrix."""
    return as_enum(cfg.trainer.device, Device) is Device.cpu


def _attention_bytes(dim: int, heads: int, n: int, c: int, math_sdpa: bool) -> float:
    """Bytes per (padded) token that window attention over windows of n tokens keeps, per the code in
    windows.py and pangu.py: the qkv Linear's input (c C) and the output projection's input (c C);
    SDPA's math fallback (CPU) keeps q and k scaled by sqrt(scale) and v, all upcast to fp32
    (12 C whatever the compute dtype), and the fp32 softmax (4 n heads); the memory-efficient kernel
    (CUDA) keeps q, k, v and its output in the compute dtype (4 c C) and the fp32 log-sum-exp
    (4 heads)."""
    core = 3 * FP32 * dim + FP32 * n * heads if math_sdpa else 4 * c * dim + FP32 * heads
    return 2 * c * dim + core


def _block_bytes(tokens: float, padded_tokens: float, dim: int, heads: int, n: int, c: int, math_sdpa: bool,
                 mlp_ratio: float) -> float:
    """Bytes one post-norm window block (windows.WindowBlock) keeps for backward, with M tokens (M_p
    after padding to whole windows) of width C in the stream's dtype c (the compute dtype: the
    embedding's output under autocast): the window attention (`_attention_bytes`, padded tokens);
    norm1's input (c C) and its fp32 mean and rstd, the MLP's fc1 input (c C), fc1 and GELU outputs
    (2 c r C, r = mlp_ratio), norm2's input (c C) and statistics. Under autocast (c < 4) each Linear
    keeps its weight's c-byte copy: 3 C^2 + C^2 + 2 r C^2 elements."""
    hidden = int(dim * mlp_ratio)
    rest = tokens * (c * dim + 8 + c * dim + 2 * c * hidden + c * dim + 8)
    weights = c * (4 * dim * dim + 2 * dim * hidden) if c < FP32 else 0
    return padded_tokens * _attention_bytes(dim, heads, n, c, math_sdpa) + rest + weights


def _loss_transients(cfg: DictConfig, c: int) -> dict[str, float]:
    """What the latitude-weighted MSE (loss.py) allocates beyond what it saves, for the upper-air
    output of U = B V_u L H W values (the larger of the two outputs): in the forward the model's
    output (c U) and the fp32 squared and weighted errors (2 x 4 U) while the saved differences
    are live; at the start of the backward four fp32 U-sized gradients at once (the mean's
    expanded gradient, times the weights, and pow's backward: 2 (pred - truth), its product)."""
    m, b = cfg.model, cfg.trainer.micro_batch_size
    upper = b * m.n_upper * m.n_levels * m.n_lat * m.n_lon
    return {"loss_forward_transient": c * upper + 2 * FP32 * upper, "loss_backward_transient": 4 * FP32 * upper}


def _pangu_activation_bytes(cfg: DictConfig, c: int, r: int) -> dict[str, float]:
    """Saved bytes for one micro-batch, counted tensor by tensor for pangu.py and checked against the
    measured forward on CPU (tests/unit/weather/test_activation_model.py). The residual stream is
    the patch embedding's output, so it is in the compute dtype c whatever `r` (autocast casts the
    convolution). `block` is the mean over all blocks (the first and last stages' blocks keep about
    twice the middle stages', on 4 x the tokens at half the width); `block_input` likewise: the
    c-byte block input a checkpointed block keeps.

    Outside the blocks: the patch embedding's padded inputs (their c-byte casts under autocast), the
    down-sample's LayerNorm input [M_2, 4C] and statistics and its Linear's input, the up-sample's
    Linear input [M_2, 2C], its LayerNorm input and statistics and the second Linear's input
    [M_1, C], the concatenated skip [M_1, 2C] (patch recovery's input), the loss's fp32 differences
    [B, V, H, W]; under autocast the c-byte copies of the embedding, sampling and recovery weights."""
    m, b = cfg.model, cfg.trainer.micro_batch_size
    window = tuple(m.window_size)
    n_window = math.prod(window)
    math_sdpa = sdpa_math(cfg)
    ratio = m.get("mlp_ratio", 4.0)
    s1 = token_grid(m.n_levels, m.n_lat, m.n_lon, m.patch_size)
    s2 = (s1[0], math.ceil(s1[1] / 2), s1[2] // 2)
    stages = [(s1, m.dim), (s2, 2 * m.dim), (s2, 2 * m.dim), (s1, m.dim)]
    total, inputs = 0.0, 0.0
    for (shape, dim), depth, heads in zip(stages, m.depths, m.heads):
        tokens, ptokens = b * math.prod(shape), b * math.prod(padded(shape, window))
        total += depth * _block_bytes(tokens, ptokens, dim, heads, n_window, c, math_sdpa, ratio)
        inputs += depth * c * tokens * dim
    n_blocks = sum(m.depths)
    t1, t2 = b * math.prod(s1), b * math.prod(s2)
    pz, ph, pw = m.patch_size
    lat, lon = -(-m.n_lat // ph) * ph, -(-m.n_lon // pw) * pw
    levels = -(-m.n_levels // pz) * pz
    d = m.dim
    outside = (c * b * lat * lon * (m.n_upper * levels + m.n_surface)  # the embedding convolutions' inputs
               + t2 * (2 * c * 4 * d + 8)  # down-sample: LayerNorm input and statistics, Linear input
               + c * t2 * 2 * d + t1 * (2 * c * d + 8)  # up-sample: Linear, LayerNorm, Linear inputs
               + c * t1 * 2 * d  # skip concatenation: patch recovery's input
               + FP32 * b * m.n_lat * m.n_lon * (m.n_upper * m.n_levels + m.n_surface))  # the loss's differences
    if c < FP32:
        patch = m.n_upper * pz * ph * pw + m.n_surface * ph * pw
        outside += c * (d * patch + 8 * d * d + 9 * d * d + 2 * d * patch)  # embed, down, up, recovery weights
    return {"block": total / n_blocks, "block_input": inputs / n_blocks, "attention_core_freed": 0.0,
            "outside_blocks": outside, **_loss_transients(cfg, c)}


def _fuxi_activation_bytes(cfg: DictConfig, c: int, r: int) -> dict[str, float]:
    """As for Pangu (the stream in the compute dtype c), for FuXi's blocks on one level of
    ceil(H'/2) x W'/2 tokens, counted for fuxi.py and checked against the measured forward on CPU.
    Scaled cosine attention also keeps the qkv Linear's output (3 c C, read by F.normalize), the
    normalized q (c C) and the norms of q and k (2 c per head); its continuous position bias MLP
    keeps its ReLU output [(2 w_h - 1)(2 w_w - 1), 512] per block. Outside the blocks: the
    concatenated, padded input fields [B, V, H, W] (c), the embedding LayerNorm's input and
    statistics, the down convolution's input, GroupNorm's input and its SiLU's input [M_2, C], the
    up convolution's input, GroupNorm's and SiLU's inputs [M_1, C], the head's input [M_1, 2C], the
    loss's fp32 differences, and under autocast the c-byte weight copies."""
    m, b = cfg.model, cfg.trainer.micro_batch_size
    p, d = m.patch_size, m.dim
    h1, w1 = math.ceil(m.n_lat / p), math.ceil(m.n_lon / p)
    tokens = b * math.ceil(h1 / 2) * (w1 // 2)
    ptokens = b * -(-math.ceil(h1 / 2) // m.window_size[0]) * m.window_size[0] * (w1 // 2)
    n_window = math.prod(m.window_size)
    table = (2 * m.window_size[0] - 1) * (2 * m.window_size[1] - 1)
    block = (_block_bytes(tokens, ptokens, d, m.heads, n_window, c, sdpa_math(cfg), m.get("mlp_ratio", 4.0))
             + ptokens * (4 * c * d + 2 * c * m.heads) + c * table * 512)
    channels = m.n_upper * m.n_levels + m.n_surface
    t1, t2 = b * h1 * w1, tokens
    outside = (c * b * h1 * p * w1 * p * channels  # the embedding convolution's input
               + t1 * (2 * c * d + 8) + t2 * 2 * c * d + 2 * FP32 * b * 32  # embed norm; down conv, GroupNorm
               + t2 * c * d + t1 * 3 * c * d + t1 * 2 * c * d  # SiLU; up conv, GroupNorm, SiLU; the head's input
               + FP32 * b * m.n_lat * m.n_lon * channels)  # the loss's differences
    if c < FP32:
        outside += c * (channels * p * p * d + 9 * d * d + 4 * d * d + 2 * d * channels * p * p)
    return {"block": block, "block_input": c * tokens * d, "attention_core_freed": 0.0, "outside_blocks": outside,
            **_loss_transients(cfg, c)}


def _validate_common(cfg: DictConfig, lon_tokens: list[int], lon_window: int) -> None:
    m, d = cfg.model, cfg.data
    source = as_enum(d.source, DataSource)
    require(source is DataSource.era5, "data", f"model.arch={m.arch} trains on gridded fields, data=era5; got data={source.name}",
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


def validate_pangu(cfg: DictConfig, dims: ParallelDims) -> None:
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
    if dims.spatial > 1:
        validate_spatial(cfg, dims.spatial)


def validate_fuxi(cfg: DictConfig, dims: ParallelDims) -> None:
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
        init_weights=reset_module_tree,  # torch's defaults, the models' own tables and biases (pangu.py, fuxi.py)
        **({"parallelize": parallelize, "reduce_gradients": reduce_gradients} if _arch == "pangu" else {}),
    ))
