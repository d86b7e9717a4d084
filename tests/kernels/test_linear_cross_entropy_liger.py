"""The fused loss's Liger-Kernel backend (memtrain.models.gpt.loss, used on CUDA when liger-kernel is
installed) against the chunked torch backend and the plain loss, in Triton's interpreter on CPU."""

import pytest
import torch
import torch.nn.functional as F

from memtrain.models.gpt.loss import IGNORE_INDEX, linear_cross_entropy

pytest.importorskip("liger_kernel")


def test_liger_backend_matches_the_torch_backend_and_the_plain_loss():
    g = torch.Generator().manual_seed(0)
    n, d, v = 45, 32, 77  # no power of two: partial Triton blocks over the vocabulary
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * 0.3
    targets = torch.randint(0, v, (n,), generator=g)
    targets[[0, 7, 44]] = IGNORE_INDEX

    def run(fn):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = fn(h, w)
        (loss * 0.3).backward()
        return loss.detach(), h.grad, w.grad

    liger = run(lambda h, w: linear_cross_entropy(h, w, targets, 16, backend="liger"))
    chunked = run(lambda h, w: linear_cross_entropy(h, w, targets, 16, backend="torch"))
    plain = run(lambda h, w: F.cross_entropy(h @ w.T, targets, reduction="sum", ignore_index=IGNORE_INDEX))
    # fp32 throughout (Liger accumulates dW in fp32 here): summation orders differ, a few ulps of
    # values of order 1-100
    for ours, ref in ((liger, plain), (chunked, plain), (liger, chunked)):
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_liger_refuses_a_vocabulary_shard():
    with pytest.raises(ValueError, match="vocabulary-parallel"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(6, 8), torch.zeros(4, dtype=torch.long), 4,
                             group=object(), backend="liger")
