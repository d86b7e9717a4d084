from __future__ import annotations

import math

import pytest
import torch

from memtrain.models.alphafold.family import AttentionBackend as SchemaBackend
from memtrain.models.alphafold.model import AlphaFold
from memtrain.models.alphafold.primitives import (
    MASK_BIAS,
    Attention,
    AttentionBackend,
    LayerNorm,
    Linear,
    SharedDropout,
    mask_bias,
    residual,
    set_attention_backend,
    set_chunk_size,
)
from tests.unit.alphafold.helpers import TINY, randomize_

# triton runs on CPU only in Triton's interpreter: tests/kernels covers it (same checks included)
CPU_BACKENDS = [b for b in AttentionBackend if b is not AttentionBackend.triton]


def test_linear_initialisers():
    torch.manual_seed(0)
    fan_in, fan_out = 256, 4096
    for init, variance in (("default", 1.0 / fan_in), ("relu", 2.0 / fan_in), ("normal", 1.0 / fan_in)):
        w = Linear(fan_in, fan_out, init=init).weight
        # 1M samples: the empirical std is within 1% of the target (sampling error ~0.07%)
        assert abs(w.std().item() / math.sqrt(variance) - 1.0) < 0.01, init
        if init != "normal":  # truncated at 2 standard deviations of the untruncated normal
            assert w.abs().max().item() <= 2.0 * math.sqrt(variance) / 0.87962566103423978 + 1e-6
    glorot = Linear(fan_in, fan_out, init="glorot").weight
    assert glorot.abs().max().item() <= math.sqrt(6.0 / (fan_in + fan_out))
    gating = Linear(8, 4, init="gating")
    assert torch.equal(gating.weight, torch.zeros(4, 8)) and torch.equal(gating.bias, torch.ones(4))
    final = Linear(8, 4, init="final")
    assert torch.equal(final.weight, torch.zeros(4, 8)) and torch.equal(final.bias, torch.zeros(4))
    assert torch.equal(Linear(8, 4).bias, torch.zeros(4))
    with pytest.raises(ValueError, match="unknown init"):
        Linear(8, 4, init="he")
    with pytest.raises(ValueError, match="gating"):
        Linear(8, 4, bias=False, init="gating")


def test_linear_builds_on_the_meta_device():
    with torch.device("meta"):
        layer = Linear(16, 8, init="relu")
    assert layer.weight.is_meta


