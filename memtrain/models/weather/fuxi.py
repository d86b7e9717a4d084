"""FuXi's U-Transformer (Chen et al. 2023, "FuXi: a cascade machine learning forecasting system for
15-day global weather forecast", npj Clim. Atmos. Sci. 6:190; Section "FuXi model architecture"):
cube embedding, a down-block, Swin Transformer V2 blocks (Liu et al. 2022: scaled cosine attention
with a learnable logit scale, res-post-norm, log-spaced continuous position bias), an up-block
with a skip connection, and a linear head.

    upper [B, 5, 13, 721, 1440], surface [B, 4, 721, 1440] -> 69 channels
      -> cube embedding (4x4 patches) [B, 181, 360, C] -> down-block (stride-2 conv) [B, 91, 180, C]
      -> 48 Swin V2 blocks (windows of 9 x 9, shifted every other block, wrapping in longitude)
      -> up-block (transposed conv) [B, 181, 360, C], concatenated with the down-block's input
      -> linear head to 69 x 4 x 4 per token -> upper, surface
# DISCREPANCY: FuXi embeds two time steps (t-1, t) with a (2, 4, 4) cube; the weather recipes feed
# one time step, as Pangu does, so the cube is (4, 4) over one step. Its down/up blocks carry
# residual blocks with GroupNorm and SiLU; here one of each around the (de)convolution.
# DISCREPANCY: the paper gives C = 1536 and 48 blocks but not the head count or window size: 24
# heads (head width 64) and 9 x 9 windows (which tile the 91 -> 99 x 180 grid) are choices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memtrain.models.meta import host_table, local_tensor
from memtrain.models.reset import GeneratorFor, set_table
from memtrain.models.weather.windows import WindowBlock, merged_heads_attention


@host_table
def log_spaced_coords(window: tuple[int, int]) -> torch.Tensor:
    """[(2 w_h - 1)(2 w_w - 1), 2] relative offsets scaled to [-8, 8] and log-spaced:
    sign(x) log2(1 + |x|) / log2(8) (Swin V2, Section 3.3)."""
    wh, ww = window
    dh, dw = torch.meshgrid(torch.arange(-(wh - 1), wh, dtype=torch.float32),
                            torch.arange(-(ww - 1), ww, dtype=torch.float32), indexing="ij")
    table = torch.stack([dh / max(wh - 1, 1), dw / max(ww - 1, 1)], dim=-1).view(-1, 2) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


@host_table
def relative_index(window: tuple[int, int]) -> torch.Tensor:
    wh, ww = window
    hh, lon = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    hh, lon = hh.flatten(), lon.flatten()
    return ((hh[:, None] - hh[None, :] + wh - 1) * (2 * ww - 1) + lon[:, None] - lon[None, :] + ww - 1).flatten()


class CosineWindowAttention(nn.Module):
    """Scaled cosine attention: softmax(cos(q, k) * exp(s) + B) v, with s a learnable per-head logit
    scale clamped at log(100), and B = 16 sigmoid(MLP(log-spaced offsets)) the continuous position bias.

    windows [B, n_W, T, N, C], mask [T, N, N] or None -> [B, n_W, T, N, C]; windows span one level."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int]):
        super().__init__()
        self.heads, self.window = heads, tuple(window)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.empty(heads, 1, 1))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, heads, bias=False))
        self.register_buffer("coords", None, persistent=False)
        self.register_buffer("index", None, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator_for: GeneratorFor | None = None) -> None:
        """logit scale log(10) (Swin V2's initial temperature, 10); the offsets and index tables
        recomputed (the Linears reset themselves)."""
        local_tensor(self.logit_scale).fill_(math.log(10.0))
        set_table(self, "coords", log_spaced_coords(self.window))
        set_table(self, "index", relative_index(self.window))

    def bias(self) -> torch.Tensor:
        """[heads, N, N]."""
        n = math.prod(self.window)
        table = 16 * torch.sigmoid(self.cpb_mlp(self.coords))  # [(2wh-1)(2ww-1), heads]
        return table[self.index].view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, nw, t, n, c = x.shape
        qkv = self.qkv(x).view(b, nw, t, n, 3, self.heads, c // self.heads).permute(4, 0, 1, 2, 5, 3, 6)
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # [heads, 1, 1]
        q = F.normalize(qkv[0], dim=-1) * scale.to(qkv.dtype)
        k = F.normalize(qkv[1], dim=-1)
        bias = self.bias().expand(t, -1, -1, -1)
        if mask is not None:
            bias = bias + mask[:, None]
        out = merged_heads_attention(q, k, qkv[2], bias, scale=1.0)
        return self.proj(out.transpose(3, 4).reshape(b, nw, t, n, c))


class FuXi(nn.Module):
    def __init__(self, n_levels: int = 13, n_lat: int = 721, n_lon: int = 1440, n_upper: int = 5, n_surface: int = 4,
                 patch_size: int = 4, window_size=(9, 9), dim: int = 1536, depth: int = 48, heads: int = 24,
                 mlp_ratio: float = 4.0, drop_path: float = 0.2):
        super().__init__()
        self.grid, self.n_upper, self.n_surface, self.patch = (n_levels, n_lat, n_lon), n_upper, n_surface, patch_size
        channels = n_upper * n_levels + n_surface
        self.embed = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        self.embed_norm = nn.LayerNorm(dim)
        h, w = math.ceil(n_lat / patch_size), math.ceil(n_lon / patch_size)
        self.h1, self.shape = h, (1, math.ceil(h / 2), w // 2)
        self.down = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.down_norm = nn.GroupNorm(32 if dim % 32 == 0 else 1, dim)
        window3 = (1, *window_size)
        padded = (1, -(-self.shape[1] // window_size[0]) * window_size[0], self.shape[2])
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            WindowBlock(dim, CosineWindowAttention(dim, heads, tuple(window_size)), padded, window3,
                        shifted=i % 2 == 1, mlp_ratio=mlp_ratio, drop_path=rates[i]) for i in range(depth))
        self.up = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.up_norm = nn.GroupNorm(32 if dim % 32 == 0 else 1, dim)
        self.head = nn.Linear(2 * dim, channels * patch_size * patch_size)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"upper": [B, V_u, L, H, W], "surface": [B, V_s, H, W]} -> the same shapes at t + lead."""
        upper, surface = inputs["upper"], inputs["surface"]
        b, (levels, lat, lon), p = upper.shape[0], self.grid, self.patch
        x = torch.cat([upper.flatten(1, 2), surface], dim=1)  # [B, V_u L + V_s, H, W]
        x = F.pad(x, (0, -lon % p, 0, -lat % p))
        x = self.embed(x)  # [B, C, H', W']
        x = self.embed_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        skip = x
        x = F.silu(self.down_norm(self.down(x)))  # [B, C, ceil(H'/2), W'/2]
        x = x.permute(0, 2, 3, 1)[:, None]  # [B, 1, H'', W'', C]: one level for the window machinery
        for block in self.blocks:
            x = block(x)
        x = x[:, 0].permute(0, 3, 1, 2)
        x = F.silu(self.up_norm(self.up(x)))[:, :, : self.h1]  # [B, C, H', W']
        x = torch.cat([skip, x], dim=1).permute(0, 2, 3, 1)  # [B, H', W', 2C]
        y = self.head(x).view(b, x.shape[1], x.shape[2], -1, p, p)  # [B, H', W', channels, p, p]
        y = y.permute(0, 3, 1, 4, 2, 5).reshape(b, -1, x.shape[1] * p, x.shape[2] * p)[:, :, :lat, :lon]
        vu = self.n_upper * levels
        return {"upper": y[:, :vu].unflatten(1, (self.n_upper, levels)), "surface": y[:, vu:]}
