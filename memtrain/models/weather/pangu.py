"""Pangu-Weather's 3D Earth-specific transformer (Bi et al. 2023, "Accurate medium-range global
weather forecasting with 3D neural networks", Nature 619; Methods and the published pseudocode).

    upper [B, 5, 13, 721, 1440], surface [B, 4, 721, 1440]
      -> patch embedding (upper 2x4x4, surface 4x4), surface as the first level
      -> x [B, 8, 181, 360, C]                        layer 1: 2 blocks, C = 192, 6 heads
      -> down-sample (2x2 patch merging) [B, 8, 91, 180, 2C]   layers 2, 3: 6 + 6 blocks, 12 heads
      -> up-sample [B, 8, 181, 360, C]                 layer 4: 2 blocks, 6 heads
      -> concatenate layer 1's output (skip) [B, 8, 181, 360, 2C] -> patch recovery -> upper, surface
Blocks alternate plain and shifted windows of (2, 6, 12) tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memtrain.models.meta import host_table, local_tensor
from memtrain.models.reset import GeneratorFor, set_table
from memtrain.models.weather.windows import WindowBlock, merged_heads_attention


def earth_bias_size(window: tuple[int, int, int]) -> int:
    """Rows of the Earth-specific bias table per window type: (2 w_lon - 1) w_lat^2 w_z^2 (absolute
    positions in level and latitude, relative in longitude)."""
    wz, wh, ww = window
    return (2 * ww - 1) * wh * wh * wz * wz


@host_table
def earth_position_index(window: tuple[int, int, int]) -> torch.Tensor:
    """[N * N] index into the bias table for every (query, key) pair of a window (Pangu's
    _construct_index): query and key level and latitude absolute, longitude relative."""
    wz, wh, ww = window
    zz, hh, lon = torch.meshgrid(torch.arange(wz), torch.arange(wh), torch.arange(ww), indexing="ij")
    zz, hh, lon = zz.flatten(), hh.flatten(), lon.flatten()
    z_pair = zz[:, None] * wz + zz[None, :]  # (z_q, z_k)
    h_pair = hh[:, None] * wh + hh[None, :]
    w_rel = lon[:, None] - lon[None, :] + ww - 1
    return ((z_pair * wh * wh + h_pair) * (2 * ww - 1) + w_rel).flatten()


class EarthAttention3D(nn.Module):
    """Window attention with the Earth-specific positional bias: one bias table per window type
    (the window's level and latitude position), shape [(2 w_lon - 1) w_lat^2 w_z^2, T, heads], since
    the atmosphere is not translation-invariant in level or latitude (Methods, eq. for B).

    windows [B, n_W, T, N, C], mask [T, N, N] or None -> [B, n_W, T, N, C]."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int, int], n_types: int):
        super().__init__()
        self.heads, self.window, self.n_types = heads, tuple(window), n_types
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.earth_specific_bias = nn.Parameter(torch.empty(earth_bias_size(self.window), n_types, heads))
        self.register_buffer("position_index", None, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator_for: GeneratorFor | None = None) -> None:
        """The bias table N(0, 0.02) truncated to [-2, 2] (Pangu's pseudocode: trunc_normal_(std=.02));
        the position index recomputed (the qkv and proj Linears reset themselves)."""
        bias = self.earth_specific_bias
        gen = generator_for("earth_specific_bias", bias) if generator_for is not None else None
        nn.init.trunc_normal_(local_tensor(bias), std=0.02, generator=gen)
        set_table(self, "position_index", earth_position_index(self.window))

    def bias(self) -> torch.Tensor:
        """[T, heads, N, N]."""
        n = math.prod(self.window)
        b = self.earth_specific_bias[self.position_index].view(n, n, self.n_types, self.heads)
        return b.permute(2, 3, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, nw, t, n, c = x.shape
        qkv = self.qkv(x).view(b, nw, t, n, 3, self.heads, c // self.heads).permute(4, 0, 1, 2, 5, 3, 6)
        bias = self.bias()
        if mask is not None:
            bias = bias + mask[:, None]
        out = merged_heads_attention(qkv[0], qkv[1], qkv[2], bias, scale=None)  # softmax(q k^T / sqrt(d) + B) v
        return self.proj(out.transpose(3, 4).reshape(b, nw, t, n, c))


def _pad_end(x: torch.Tensor, dims_pads: dict[int, int]) -> torch.Tensor:
    pad = [0] * (2 * x.dim())
    for dim, p in dims_pads.items():
        pad[2 * (x.dim() - 1 - dim) + 1] = p
    return F.pad(x, pad)


class PatchEmbedding(nn.Module):
    """upper [B, V_u, L, H, W], surface [B, V_s, H, W] -> x [B, Z, H', W', C], surface first.
    # DISCREPANCY: Pangu concatenates three constant masks (land-sea, soil type, topography) to the
    # surface variables; the synthetic ERA5-format data has none, so only the V_s variables are embedded.
    """

    def __init__(self, n_upper: int, n_surface: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.patch = tuple(patch)
        self.upper = nn.Conv3d(n_upper, dim, kernel_size=self.patch, stride=self.patch)
        self.surface = nn.Conv2d(n_surface, dim, kernel_size=self.patch[1:], stride=self.patch[1:])

    def forward(self, upper: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
        pz, ph, pw = self.patch
        upper = _pad_end(upper, {2: -upper.shape[2] % pz, 3: -upper.shape[3] % ph, 4: -upper.shape[4] % pw})
        surface = _pad_end(surface, {2: -surface.shape[2] % ph, 3: -surface.shape[3] % pw})
        x = torch.cat([self.surface(surface)[:, :, None], self.upper(upper)], dim=2)  # [B, C, Z, H', W']
        return x.permute(0, 2, 3, 4, 1)


class PatchRecovery(nn.Module):
    """x [B, Z, H', W', 2C] -> upper [B, V_u, L, H, W], surface [B, V_s, H, W] (transposed convolutions,
    cropped to the input grid)."""

    def __init__(self, n_upper: int, n_surface: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.upper = nn.ConvTranspose3d(dim, n_upper, kernel_size=tuple(patch), stride=tuple(patch))
        self.surface = nn.ConvTranspose2d(dim, n_surface, kernel_size=tuple(patch[1:]), stride=tuple(patch[1:]))

    def forward(self, x: torch.Tensor, levels: int, lat: int, lon: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.permute(0, 4, 1, 2, 3)  # [B, 2C, Z, H', W']
        upper = self.upper(x[:, :, 1:])[:, :, :levels, :lat, :lon]
        surface = self.surface(x[:, :, 0])[:, :, :lat, :lon]
        return upper, surface


class DownSample(nn.Module):
    """Patch merging: [B, Z, H, W, C] -> [B, Z, ceil(H/2), W/2, 2C] (2x2 in latitude and longitude,
    latitude zero-padded to even, LayerNorm, Linear 4C -> 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.linear = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_end(x, {2: x.shape[2] % 2})
        b, z, h, w, c = x.shape
        x = x.view(b, z, h // 2, 2, w // 2, 2, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, z, h // 2, w // 2, 4 * c)
        return self.linear(self.norm(x))


class UpSample(nn.Module):
    """Patch expanding: [B, Z, H, W, 2C] -> [B, Z, h, 2W, C] (Linear 2C -> 4C, 2x2 rearrangement,
    cropped to latitude h, LayerNorm, Linear C -> C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm, self.linear2 = nn.LayerNorm(dim), nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, h_out: int) -> torch.Tensor:
        x = self.linear1(x)
        b, z, h, w, c4 = x.shape
        c = c4 // 4
        x = x.view(b, z, h, w, 2, 2, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, z, 2 * h, 2 * w, c)
        return self.linear2(self.norm(x[:, :, :h_out]))


def token_grid(n_levels: int, n_lat: int, n_lon: int, patch) -> tuple[int, int, int]:
    """(Z, H', W') of the first stage: embedded levels + the surface, latitude and longitude patches."""
    return math.ceil(n_levels / patch[0]) + 1, math.ceil(n_lat / patch[1]), math.ceil(n_lon / patch[2])


def padded(shape: tuple[int, int, int], window) -> tuple[int, int, int]:
    return tuple(-(-s // w) * w for s, w in zip(shape, window))


class Pangu(nn.Module):
    def __init__(self, n_levels: int = 13, n_lat: int = 721, n_lon: int = 1440, n_upper: int = 5, n_surface: int = 4,
                 patch_size=(2, 4, 4), window_size=(2, 6, 12), dim: int = 192, depths=(2, 6, 6, 2),
                 heads=(6, 12, 12, 6), mlp_ratio: float = 4.0, drop_path: float = 0.2):
        super().__init__()
        self.grid = (n_levels, n_lat, n_lon)
        patch, window = tuple(patch_size), tuple(window_size)
        self.embed = PatchEmbedding(n_upper, n_surface, dim, patch)
        z, h, w = token_grid(n_levels, n_lat, n_lon, patch)
        self.shape1, self.shape2 = (z, h, w), (z, math.ceil(h / 2), w // 2)
        rates = [drop_path * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        blocks, self.stage_of = [], []
        for stage, (depth, n_heads) in enumerate(zip(depths, heads)):
            shape, width = (self.shape1, dim) if stage in (0, 3) else (self.shape2, 2 * dim)
            pz, ph, pw = padded(shape, window)
            n_types = (pz // window[0]) * (ph // window[1])
            for i in range(depth):
                attention = EarthAttention3D(width, n_heads, window, n_types)
                blocks.append(WindowBlock(width, attention, (pz, ph, pw), window, shifted=i % 2 == 1,
                                          mlp_ratio=mlp_ratio, drop_path=rates[len(blocks)]))
                self.stage_of.append(stage)
        self.blocks = nn.ModuleList(blocks)  # the units of activation checkpointing
        self.downsample, self.upsample = DownSample(dim), UpSample(dim)
        self.recovery = PatchRecovery(n_upper, n_surface, 2 * dim, patch)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"upper": [B, V_u, L, H, W], "surface": [B, V_s, H, W]} -> the same shapes at t + lead."""
        x = self.embed(inputs["upper"], inputs["surface"])
        skip, stage = None, 0
        for block, s in zip(self.blocks, self.stage_of):
            if s != stage:
                if stage == 0:
                    skip = x
                    x = self.downsample(x)
                elif s == 3:
                    x = self.upsample(x, self.shape1[1])
                stage = s
            x = block(x)
        x = torch.cat([skip, x], dim=-1)
        upper, surface = self.recovery(x, *self.grid)
        return {"upper": upper, "surface": surface}