def test_layer_norm_runs_in_fp32_and_returns_the_input_dtype():
    torch.manual_seed(0)
    ln = randomize_(LayerNorm(64))
    x = (3.0 + 10.0 * torch.randn(4, 64)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ln(x)
    assert out.dtype == torch.bfloat16
    reference = torch.nn.functional.layer_norm(x.float(), (64,), ln.weight, ln.bias, ln.eps).bfloat16()
    # the same fp32 computation rounded once to bf16: bit-identical
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    # fp32 input outside autocast is plain nn.LayerNorm
    x32 = torch.randn(4, 64)
    torch.testing.assert_close(ln(x32), torch.nn.LayerNorm.forward(ln, x32), rtol=0, atol=0)


def manual_attention(att: Attention, q_x, kv_x, bias):
    """Gated multi-head attention from the weights, one head at a time. bias [*, H, Q, K]."""
    h, c = att.no_heads, att.c_hidden
    q = q_x @ att.linear_q.weight.T
    k = kv_x @ att.linear_k.weight.T
    v = kv_x @ att.linear_v.weight.T
    g = torch.sigmoid(q_x @ att.linear_g.weight.T + att.linear_g.bias)
    heads = []
    for i in range(h):
        sl = slice(i * c, (i + 1) * c)
        logits = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(c) + bias[..., i, :, :]
        heads.append(torch.softmax(logits, dim=-1) @ v[..., sl] * g[..., sl])
    return torch.cat(heads, dim=-1) @ att.linear_o.weight.T + att.linear_o.bias


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_attention_matches_a_manual_softmax(backend):
    torch.manual_seed(0)
    att = randomize_(Attention(12, 10, 10, c_hidden=6, no_heads=3))
    att.backend = AttentionBackend(backend)
    q_x, kv_x = torch.randn(2, 5, 7, 12), torch.randn(2, 5, 9, 10)  # [B, S, Q, C], [B, S, K, C]
    mask = (torch.rand(2, 5, 9) > 0.3).float()
    mask[..., 0] = 1.0
    pair = torch.randn(2, 1, 3, 7, 9)  # shared by the S rows, like a pair bias
    biases = [mask_bias(mask)[..., None, None, :], pair]
    expected = manual_attention(att, q_x, kv_x, biases[0] + biases[1])
    # fp32: the same products summed in a different order (per-head loops vs batched matmul/SDPA)
    torch.testing.assert_close(att(q_x, kv_x, biases), expected, rtol=1e-5, atol=1e-5)


def test_masked_keys_have_exactly_zero_weight():
    torch.manual_seed(0)
    att = randomize_(Attention(8, 8, 8, c_hidden=4, no_heads=2))
    x = torch.randn(3, 6, 8)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    changed = x.clone()
    changed[:, [2, 4]] = 100.0 * torch.randn(3, 2, 8)  # only the masked keys' inputs change
    for backend in CPU_BACKENDS:
        att.backend = backend
        out_a = att(x, x, [mask_bias(mask)])[:, [0, 1, 3, 5]]
        out_b = att(changed, x, [mask_bias(mask)])[:, [0, 1, 3, 5]]  # queries unchanged, keys unchanged
        out_c = att(x, changed, [mask_bias(mask)])[:, [0, 1, 3, 5]]  # masked keys/values changed
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
        # exp(-1e4 + O(10)) underflows to exactly 0 in fp32, so the masked keys contribute nothing
        torch.testing.assert_close(out_a, out_c, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fully_masked_rows_stay_finite_in_half_precision(dtype):
    """MASK_BIAS is finite in fp16/bf16, so a row with every key masked averages the values
    instead of producing NaN (softmax over all -inf)."""
    torch.manual_seed(0)
    assert torch.isfinite(torch.tensor(6 * MASK_BIAS, dtype=torch.float16))
    att = randomize_(Attention(8, 8, 8, c_hidden=4, no_heads=2)).to(dtype)
    x = torch.randn(2, 5, 8, dtype=dtype)
    mask = torch.zeros(2, 5, dtype=dtype)
    mask[0] = 1.0  # batch 0 normal, batch 1 fully masked
    for backend in CPU_BACKENDS:
        att.backend = backend
        out = att(x, x, [mask_bias(mask)[:, None, None, :]])
        assert torch.isfinite(out).all(), backend


def test_naive_and_sdpa_agree_in_bf16():
    torch.manual_seed(0)
    att = randomize_(Attention(16, 16, 16, c_hidden=8, no_heads=2))
    x, bias = torch.randn(3, 11, 16), torch.randn(3, 2, 11, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        att.backend = AttentionBackend.naive
        naive = att(x, x, [bias]).float()
        att.backend = AttentionBackend.sdpa
        sdpa = att(x, x, [bias]).float()
    att.backend = AttentionBackend.naive
    ref = att(x, x, [bias])
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 per op); outputs are O(1) after a few
    # bf16 matmuls, so 3e-2 absolute is a few bf16 ulps, while a wrong mask or scale is O(1)
    torch.testing.assert_close(naive, ref, rtol=0, atol=3e-2)
    torch.testing.assert_close(sdpa, ref, rtol=0, atol=3e-2)


def test_set_attention_backend_and_chunk_size_reach_every_module():
    model = AlphaFold(**TINY)
    set_attention_backend(model, "sdpa")
    atts = [m for m in model.modules() if isinstance(m, Attention)]
    # Evoformer: row, column, 2 triangle attentions per block; extra-MSA: row and 2 triangle
    # attentions (its global column attention is no Attention); template: 2 triangle attentions
    # per pair block and the point-wise attention
    n_att = 4 * TINY["n_blocks"] + 3 * TINY["n_extra_msa_blocks"] + 2 * TINY["n_template_blocks"] + 1
    assert len(atts) == n_att and all(a.backend is AttentionBackend.sdpa for a in atts)
    set_attention_backend(model, SchemaBackend.naive)  # the config schema's enum resolves too
    assert all(a.backend is AttentionBackend.naive for a in atts)
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend(model, "flash")
    # per Evoformer and extra-MSA block: row att, column att, 2 transitions, outer product mean, 2
    # triangle attentions; per template pair block: 2 triangle attentions, the transition; the
    # point-wise attention
    n_chunked = 7 * TINY["n_blocks"] + 7 * TINY["n_extra_msa_blocks"] + 3 * TINY["n_template_blocks"] + 1
    assert set_chunk_size(model, 4) == n_chunked
    assert all(m.chunk_size == 4 for m in model.modules() if hasattr(m, "chunk_size"))
    set_chunk_size(model, None)
    assert all(m.chunk_size is None for m in model.modules() if hasattr(m, "chunk_size"))
    with pytest.raises(ValueError, match="chunk_size"):
        set_chunk_size(model, 0)


def test_shared_dropout_shares_its_mask_and_follows_the_torch_seed():
    x = torch.ones(3, 5, 7, 16)
    row = SharedDropout(0.25, shared_dim=-3).train()
    torch.manual_seed(1)
    out = row(x)
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same mask for every row
    assert torch.equal(out.unique(), torch.tensor([0.0, 1.0 / 0.75]))  # kept entries rescaled by 1 / (1 - p)
    torch.manual_seed(1)
    assert torch.equal(row(x), out)  # reproducible under a fixed seed
    col = SharedDropout(0.25, shared_dim=-2).train()
    out = col(x)
    assert torch.equal(out, out[:, :, :1].expand_as(out))
    assert torch.equal(col.eval()(x), x)


def test_residual_is_in_place_only_without_autograd():
    x, u = torch.zeros(3), torch.ones(3)
    y = residual(x, u)
    assert y is not x and torch.equal(x, torch.zeros(3))
    with torch.no_grad():
        y = residual(x, u)
        assert y is x and torch.equal(x, torch.ones(3))
        leaf = torch.zeros(3, requires_grad=True)  # e.g. a reentrant checkpoint's input
        assert residual(leaf, u) is not leaf
        low = torch.zeros(3, dtype=torch.bfloat16)  # in place would round the fp32 update to bf16
        assert residual(low, u).dtype == torch.float32
