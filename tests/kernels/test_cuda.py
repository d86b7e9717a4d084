"""The kernel cases compiled on a CUDA device, bf16 included (the interpreter mishandles bf16).
Skips without CUDA."""

import pytest
import torch

from memtrain.kernels.layer_norm import layer_norm, layer_norm_reference
from tests.kernels.cases import attention_inputs, check_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# fp32: tl.dot runs with input_precision="ieee" for fp32 inputs, so the kernels differ from the
#   fp32 reference in summation order only; 1e-4 as under the interpreter.
# fp16: probabilities and gradients rounded to fp16 (eps 4.9e-4) times values up to ~4: 1e-2.
# bf16: 8 mantissa bits (eps 3.9e-3) where fp16 has 11, so 8x the fp16 error: 5e-2 absolute and
#   relative, still far below the O(1) error of a wrong term.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = [(17, 16, True, True), (33, 32, True, False), (5, 64, False, True), (17, 32, False, False),
         (200, 32, True, True)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("n,d,with_bias,with_mask", CASES)
def test_attention_matches_reference(n, d, with_bias, with_mask, dtype):
    q, k, v, bias, mask = attention_inputs((2, 3), n, n, 2, d, dtype, "cuda", with_bias, with_mask)
    check_attention(q, k, v, bias, mask, *TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
def test_layer_norm_matches_reference(dtype):
    x = (torch.randn(3, 70, 37, device="cuda") * 3 + 1).to(dtype).requires_grad_()
    w = torch.randn(37, device="cuda", requires_grad=True)
    b = torch.randn(37, device="cuda", requires_grad=True)
    y, y_ref = layer_norm(x, w, b), layer_norm_reference(x, w, b)
    atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(y.float(), y_ref.float(), atol=atol, rtol=rtol)
    dy = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(y_ref, (x, w, b), dy)):
        torch.testing.assert_close(a.float(), r.float(), atol=max(atol, 1e-3) if a.dim() == 1 else atol, rtol=rtol)
