"""Approximate attention cores for the decoder, selected with `model.attention` and put in place of
each block's exact core (the ModelSpec's `attention_core`, "attention.core") after the model is
built. Every core maps q [B, H, S, Dh], k and v [B, K, S, Dh] (K key/value heads, K divides H) to
[B, H, S, Dh] and is causal: output i depends on positions j <= i only.

- LinformerCore (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity", sec. 4):
  learned projections E, F in R^{k x N} of the keys and values along the sequence,
  softmax(Q (E K)^T / sqrt(Dh)) (F V), with one E, F per layer shared by all heads (sec. 4,
  "headwise sharing").
- PerformerCore (Choromanski et al. 2021, "Rethinking Attention with Performers", FAVOR+): positive
  orthogonal random features phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(m) (Lemma 1, sec. 2.3 and 2.4),
  so that softmax attention ~ D^-1 phi(Q) (phi(K)^T V), and its causal form by prefix sums
  (sec. 2.6, "unidirectional"), with the features redrawn every `performer_redraw` training steps
  (sec. 4, "feature redrawing").

Both causal forms run as a scan over blocks of `attention_chunk` positions: exact masked products
inside a block, a running [k or m, Dh] state across blocks, so no [S, S] matrix is ever formed.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import as_enum
from memtrain.models.gpt.family import GPTAttention
from memtrain.models.meta import local_tensor

ATTENTION_KEYS = ("attention", "linformer_k", "performer_features", "performer_redraw", "attention_chunk")


def expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, K, S, Dh] -> [B, H, S, Dh]: query head h reads key/value head h // (H / K), as SDPA's
    enable_gqa does."""
    return x if x.shape[1] == n_heads else x.repeat_interleave(n_heads // x.shape[1], dim=1)


def causal_mask(c: int, device: torch.device) -> torch.Tensor:
    """[C, C] boolean, True where key position j <= query position i."""
    return torch.ones(c, c, dtype=torch.bool, device=device).tril()


class LinformerCore(nn.Module):
    """Causal Linformer over sequences of up to `max_seq_len` positions, projected length k.

    DISCREPANCY: Linformer (sec. 4) projects the whole sequence, E K = sum_j E[:, j] k_j^T, so every
    projected key mixes in future positions: it is bidirectional and would leak the next token in a
    causal language model. Here query i attends to the projection of its own prefix,
    K~_i = sum_{j<=i} E[:, j] k_j^T and V~_i = sum_{j<=i} F[:, j] v_j^T (k x Dh each), i.e. the
    paper's attention with E and F masked to the columns j <= i. The scan never forms K~_i per
    position: inside a block, q_i . K~_i[c] = (sum over the block's j <= i of (q_i . k_j) E[c, j])
    plus q_i . (state from the earlier blocks), and the output sum_c p_ic V~_i[c] splits the same way.
    Memory per block is C x C + C x k instead of the paper's N x k, with the same learned E, F.
    """

    def __init__(self, max_seq_len: int, k: int, chunk: int):
        super().__init__()
        self.k, self.chunk = k, chunk
        bound = 1.0 / math.sqrt(max_seq_len)  # nn.Linear(N, k)'s default init, as the reference projections
        self.proj_k = nn.Parameter(torch.empty(k, max_seq_len).uniform_(-bound, bound))  # E [k, N]
        self.proj_v = nn.Parameter(torch.empty(k, max_seq_len).uniform_(-bound, bound))  # F [k, N]

    @torch.no_grad()
    def init_weights(self, generator_for: Callable[[str, torch.Tensor], torch.Generator | None], prefix: str) -> None:
        """E and F ~ U(-1/sqrt(N), 1/sqrt(N)) in place, as at construction (`prefix`: this core's
        module name; local shards drawn from `generator_for(parameter name, parameter)`)."""
        bound = 1.0 / math.sqrt(self.proj_k.shape[1])
        for key in ("proj_k", "proj_v"):
            p = getattr(self, key)
            nn.init.uniform_(local_tensor(p), -bound, bound, generator=generator_for(f"{prefix}.{key}", p))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, s, dh = q.shape
        k, v = expand_kv(k, h), expand_kv(v, h)
        e, f = self.proj_k[:, :s].to(q.dtype), self.proj_v[:, :s].to(q.dtype)
        q = q * dh ** -0.5
        k_state = q.new_zeros(b, h, self.k, dh)  # sum over earlier blocks of E[:, j] k_j^T
        v_state = q.new_zeros(b, h, self.k, dh)
        out = []
        for start in range(0, s, self.chunk):
            sl = slice(start, min(start + self.chunk, s))
            qc, kc, vc, ec, fc = q[:, :, sl], k[:, :, sl], v[:, :, sl], e[:, sl], f[:, sl]
            mask = causal_mask(qc.shape[2], q.device)
            qk = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0.0)  # [B, H, C, C]
            scores = qc @ k_state.transpose(-1, -2) + qk @ ec.transpose(0, 1)  # [B, H, C, k]
            p = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(q.dtype)
            pf = (p @ fc).masked_fill(~mask, 0.0)  # [B, H, C, C]: sum_c p_ic F[c, j]
            out.append(p @ v_state + pf @ vc)
            k_state = k_state + ec @ kc
            v_state = v_state + fc @ vc
        return torch.cat(out, dim=2)


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """[m, d] random features: stacked blocks of d orthonormal rows (QR of a Gaussian matrix), each
    row rescaled by the norm of an independent d-dimensional Gaussian vector, so that rows are
    marginally N(0, I_d) and exactly orthogonal within a block (Performer sec. 2.4, ORFs)."""
    blocks = []
    for _ in range(math.ceil(m / d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        q, _ = torch.linalg.qr(g)
        blocks.append(q.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).float()


class PerformerCore(nn.Module):
    """Causal FAVOR+ with m positive orthogonal random features per head.

    softmax(q k^T / sqrt(Dh)) = E_w[phi(q') phi(k')] with q' = q / Dh^(1/4), k' = k / Dh^(1/4)
    (Lemma 1); out_i = phi(q_i)^T sum_{j<=i} phi(k_j) v_j^T / phi(q_i)^T sum_{j<=i} phi(k_j).
    Features are computed in float32. The query features are shifted by their own row maximum (it
    cancels exactly in the ratio and depends on q_i alone, so causality holds); the key features
    take no data-dependent shift, which would leak the future, but a floor of 1e-6 (as the reference
    implementation's numerical stabilizer) keeps the denominator positive.
    """

    def __init__(self, head_dim: int, features: int, chunk: int, seed: int):
        super().__init__()
        self.m, self.chunk, self.seed = features, chunk, seed
        self.register_buffer("features", torch.empty(features, head_dim))  # w [m, Dh]
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))  # how many redraws so far
        self.register_buffer("forwards", torch.zeros((), dtype=torch.int64))  # training forwards counted
        self.redraw(count=False)

    @torch.no_grad()
    def init_weights(self, generator_for: Callable[[str, torch.Tensor], torch.Generator | None], prefix: str) -> None:
        """The buffers as at construction: no draws or forwards counted, the first features drawn."""
        self.draws.zero_()
        self.forwards.zero_()
        self.redraw(count=False)

    @torch.no_grad()
    def redraw(self, count: bool = True) -> None:
        """New features from a generator seeded by (layer seed, draw number): every data-parallel
        rank draws the same ones without communicating."""
        if count:
            self.draws += 1
        draw = 0 if self.features.is_meta else int(self.draws)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        self.features.copy_(orthogonal_gaussian(self.m, self.features.shape[1], gen).to(self.features.device))

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """x [B, H, S, Dh] -> phi(x) [B, H, S, m] (float32)."""
        x = x.float() * x.shape[-1] ** -0.25
        proj = x @ self.features.float().T - 0.5 * (x * x).sum(-1, keepdim=True)
        if is_query:
            return torch.exp(proj - proj.amax(dim=-1, keepdim=True)) / math.sqrt(self.m)
        return (torch.exp(proj) + 1e-6) / math.sqrt(self.m)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, s, dh = q.shape
        k, v = expand_kv(k, h), expand_kv(v, h).float()
        qf, kf = self.feature_map(q, True), self.feature_map(k, False)
        kv_state = qf.new_zeros(b, h, self.m, dh)  # sum over earlier blocks of phi(k_j) v_j^T
        k_state = qf.new_zeros(b, h, self.m, 1)  # sum over earlier blocks of phi(k_j)
        out = []
        for start in range(0, s, self.chunk):
            sl = slice(start, min(start + self.chunk, s))
            qc, kc, vc = qf[:, :, sl], kf[:, :, sl], v[:, :, sl]
            a = (qc @ kc.transpose(-1, -2)).tril()  # [B, H, C, C], j <= i
            num = qc @ kv_state + a @ vc
            den = qc @ k_state + a.sum(-1, keepdim=True)
            out.append(num / den)
            kv_state = kv_state + kc.transpose(-1, -2) @ vc
            k_state = k_state + kc.sum(dim=2).unsqueeze(-1)
        return torch.cat(out, dim=2).to(q.dtype)


