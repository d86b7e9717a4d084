"""Shared cases of the kernel tests (interpreter on CPU, and bf16 on CUDA)."""

import torch

from memtrain.kernels.evoformer_attention import evoformer_attention, evoformer_attention_reference


def attention_inputs(batch, n_q, n_k, heads, d, dtype, device, with_bias, with_mask, seed=0):
    """q [*batch, N_q, H, D], k v [*batch, N_k, H, D], bias [batch[0], 1, H, N_q, N_k] (shared by
    the rows batch[1]), mask [*batch, N_k] with about a quarter of the keys masked."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, n_q, heads, d, generator=g)
    k = torch.randn(*batch, n_k, heads, d, generator=g)
    v = torch.randn(*batch, n_k, heads, d, generator=g)
    bias = torch.randn(batch[0], 1, heads, n_q, n_k, generator=g) if with_bias else None
    mask = (torch.rand(*batch, n_k, generator=g) > 0.25).float() if with_mask else None
    if mask is not None:
        mask[..., 0] = 1.0  # at least one key per row
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype).requires_grad_()  # noqa: E731
    q, k, v, bias = (cast(t) for t in (q, k, v, bias))
    return q, k, v, bias, None if mask is None else mask.to(device)


def check_attention(q, k, v, bias, mask, atol, rtol):
    """Kernel vs the fp32 reference on the same (rounded) inputs: output and every input gradient."""
    out = evoformer_attention(q, k, v, bias=bias, mask=mask)
    ref = evoformer_attention_reference(q, k, v, bias=bias, mask=mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    grad = torch.randn_like(out)
    inputs = [t for t in (q, k, v, bias) if t is not None]
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(ref, inputs, grad)
    for name, a, b in zip("qkvb", got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"d{name}: {m}")
