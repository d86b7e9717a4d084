"""The decoder's fused, chunked linear cross entropy (memtrain.models.gpt.loss) against the plain
loss on full logits: values and gradients, ignored targets, autocast, and that no [N, V] tensor is
ever allocated."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from memtrain.config.errors import ConfigError
from memtrain.config.validate import validate
from memtrain.engine.trainer import Trainer
from memtrain.models.gpt.loss import (
    IGNORE_INDEX,
    DeferredLogits,
    LinearCrossEntropyHead,
    cross_entropy,
    default_chunk,
    linear_cross_entropy,
    loss_fn,
)
from memtrain.models.gpt.spec import apply_loss_head, loss_chunk


def problem(n=37, d=24, v=53, seed=0, ignored=(3, 10, 11)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * 0.3
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(ignored)] = IGNORE_INDEX
    return hidden, weight, targets


def grads_of(loss_fn_, hidden, weight, scale=1.0):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = loss_fn_(h, w)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


def plain(targets):
    return lambda h, w: F.cross_entropy(F.linear(h, w).float(), targets, reduction="sum", ignore_index=IGNORE_INDEX)


# chunks that divide N, leave a remainder, are a single token, or cover all N at once
@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 64])
def test_fp32_values_and_gradients_match_the_plain_loss(chunk):
    hidden, weight, targets = problem()
    ref = grads_of(plain(targets), hidden, weight, scale=0.25)
    got = grads_of(lambda h, w: linear_cross_entropy(h, w, targets, chunk, backend="torch"), hidden, weight, scale=0.25)
    # fp32: the same products, only the order of the sums over tokens (dW) and classes (logsumexp)
    # differs: a few ulps of values of order 1-100
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_against_fp32_and_against_the_plain_bf16_path():
    hidden, weight, targets = problem(n=96, d=64, v=300)
    ref32 = grads_of(plain(targets), hidden, weight)
    with torch.autocast("cpu", torch.bfloat16):
        fused = grads_of(lambda h, w: linear_cross_entropy(h, w, targets, 40, backend="torch"), hidden, weight)
        plain16 = grads_of(plain(targets), hidden, weight)
    assert fused[0].dtype == torch.float32 and fused[1].dtype == hidden.dtype and fused[2].dtype == weight.dtype
    # bf16 matmul operands (8 significant bits, relative rounding 2^-9 per operand): logits of
    # size ~3 are off by ~1e-2, so the summed loss over 93 tokens by <1% and each gradient entry by
    # ~1e-2 relative to the gradients' scale; the plain bf16 path has the same rounding.
    for got in (fused, plain16):
        torch.testing.assert_close(got[0], ref32[0], rtol=1e-2, atol=0)
        for a, b in zip(got[1:], ref32[1:]):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-2 * b.abs().max().item())
    # the fused path accumulates dW over chunks in fp32, at least as close to fp32 as the plain one
    assert (fused[2] - ref32[2]).abs().max() <= 1.5 * (plain16[2] - ref32[2]).abs().max()


def test_no_gradient_buffers_without_grad():
    hidden, weight, targets = problem()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, 8, backend="torch")
    torch.testing.assert_close(loss, plain(targets)(hidden, weight), rtol=1e-5, atol=1e-5)
    assert not loss.requires_grad


def test_only_the_needed_gradient_is_computed():
    hidden, weight, targets = problem()
    w = weight.clone().requires_grad_()
    linear_cross_entropy(hidden, w, targets, 8, backend="torch").backward()
    ref = weight.clone().requires_grad_()
    plain(targets)(hidden, ref).backward()
    torch.testing.assert_close(w.grad, ref.grad, rtol=1e-5, atol=1e-6)  # fp32, as above


def test_a_retained_graph_backpropagates_again_and_a_released_one_refuses():
    hidden, weight, targets = problem()
    h = hidden.clone().requires_grad_()
    loss = linear_cross_entropy(h, weight, targets, 8, backend="torch")
    first = torch.autograd.grad(loss * 0.5, h, retain_graph=True)[0].clone()
    second = torch.autograd.grad(loss * 0.5, h, retain_graph=True)[0]  # as zero-bubble schedules do
    third = torch.autograd.grad(loss * 0.25, h)[0]  # another scale, and the graph released
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(third, first / 2, rtol=0, atol=0)  # halving is exact in fp32
    with pytest.raises(RuntimeError, match="already backpropagated"):
        torch.autograd.grad(loss, h)


def test_bad_chunk_is_refused():
    hidden, weight, targets = problem()
    with pytest.raises(ValueError, match="chunk"):
        linear_cross_entropy(hidden, weight, targets, 0)


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward and backward alike)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_the_fused_loss_never_allocates_full_logits():
    n, d, v, chunk = 64, 12, 400, 16
    hidden, weight, targets = problem(n=n, d=d, v=v, ignored=())
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with LargestOutput() as fused:
        linear_cross_entropy(h, w, targets, chunk, backend="torch").backward()
    with LargestOutput() as full:
        plain(targets)(hidden.clone().requires_grad_(), weight.clone().requires_grad_()).backward()
    assert full.largest == n * v  # the mode sees the plain path's logits (it can fail)
    assert fused.largest == max(chunk * v, v * d)  # a chunk's logits, or dW


def tiny_head(vocab=30, dim=8, chunk=4):
    linear = nn.Linear(dim, vocab, bias=False)
    return linear, LinearCrossEntropyHead.replacing(linear, chunk)


def test_the_head_keeps_the_weight_and_gives_deferred_logits():
    linear, head = tiny_head()
    assert head.weight is linear.weight
    hidden = torch.randn(2, 5, 8)
    out = head(hidden)
    assert isinstance(out, DeferredLogits)
    torch.testing.assert_close(out.logits(), linear(hidden), rtol=0, atol=0)
    targets = torch.randint(0, 30, (2, 5))
    targets[0, 1] = IGNORE_INDEX
    loss, count = loss_fn(out, targets)
    ref, ref_count = loss_fn(linear(hidden), targets)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)  # fp32 summation order
    assert int(count) == int(ref_count) == 9


def test_only_a_plain_bias_free_linear_is_replaced():
    with pytest.raises(ValueError, match="bias-free nn.Linear"):
        LinearCrossEntropyHead.replacing(nn.Linear(4, 5), 2)
    _, head = tiny_head()
    with pytest.raises(ValueError, match="bias-free nn.Linear"):
        LinearCrossEntropyHead.replacing(head, 2)


def test_tied_embeddings_stay_tied(compose, make_trainer):
    cfg = compose("model.tie_embeddings=true")
    trainer = make_trainer(cfg, "/tmp/unused")
    model = trainer.model
    assert isinstance(model.output, LinearCrossEntropyHead)
    assert model.output.weight is model.tok_embeddings.weight


def test_loss_chunk_resolution(compose):
    assert loss_chunk(compose()) == default_chunk(64)
    assert loss_chunk(compose("model.loss_chunk=0")) == 0
    assert loss_chunk(compose("model.loss_chunk=7")) == 7
    assert loss_chunk(compose("parallel=zero3")) == 0  # auto: the plain loss under ZeRO-3
    assert default_chunk(32000) == 1024 and default_chunk(256000) == 262 and default_chunk(10**7) == 128


@pytest.mark.parametrize("overrides,needle", [
    (["model.loss_chunk=-2"], "model.loss_chunk"),
    (["model.loss_chunk=64", "parallel=zero3"], "ZeRO-3"),
])
def test_bad_loss_chunk_settings_are_refused(compose, overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(compose(*overrides))


def one_step_grads(cfg, tmp_path):
    with Trainer(cfg, tmp_path) as trainer:
        inputs, targets = trainer.data.batch(0, cfg.trainer.micro_batch_size)
        loss = trainer.strategy.forward_backward(inputs, targets, 1.0 / targets.numel(), sync=True)
        return loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_training_step_matches_the_plain_loss(compose, tmp_path, precision):
    fused_cfg = compose(f"precision={precision}", "model.loss_chunk=24")
    plain_cfg = compose(f"precision={precision}", "model.loss_chunk=0")
    fused_loss, fused = one_step_grads(fused_cfg, tmp_path / "fused")
    plain_loss, ref = one_step_grads(plain_cfg, tmp_path / "plain")
    # fp32: summation order only. bf16 autocast: the same bf16 products, but dW summed over chunks
    # in fp32 instead of inside one bf16 matmul, and dh rounded to bf16 per chunk: differences of
    # a bf16 rounding (2^-8 relative) of the largest entries, which the blocks carry back. fp16
    # (10 significant bits, and a loss scale of 2^16 on both sides): 8x finer than bf16.
    low = {"bf16": 1e-2, "fp16": 2e-3}.get(precision)
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-3 if low else 1e-5, atol=0)
    assert fused.keys() == ref.keys()
    for name, g in ref.items():
        if low:
            torch.testing.assert_close(fused[name], g, rtol=0, atol=low * g.abs().max().item(), msg=name)
        else:
            torch.testing.assert_close(fused[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_apply_loss_head_respects_loss_chunk_zero(compose):
    from memtrain.models import get_spec

    cfg = compose("model.loss_chunk=0")
    model = get_spec("gpt").build_model(cfg.model)
    apply_loss_head(model, cfg)
    assert type(model.output) is nn.Linear
    out = model(torch.zeros(1, 4, dtype=torch.long))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, cfg.model.vocab_size)
    assert cross_entropy(out, torch.zeros(1, 4, dtype=torch.long)).shape == ()
