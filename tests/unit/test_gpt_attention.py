"""Approximate attention cores of the decoder: shapes, causality, Performer's approximation of
softmax attention, and the Linformer scan against its prefix-projection definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memtrain.models import get_spec
from memtrain.models.gpt.attention import LinformerCore, PerformerCore, expand_kv


def qkv(b=2, h=4, kv=2, s=40, dh=16, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, s, dh, generator=g) * scale
    k = torch.randn(b, kv, s, dh, generator=g) * scale
    v = torch.randn(b, kv, s, dh, generator=g)
    return q, k, v


CORES = {
    "linformer": lambda: LinformerCore(max_seq_len=64, k=8, chunk=16),
    "performer": lambda: PerformerCore(head_dim=16, features=32, chunk=16, seed=0),
}


@pytest.mark.parametrize("name", CORES)
def test_shapes_and_causality(name):
    torch.manual_seed(0)
    core = CORES[name]()
    q, k, v = qkv(s=40)  # 40: the last block of 16 is partial
    out = core(q, k, v)
    assert out.shape == q.shape and torch.isfinite(out).all()
    t = 21  # perturb every position after t: outputs up to t must not move
    k2, v2, q2 = k.clone(), v.clone(), q.clone()
    k2[:, :, t + 1:] += 3.0
    v2[:, :, t + 1:] -= 2.0
    q2[:, :, t + 1:] *= -1.0
    out2 = core(q2, k2, v2)
    # exactly equal: position <= t never reads a perturbed value (the scan over blocks is causal)
    assert torch.equal(out[:, :, : t + 1], out2[:, :, : t + 1])
    assert not torch.allclose(out[:, :, t + 1:], out2[:, :, t + 1:])


def test_linformer_scan_equals_prefix_projection():
    """The block scan computes softmax(q_i K~_i^T / sqrt(Dh)) V~_i with K~_i = sum_{j<=i} E[:, j] k_j^T."""
    torch.manual_seed(0)
    core = LinformerCore(max_seq_len=64, k=8, chunk=16).double()
    q, k, v = (t.double() for t in qkv(s=40))
    h, s, dh = q.shape[1], q.shape[2], q.shape[3]
    kk, vv = expand_kv(k, h), expand_kv(v, h)
    e, f = core.proj_k[:, :s], core.proj_v[:, :s]
    k_tilde = torch.cumsum(e.T[None, None, :, :, None] * kk[:, :, :, None, :], dim=2)  # [B, H, S, k, Dh]
    v_tilde = torch.cumsum(f.T[None, None, :, :, None] * vv[:, :, :, None, :], dim=2)
    p = torch.softmax(torch.einsum("bhsd,bhskd->bhsk", q, k_tilde) / dh ** 0.5, dim=-1)
    ref = torch.einsum("bhsk,bhskd->bhsd", p, v_tilde)
    torch.testing.assert_close(core(q, k, v), ref, rtol=1e-10, atol=1e-10)  # float64: only rounding differs
    core.chunk = 7  # the result does not depend on the block size
    torch.testing.assert_close(core(q, k, v), ref, rtol=1e-10, atol=1e-10)


def test_performer_approximates_causal_softmax():
    """Relative error of FAVOR+ against exact causal softmax attention falls as the number of random
    features m grows, and is below 0.1 at m = 1024 for inputs of norm ~0.5 * sqrt(Dh) (the
    estimator's variance grows with exp(|q|^2 + |k|^2), Performer Lemma 2, so the bound is stated for
    small-norm inputs), averaged over 3 feature draws."""
    q, k, v = qkv(b=1, h=2, kv=2, s=64, dh=16, scale=0.5, seed=1)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    errors = {}
    for m in (16, 128, 1024):
        errs = []
        for seed in range(3):
            core = PerformerCore(head_dim=16, features=m, chunk=16, seed=seed)
            errs.append(float((core(q, k, v) - exact).norm() / exact.norm()))
        errors[m] = sum(errs) / len(errs)
    assert errors[16] > errors[128] > errors[1024], errors
    assert errors[1024] < 0.1, errors


def test_orthogonal_features_are_orthogonal_within_a_block():
    core = PerformerCore(head_dim=16, features=40, chunk=16, seed=3)
    w = core.features[:16]
    gram = w @ w.T
    off = gram - torch.diag(torch.diag(gram))
    assert off.abs().max() < 1e-4 * gram.diag().max()  # float32 rounding of exactly orthogonal rows


def test_redraw_on_training_forwards(compose):
    cfg = compose("model.attention=performer", "model.performer_features=16", "model.performer_redraw=2")
    model = get_spec("gpt").build_model(cfg.model)
    core = model.layers[0].attention.core
    assert isinstance(core, PerformerCore)
    tokens = torch.randint(0, 64, (2, 8))
    first = core.features.clone()
    model(tokens)
    assert torch.equal(core.features, first)
    model(tokens)  # the second training forward redraws
    assert not torch.equal(core.features, first) and int(core.draws) == 1
    model.eval()
    after = core.features.clone()
    model(tokens)
    model(tokens)
    assert torch.equal(core.features, after)


@pytest.mark.parametrize("attention", ["linformer", "performer"])
def test_gpt_with_approximate_attention_backward(compose, attention):
    cfg = compose(f"model.attention={attention}", "model.linformer_k=8", "model.performer_features=16",
                  "model.attention_chunk=8")
    model = get_spec("gpt").build_model(cfg.model)
    assert type(model.layers[1].attention.core).__name__.lower().startswith(attention)
    tokens = torch.randint(0, 64, (2, 20))
    logits = model(tokens)
    assert logits.shape == (2, 20, 64)
    F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
