"""Fused Triton layer norm (interpreter, CPU) against torch's layer norm in fp32."""

import pytest
import torch

from memtrain.kernels.layer_norm import layer_norm, layer_norm_reference

# fp32: same math, different summation order over C <= 37: ~1e-6; 1e-5 absolute/relative.
# fp16: x, y and dx are fp16 (eps 4.9e-4); |y| and |dx| up to ~4, so ~2e-3 absolute; 1e-2. The
#   weight and bias gradients are fp32 sums over 70 rows of fp16-rounded products: 1e-2.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_matches_reference(dtype):
    # 70 rows: two backward programs of 64 rows, the second partial; C = 37: a partial block
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 35, 37, generator=g) * 3 + 1).to(dtype).requires_grad_()
    w = torch.randn(37, generator=g).requires_grad_()
    b = torch.randn(37, generator=g).requires_grad_()
    y, y_ref = layer_norm(x, w, b, 1e-5), layer_norm_reference(x, w, b, 1e-5)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), y_ref.float(), atol=TOL[dtype][0], rtol=TOL[dtype][1])
    dy = torch.randn_like(y)
    for name, a, r in zip(("x", "weight", "bias"), torch.autograd.grad(y, (x, w, b), dy),
                          torch.autograd.grad(y_ref, (x, w, b), dy)):
        assert a.dtype == r.dtype
        torch.testing.assert_close(a.float(), r.float(), atol=TOL[dtype][0], rtol=TOL[dtype][1],
                                   msg=lambda m: f"d{name}: {m}")


def test_without_affine():
    x = torch.randn(5, 16).requires_grad_()
    y = layer_norm(x)
    torch.testing.assert_close(y, layer_norm_reference(x, None, None))
    (dx,) = torch.autograd.grad(y, x, y)
    (dx_ref,) = torch.autograd.grad(layer_norm_reference(x, None, None), x, y)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5)