class FeatureRedraw:
    """Forward pre-hook of the model: counts training forwards on each Performer core and redraws
    its features every `interval` of them (outside any recomputed region, so activation
    checkpointing never sees two different feature sets for one step)."""

    def __init__(self, cores: list[PerformerCore], interval: int):
        self.cores, self.interval = cores, interval

    def __call__(self, module: nn.Module, args) -> None:
        if not module.training:
            return
        for core in self.cores:
            core.forwards += 1
            if int(core.forwards) % self.interval == 0:
                core.redraw()


def set_attention_cores(model: nn.Module, blocks: nn.ModuleList, mcfg: DictConfig, attention_core: str) -> None:
    """Replace the attention core (attribute path `attention_core` in each block) by the one
    `model.attention` names; softmax keeps the model's own."""
    kind = as_enum(mcfg.get("attention", "softmax"), GPTAttention)
    if kind is GPTAttention.softmax:
        return
    parent_path, _, name = attention_core.rpartition(".")
    head_dim = mcfg.dim // mcfg.n_heads
    cores = []
    for i, block in enumerate(blocks):
        if kind is GPTAttention.linformer:
            core = LinformerCore(mcfg.max_seq_len, mcfg.linformer_k, mcfg.attention_chunk)
        elif kind is GPTAttention.performer:
            core = PerformerCore(head_dim, mcfg.performer_features, mcfg.attention_chunk, seed=i)
        else:
            raise ValueError(f"unknown attention core {kind.name!r}")
        setattr(block.get_submodule(parent_path) if parent_path else block, name, core)
        cores.append(core)
    if kind is GPTAttention.performer and mcfg.performer_redraw > 0:
        model.register_forward_pre_hook(FeatureRedraw(cores, mcfg.performer_redraw))


