"""FP8 linear layers: the scaling numerics on CPU (float8 casts and torch._scaled_mm run there),
the refusal on hardware without FP8, and the GEMM on a GPU of capability >= 8.9 (skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from memtrain.config.errors import ConfigError
from memtrain.config.validate import validate
from memtrain.models import get_spec
from memtrain.precision.fp8 import (
    E4M3, E5M2, FMAX, FP8Linear, FP8LinearFunction, FP8Unavailable, apply_fp8, reference_linear, to_fp8,
)

HAS_FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.parametrize("dtype,mantissa", [(E4M3, 3), (E5M2, 2)])
def test_scaling_maps_amax_to_fmax_and_rounds_within_half_ulp(dtype, mantissa):
    torch.manual_seed(0)
    x = torch.randn(64, 48) * 3.7
    x8, inv = to_fp8(x, dtype)
    assert x8.dtype == dtype
    assert float(x8.float().abs().max()) == FMAX[dtype]  # the largest |x| lands exactly on FMAX
    torch.testing.assert_close(inv, x.abs().max() / FMAX[dtype], rtol=1e-7, atol=0)
    back = x8.float() * inv
    # round-to-nearest with `mantissa` bits: relative error <= 2^-(mantissa+1) for normal numbers
    scaled = (x * FMAX[dtype] / x.abs().max()).abs()
    normal = scaled >= torch.finfo(dtype).smallest_normal
    rel = ((back - x).abs() / x.abs())[normal]
    assert rel.max() <= 2.0 ** -(mantissa + 1) + 1e-6


def test_delayed_scaling_uses_history_max():
    x = torch.ones(4, 4)
    hist = torch.tensor([8.0, 2.0, 0.0])
    x8, inv = to_fp8(x, E4M3, amax=hist.max())
    torch.testing.assert_close(inv, torch.tensor(8.0 / 448))
    assert float(x8.float().max()) == 56.0  # 1 * 448 / 8


def test_function_matches_emulated_reference_on_cpu():
    """torch._scaled_mm on CPU against quantize-dequantize + float32 matmul: same FP8 operands, so
    only the accumulation order and the bf16 output rounding (2^-8 relative) differ."""
    torch.manual_seed(0)
    x = torch.randn(32, 64, requires_grad=True)
    w = torch.randn(48, 64, requires_grad=True)
    y = FP8LinearFunction.apply(x, w, torch.bfloat16, None, None, None)
    ref = reference_linear(x.detach(), w.detach())
    torch.testing.assert_close(y.float(), ref, rtol=2 ** -7, atol=1e-2)
    # against exact fp32: within FP8's e4m3 precision (each operand ~2^-4 relative)
    exact = x.detach() @ w.detach().T
    assert float((y.detach().float() - exact).norm() / exact.norm()) < 0.05
    g = torch.randn(32, 48)
    y.backward(g.to(torch.bfloat16))
    g8, g_inv = to_fp8(g.to(torch.bfloat16), E5M2)
    gq = g8.float() * g_inv
    x8, x_inv = to_fp8(x.detach(), E4M3)
    w8, w_inv = to_fp8(w.detach(), E4M3)
    torch.testing.assert_close(x.grad, gq @ (w8.float() * w_inv), rtol=2 ** -7, atol=2e-2)
    torch.testing.assert_close(w.grad, gq.T @ (x8.float() * x_inv), rtol=1e-5, atol=1e-4)  # fp32 output


def test_refused_without_fp8_hardware(compose):
    if HAS_FP8_GPU:
        pytest.skip("this machine has FP8")
    cfg = compose("precision=fp8")
    with pytest.raises(ConfigError, match="precision.fp8.*capability >= 8.9"):
        validate(cfg)
    spec = get_spec("gpt")
    model = spec.build_model(cfg.model)
    with pytest.raises(FP8Unavailable, match="capability >= 8.9"):
        apply_fp8(model, cfg.precision, spec, torch.device("cpu"))


def test_qat_and_fp8_together_refused(compose):
    with pytest.raises(ConfigError, match="precision.qat"):
        validate(compose("precision=fp8", "precision.qat=int8"))


@pytest.mark.skipif(not HAS_FP8_GPU, reason="needs a CUDA GPU of capability >= 8.9")
@pytest.mark.parametrize("history", [0, 4])
def test_fp8_linear_on_gpu(history):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    layer = FP8Linear(256, 128, bias=False, history=history, device=dev)
    x = torch.randn(4, 16, 256, device=dev, requires_grad=True)
    y = layer(x)
    ref = x.detach().reshape(-1, 256) @ layer.weight.detach().T
    assert y.dtype == torch.bfloat16
    assert float((y.float().reshape(-1, 128) - ref).norm() / ref.norm()) < 0.05  # e4m3 operands
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()
