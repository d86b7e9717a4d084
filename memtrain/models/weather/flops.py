"""FLOPs of the weather transformers (2 FLOPs per multiply-add), per micro-batch of B samples.

A window block of width C on M tokens (M_p after padding to whole windows, N tokens per window,
MLP ratio r) costs
    qkv and output projections  2 M_p (3 C^2 + C^2) = 8 M_p C^2
    attention core              QK^T and AV: 2 x 2 M_p N C = 4 M_p N C
    MLP                         2 x 2 M r C^2 = 4 r M C^2
(FuXi's cosine attention adds the norms of q and k and its continuous-position-bias MLP, per
window type, both negligible here). Outside the blocks: the patch embedding (a convolution whose
stride is its kernel, 2 C FLOPs per input value), the down/up-sampling and the patch recovery.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from memtrain.models.weather.pangu import padded, token_grid


def window_block_flops(tokens: float, padded_tokens: float, dim: int, window_tokens: int, mlp_ratio: float) -> tuple[float, float]:
    """(one block, its attention core) forward FLOPs."""
    core = 4 * padded_tokens * window_tokens * dim
    return 8 * padded_tokens * dim**2 + core + 4 * mlp_ratio * tokens * dim**2, core


def pangu_forward_flops(cfg: DictConfig) -> tuple[float, float, float]:
    """(mean block, outside the blocks, mean attention core) of Pangu's four stages: C on the first
    token grid, 2C on the half-resolution one (the middle stages)."""
    m, b = cfg.model, cfg.trainer.micro_batch_size
    window = tuple(m.window_size)
    s1 = token_grid(m.n_levels, m.n_lat, m.n_lon, m.patch_size)
    s2 = (s1[0], math.ceil(s1[1] / 2), s1[2] // 2)
    stages = [(s1, m.dim), (s2, 2 * m.dim), (s2, 2 * m.dim), (s1, m.dim)]
    total = core = 0.0
    for (shape, dim), depth in zip(stages, m.depths):
        f, c = window_block_flops(b * math.prod(shape), b * math.prod(padded(shape, window)), dim,
                                  math.prod(window), m.mlp_ratio)
        total, core = total + depth * f, core + depth * c
    n_blocks = sum(m.depths)
    values = b * m.n_lat * m.n_lon * (m.n_upper * m.n_levels + m.n_surface)
    t2 = b * math.prod(s2)
    outside = (2 * values * m.dim  # patch embedding
               + 2 * t2 * 4 * m.dim * 2 * m.dim + 2 * t2 * 2 * m.dim * 4 * m.dim  # down- and up-sampling Linears
               + 2 * values * 2 * m.dim)  # patch recovery from the concatenated 2C skip
    return total / n_blocks, float(outside), core / n_blocks


def fuxi_forward_flops(cfg: DictConfig) -> tuple[float, float, float]:
    """(one block, outside, attention core) of FuXi's blocks on one ceil(H'/2) x W'/2 token level."""
    m, b = cfg.model, cfg.trainer.micro_batch_size
    h1, w1 = math.ceil(m.n_lat / m.patch_size), math.ceil(m.n_lon / m.patch_size)
    tokens = b * math.ceil(h1 / 2) * (w1 // 2)
    ptokens = b * -(-math.ceil(h1 / 2) // m.window_size[0]) * m.window_size[0] * (w1 // 2)
    block, core = window_block_flops(tokens, ptokens, m.dim, math.prod(m.window_size), m.mlp_ratio)
    values = b * m.n_lat * m.n_lon * (m.n_upper * m.n_levels + m.n_surface)
    t1 = b * h1 * w1
    outside = (2 * values * m.dim  # cube embedding
               + 2 * tokens * 9 * m.dim**2 + 2 * t1 * 4 * m.dim**2  # 3x3 stride-2 down-sampling, 2x2 transposed up-sampling
               + 2 * values * 2 * m.dim)  # the head from the concatenated 2C skip
    return block, float(outside), core


def flops_per_target(forward, num_blocks):
    """config -> training FLOPs per sample (three forwards' worth), from a forward_flops function and
    the model's num_blocks."""
    def per_sample(cfg: DictConfig) -> float:
        block, outside, _ = forward(cfg)
        return 3 * (num_blocks(cfg.model) * block + outside) / cfg.trainer.micro_batch_size
    return per_sample
