"""Quantization-aware training: fake quantization equals quantize-dequantize, the straight-through
gradient, BitLinear's ternary weights, and which layers the module swap touches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memtrain.models import get_spec
from memtrain.precision.qat import (
    BitLinear, QATLinear, apply_qat, fake_quant_weight, quantize_activation, quantize_ternary, quantize_weight, ste,
)


@pytest.mark.parametrize("bits,levels", [(8, 127), (4, 7)])
def test_weight_fake_quant_equals_quantize_dequantize(bits, levels):
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    q, scale = quantize_weight(w, bits)
    assert q.dtype == torch.int8 and int(q.abs().max()) == levels  # MinMax: each row's max hits the top level
    assert scale.shape == (24, 1)
    # the scale written out independently: per output channel, max|w| / (2^(b-1) - 1)
    torch.testing.assert_close(scale, w.abs().max(dim=1, keepdim=True).values / levels, rtol=0, atol=0)
    fake = fake_quant_weight(w, f"int{bits}")
    assert torch.equal(fake, q.float() * scale)
    # rounding error at most half a step per element
    assert ((fake - w).abs() <= scale / 2 + 1e-7).all()


def test_activation_quant_per_token():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32) * torch.arange(1, 6).view(1, 5, 1)  # tokens of different ranges
    xq = quantize_activation(x)
    scale = x.abs().amax(-1, keepdim=True) / 127
    levels = xq / scale
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)  # on the integer grid, per token
    assert levels.abs().max() <= 127 + 1e-4
    assert ((xq - x).abs() <= scale / 2 + 1e-6).all()


@pytest.mark.parametrize("scheme", ["int8", "int4", "bitnet"])
def test_ste_gradient_is_identity(scheme):
    """MinMax (int8/int4) clips nothing; BitNet's RoundClip clips |w| > 1.5 gamma, and its reference
    code passes the gradient straight through there too: the gradient is the upstream one."""
    torch.manual_seed(0)
    w = torch.randn(16, 8, requires_grad=True)
    upstream = torch.randn(16, 8)
    fake_quant_weight(w, scheme).backward(upstream)
    assert torch.equal(w.grad, upstream)
    x = torch.randn(4, 8, requires_grad=True)
    ste(x, quantize_activation(x)).backward(upstream[:4])
    assert torch.equal(x.grad, upstream[:4])


def test_qat_linear_gradient_uses_quantized_operands():
    torch.manual_seed(0)
    layer = QATLinear(8, 6, bias=True, scheme="int4", quantize_input=True)
    x = torch.randn(5, 8, requires_grad=True)
    layer(x).sum().backward()
    wq = fake_quant_weight(layer.weight, "int4").detach()
    xq = quantize_activation(x)
    # y = xq wq^T + b with identity STE: dL/dx = 1 wq, dL/dW = 1^T xq
    torch.testing.assert_close(x.grad, torch.ones(5, 6) @ wq)
    torch.testing.assert_close(layer.weight.grad, torch.ones(6, 5) @ xq)


def test_bitlinear_weights_are_ternary_times_scale():
    torch.manual_seed(0)
    layer = BitLinear(32, 16, bias=False)
    nn.init.normal_(layer.weight, std=0.02)
    q, gamma = quantize_ternary(layer.weight)
    assert set(q.unique().tolist()) <= {-1, 0, 1} and set(q.unique().tolist()) == {-1, 0, 1}
    torch.testing.assert_close(gamma, layer.weight.abs().mean(), rtol=0, atol=0)
    fake = fake_quant_weight(layer.weight, "bitnet")
    assert set((fake / gamma).round().unique().tolist()) == {-1.0, 0.0, 1.0}
    torch.testing.assert_close(fake, q.float() * gamma, rtol=0, atol=0)
    # forward: parameter-free RMSNorm, int8 per token, ternary weight
    x = torch.randn(3, 32)
    xn = torch.nn.functional.rms_norm(x, (32,), eps=1e-5)
    torch.testing.assert_close(layer(x), quantize_activation(xn) @ fake.T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheme", ["int8", "bitnet"])
def test_apply_qat_swaps_block_linears_only(compose, scheme):
    cfg = compose(f"precision.qat={scheme}")
    spec = get_spec("gpt")
    torch.manual_seed(0)
    model = spec.build_model(cfg.model)
    keys = list(model.state_dict())
    n = apply_qat(model, cfg.precision, spec)
    assert n == 7 * cfg.model.n_layers  # wq wk wv wo w1 w2 w3 per block
    assert type(model.output) is nn.Linear and type(model.tok_embeddings) is nn.Embedding
    assert all(isinstance(m, QATLinear) for b in model.layers for m in b.modules() if isinstance(m, nn.Linear))
    assert list(model.state_dict()) == keys  # checkpoints keep the plain model's names
    assert apply_qat(model, compose().precision, spec) == 0  # qat=none
