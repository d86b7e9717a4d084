"""Triton Evoformer attention (interpreter, CPU) against the fp32 torch reference."""

import pytest
import torch

from memtrain.kernels.evoformer_attention import evoformer_attention, evoformer_attention_reference
from tests.kernels.cases import attention_inputs, check_attention

# Per-dtype tolerances, against the reference computed in fp32 from the same rounded inputs.
# fp32: the kernel differs only in summation order and exp2 vs exp (~1e-6 relative); 1e-4 leaves
#   room for sums over up to 33 keys and 2 rows without hiding a wrong term (those are O(0.1-1)).
# fp16: probabilities and ds are rounded to fp16 (eps 2^-11 = 4.9e-4) before the P V and dS Q / dS K
#   products, and outputs/gradients are stored in fp16; with |values| up to ~4 that is ~2e-3
#   absolute. 1e-2 absolute and relative is 5x that and far below an error of one wrong term.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2)}

CASES = [  # (N_q = N_k, D, bias, mask)
    (17, 16, True, True),
    (33, 32, True, False),
    (5, 64, False, True),
    (17, 32, False, False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("n,d,with_bias,with_mask", CASES,
                         ids=[f"N{n}-D{d}-{'bias' if b else 'nobias'}-{'mask' if m else 'nomask'}" for n, d, b, m in CASES])
def test_matches_reference(n, d, with_bias, with_mask, dtype):
    q, k, v, bias, mask = attention_inputs((1, 2), n, n, 2, d, dtype, "cpu", with_bias, with_mask)
    check_attention(q, k, v, bias, mask, *TOL[dtype])


def test_triangle_layout_cross_lengths_and_odd_head_dim():
    """Different query/key counts, a head dim that is not a power of two, two broadcast dims, and
    a bias with a size-1 head dim (its gradient summed over the heads by autograd)."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 9, 2, 24, generator=g).requires_grad_()
    k = torch.randn(2, 3, 20, 2, 24, generator=g).requires_grad_()
    v = torch.randn(2, 3, 20, 2, 24, generator=g).requires_grad_()
    bias = torch.randn(2, 1, 1, 9, 20, generator=g).requires_grad_()
    check_attention(q, k, v, bias, None, *TOL[torch.float32])


def test_bias_gradient_is_not_expanded_over_rows():
    """The autograd graph's gradient for the bias has the bias's own size; the launcher allocates
    no tensor of the expanded [Z, S, H, N_q, N_k] size during forward or backward."""
    S, N, H, D = 4, 17, 2, 16
    q, k, v, bias, mask = attention_inputs((1, S), N, N, H, D, torch.float32, "cpu", True, True)
    expanded = 1 * S * H * N * N
    sizes = []
    real_empty, real_empty_strided, real_zeros = torch.empty, torch.empty_strided, torch.zeros

    def spy(fn):
        def wrapped(*args, **kwargs):
            t = fn(*args, **kwargs)
            sizes.append(t.numel())
            return t
        return wrapped

    torch.empty, torch.empty_strided, torch.zeros = spy(real_empty), spy(real_empty_strided), spy(real_zeros)
    try:
        out = evoformer_attention(q, k, v, bias=bias, mask=mask)
        (dbias,) = torch.autograd.grad(out.square().sum(), [bias])
    finally:
        torch.empty, torch.empty_strided, torch.zeros = real_empty, real_empty_strided, real_zeros
    assert dbias.shape == bias.shape
    assert sizes, "the spy saw no allocation: it does not observe the launcher"
    assert max(sizes) < expanded, f"an allocation of {max(sizes)} elements >= S*H*N*N = {expanded}"
    # and the spy would have caught an expanded one: the reference's logits have that size
    assert evoformer_attention_reference(q, k, v, bias=bias).numel() * N // D >= expanded


def test_bad_shapes_are_refused():
    q = torch.randn(1, 5, 2, 16)
    with pytest.raises(ValueError, match="expected q"):
        evoformer_attention(q, torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8))
