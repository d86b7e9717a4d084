from __future__ import annotations

import pytest
import torch

from memtrain.memory.chunking import chunk_layer


def attention_like(q, k, bias):
    """Mixes the last dims only, so chunking over the leading (batch-like) dims is exact."""
    return torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ k


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_chunked_equals_unchunked_values_and_gradients(chunk):
    torch.manual_seed(0)
    q = torch.randn(3, 5, 4, 8, requires_grad=True)  # [S, H, N, D]: S x H batch-like dims
    k = torch.randn(3, 5, 4, 8, requires_grad=True)
    bias = torch.randn(1, 5, 4, 4, requires_grad=True)  # broadcast over S, like a pair bias
    full = attention_like(q, k, bias)
    chunked = chunk_layer(attention_like, {"q": q, "k": k, "bias": bias}, chunk_size=chunk, no_batch_dims=2)
    # fp32: each chunk runs the same kernels on the same rows; only the batching of matmuls differs
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
    g_full = torch.autograd.grad(full.square().sum(), (q, k, bias))
    g_chunk = torch.autograd.grad(chunked.square().sum(), (q, k, bias))
    for a, b in zip(g_chunk, g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fully_broadcast_input_is_not_expanded():
    seen = []

    def fn(x, w):
        seen.append(w.shape)
        return x * w

    x, w = torch.randn(6, 4), torch.randn(1, 4)
    out = chunk_layer(fn, {"x": x, "w": w}, chunk_size=2, no_batch_dims=1)
    torch.testing.assert_close(out, x * w, rtol=0, atol=0)
    assert seen == [torch.Size([1, 4])] * 3


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_layer(lambda x: x, {"x": torch.ones(2)}, chunk_size=0, no_batch_dims=1)
