"""3D window attention machinery shared by Pangu-Weather and FuXi: window partition/reverse,
the shifted-window roll and its mask, a post-norm transformer block and DropPath.

Token grids are channels-last, x [B, Z, H, W, C] (pressure level, latitude, longitude). Windows
are (w_z, w_h, w_w); they are grouped as [B, n_W, T, N, C] with n_W windows along longitude,
T = n_Z * n_H window "types" (the (level, latitude) position of a window, which selects its
Earth-specific bias in Pangu) and N = w_z w_h w_w tokens per window. The shifted-window roll
wraps around longitude (the Earth is periodic there, so no mask) and is masked along level and
latitude, where the rolled-in tokens come from the other end (the other pole, the other end of
the atmosphere) (Pangu-Weather, Bi et al. 2023, Methods "3D Earth-specific transformer").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memtrain.models.meta import host_table
from memtrain.models.reset import GeneratorFor, set_table

MASKED = -100.0  # added to the logits of token pairs in different regions (as Swin and Pangu do)


def window_partition(x: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """[B, Z, H, W, C] -> [B, n_W, T, N, C] (Z, H, W multiples of the window)."""
    b, z, h, w, c = x.shape
    wz, wh, ww = window
    x = x.view(b, z // wz, wz, h // wh, wh, w // ww, ww, c)
    x = x.permute(0, 5, 1, 3, 2, 4, 6, 7)  # B, n_W, n_Z, n_H, wz, wh, ww, C
    return x.reshape(b, w // ww, (z // wz) * (h // wh), wz * wh * ww, c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int, int], shape: tuple[int, int, int]) -> torch.Tensor:
    """[B, n_W, T, N, C] -> [B, Z, H, W, C]; the inverse of window_partition."""
    b, c = windows.shape[0], windows.shape[-1]
    z, h, w = shape
    wz, wh, ww = window
    x = windows.view(b, w // ww, z // wz, h // wh, wz, wh, ww, c)
    x = x.permute(0, 2, 4, 3, 5, 1, 6, 7)  # B, n_Z, wz, n_H, wh, n_W, ww, C
    return x.reshape(b, z, h, w, c)


@host_table
def shift_mask(shape: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]) -> torch.Tensor:
    """[T, N, N]: MASKED where two tokens of a rolled window came from different regions along level
    or latitude (no wrap there), 0 elsewhere. Longitude wraps around the globe: never masked."""
    z, h, _ = shape
    wz, wh, ww = window
    region = torch.zeros(z, h, ww)
    count = 0
    for zs in (slice(0, z - wz), slice(z - wz, z - shift[0]), slice(z - shift[0], z)):
        for hs in (slice(0, h - wh), slice(h - wh, h - shift[1]), slice(h - shift[1], h)):
            region[zs, hs, :] = count
            count += 1
    ids = window_partition(region[None, ..., None], (wz, wh, ww))[0, 0, :, :, 0]  # [T, N]
    return (ids[:, :, None] != ids[:, None, :]).float() * MASKED


def pad_to_window(x: torch.Tensor, window: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad level and latitude (at the end) to multiples of the window; (x, (pad_z, pad_h))."""
    pz, ph = -x.shape[1] % window[0], -x.shape[2] % window[1]
    if pz or ph:
        x = F.pad(x, (0, 0, 0, 0, 0, ph, 0, pz))
    return x, (pz, ph)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class WindowBlock(nn.Module):
    """A (shifted-)window transformer block with post-normalization, as Pangu's pseudocode and
    Swin V2 write it:

        x = x + DropPath(LN(WindowAttention(pad(x))))
        x = x + DropPath(LN(MLP(x)))

    x [B, Z, H, W, C] -> [B, Z, H, W, C]. `shape` is the padded (Z, H, W) of the stage; `attention`
    maps windows [B, n_W, T, N, C] and a mask [T, N, N] (or None) to windows."""

    def __init__(self, dim: int, attention: nn.Module, shape: tuple[int, int, int], window: tuple[int, int, int],
                 shifted: bool, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window, self.shape = tuple(window), tuple(shape)
        self.shifted = shifted
        self.shift = tuple(w // 2 for w in window) if shifted else (0, 0, 0)
        self.attention = attention
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)
        self.register_buffer("mask", None, persistent=False)
        self.reset_parameters()

    def mask_table(self) -> torch.Tensor | None:
        """[T, N, N] shifted-window mask (`shift_mask`), None for an unshifted block."""
        return shift_mask(self.shape, self.window, self.shift) if self.shifted else None

    @torch.no_grad()
    def reset_parameters(self, generator_for: GeneratorFor | None = None) -> None:
        """The mask recomputed (the block's norms, MLP and attention reset themselves)."""
        set_table(self, "mask", self.mask_table())

    def roll(self, x: torch.Tensor, sign: int) -> torch.Tensor:
        return torch.roll(x, shifts=tuple(sign * s for s in self.shift), dims=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, h = x.shape[1], x.shape[2]
        y, _ = pad_to_window(x, self.window)
        if any(self.shift):
            y = self.roll(y, -1)
        y = window_reverse(self.attention(window_partition(y, self.window), self.mask), self.window, y.shape[1:4])
        if any(self.shift):
            y = self.roll(y, 1)
        y = y[:, :z, :h]
        x = x + self.drop_path(self.norm1(y))
        return x + self.drop_path(self.norm2(self.mlp(x)))


def merged_heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                           scale: float | None) -> torch.Tensor:
    """SDPA over windows: q, k, v [B, n_W, T, H, N, d], bias [T, H, N, N] -> [B, n_W, T, H, N, d].

    The window types and heads are merged into SDPA's head dimension, so the per-type bias is an
    attn_mask broadcast over batch and longitude windows (no copy per window)."""
    b, nw, t, heads, n, d = q.shape
    merge = lambda x: x.reshape(b * nw, t * heads, n, d)  # noqa: E731
    out = F.scaled_dot_product_attention(merge(q), merge(k), merge(v), attn_mask=bias.reshape(t * heads, n, n).to(q.dtype),
                                         scale=scale)
    return out.view(b, nw, t, heads, n, d)
