"""A decoder-only transformer: pre-norm blocks of RMSNorm, grouped-query attention with rotary
position embeddings (attention through torch SDPA), and a SwiGLU feed-forward.

Shapes: B batch, S sequence, D model width, H query heads, K key/value heads, Dh = D / H.
The model holds no parallel or memory-saving code; those are applied from outside
(memtrain.memory, memtrain.distributed) on the module tree below.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from memtrain.models.meta import local_tensor


def ffn_hidden_size(dim: int, ffn_hidden: int | None, multiple_of: int) -> int:
    """SwiGLU width: 2/3 of 4*D (same parameters as a 4*D GELU MLP), rounded up to multiple_of."""
    if ffn_hidden is not None:
        return ffn_hidden
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


def rotary_tables(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [S, Dh] in float32 (the two halves of Dh share each frequency)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+Dh/2}) of x [B, S, H, Dh] by the position angle (RoFormer, eq. 34)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return x * cos + rotated * sin


class CoreAttention(nn.Module):
    """softmax(Q K^T / sqrt(Dh)) V with a causal mask: the part selective recomputation targets.

    q [B, H, S, Dh], k and v [B, K, S, Dh] -> [B, H, S, Dh].
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.core = CoreAttention()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, S, D] -> [B, S, D]."""
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = self.core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, hidden: int, eps: float):
        super().__init__()
        self.attention_norm = nn.RMSNorm(dim, eps=eps)
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.ffn_norm = nn.RMSNorm(dim, eps=eps)
        self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class GPT(nn.Module):
    """tokens [B, S] (int64) -> logits [B, S, V]."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        ffn_hidden: int | None = None,
        multiple_of: int = 64,
        max_seq_len: int = 2048,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = False,
        init_std: float = 0.02,
    ):
        super().__init__()
        self.n_layers, self.max_seq_len, self.rope_theta = n_layers, max_seq_len, rope_theta
        self.head_dim, self.init_std = dim // n_heads, init_std
        hidden = ffn_hidden_size(dim, ffn_hidden, multiple_of)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(
            Block(dim, n_heads, n_kv_heads or n_heads, hidden, norm_eps) for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator_for: Callable[[str, torch.Tensor], torch.Generator | None] | None = None) -> None:
        """N(0, std) for every matrix; the residual projections (wo, w2) scaled by 1/sqrt(2L); the
        norms' weights ones. Fills each weight in place; a weight that is a sharded DTensor (built
        on the meta device, then materialised: memtrain.engine.init_device) has its local shard
        filled from `generator_for(parameter name, weight)`. Without `generator_for` every draw
        comes from torch's global RNG, in module order. Runs through Module.apply, one module at a
        time, which DeepSpeed's zero.Init gathers and partitions again around each module (a
        model built under it: memtrain.engine.zero_strategy.build_partitioned)."""
        residual_std = self.init_std / math.sqrt(2 * self.n_layers)
        names = {id(module): name for name, module in self.named_modules()}

        def init(module: nn.Module) -> None:
            name = names.get(id(module))
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("wo", "w2")) else self.init_std
                gen = generator_for(f"{name}.weight", module.weight) if generator_for is not None else None
                nn.init.normal_(local_tensor(module.weight), mean=0.0, std=std, generator=gen)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(local_tensor(module.weight))

        self.apply(init)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cos, sin = rotary_tables(tokens.shape[1], self.head_dim, self.rope_theta, tokens.device)
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.output(self.norm(x))