def core_activation_bytes(mcfg: DictConfig, b: int, s: int, compute_bytes: int) -> float:
    """Bytes the approximate core saves for backward beyond its inputs q, k, v and its output, for a
    micro-batch of b x s tokens (per block). With C = attention_chunk, per block of C positions:
    linformer: the masked q k^T and p F products (2 C^2), the scores and probabilities (2 C k; the
    softmax runs in fp32), the two running k x Dh states, and the expanded K and V for GQA;
    performer (all fp32): for q the scaled input, the projection, its row max, exp and phi; for k the
    scaled input, exp and phi; per block the masked a = phi(q) phi(k)^T (C^2), the two running
    states read (m x Dh + m), the numerator and denominator of the ratio."""
    h, dh = mcfg.n_heads, mcfg.dim // mcfg.n_heads
    kind = as_enum(mcfg.get("attention", "softmax"), GPTAttention)
    c = min(mcfg.attention_chunk, s)
    n_chunks = math.ceil(s / c)
    if kind is GPTAttention.linformer:
        k = mcfg.linformer_k
        per_chunk = compute_bytes * 2 * c * c + (4 + compute_bytes) * c * k + compute_bytes * 2 * k * dh
        expanded = compute_bytes * 2 * s * dh if (mcfg.n_kv_heads or h) != h else 0
        return b * h * (n_chunks * per_chunk + expanded)
    if kind is GPTAttention.performer:
        m = mcfg.performer_features
        features = 5 * s * m + 2 * s * dh + s  # q: scaled input, projection, its max, exp, phi; k: input, exp, phi
        per_chunk = c * c + m * dh + m + c * dh + c  # a, the two states read, numerator, denominator
        return 4 * b * h * (features + n_chunks * per_chunk)
    return 0.0
