"""Quantization-aware training by module swap: every nn.Linear inside the model's blocks becomes a
fake-quantized linear, trained with straight-through estimators. The models hold no QAT code.

Schemes (`precision.qat`):

- int8 / int4 (LLM-QAT, Liu et al. 2023, "LLM-QAT: Data-Free Quantization Aware Training for Large
  Language Models", sec. 2.2): symmetric MinMax quantization of the weights per output channel,
  X_Q = alpha * round(X_R / alpha), alpha = max|X_R| / (2^(N-1) - 1), and of the activations per
  token (`precision.qat_activations=int8|none`). Symmetric, as the paper uses for weights and
  activations: the integer GEMM then needs no zero-point correction terms, and with MinMax scaling
  no value is clipped, so the straight-through estimator is the identity everywhere.
- bitnet (BitNet b1.58, Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in
  1.58 Bits", sec. 2, and Wang et al. 2023, "BitNet", sec. 2): BitLinear. Weights are ternary,
  W~ = RoundClip(W / (gamma + eps), -1, 1) with gamma = mean|W| (absmean, per tensor); the input is
  normalized (RMSNorm without a gain, the "LN" before quantization in BitNet eq. 8-11) and
  quantized to 8 bits per token by absmax, x~ = Clip(round(x * 127 / max|x|), -128, 127).

Fake quantization keeps the full-precision weights as the trained parameters: the forward uses
quantize-dequantize(W), the backward passes the gradient through the rounding unchanged
(a straight-through autograd.Function). The output head and the embeddings are left in full precision, as both
papers do (LLM-QAT quantizes the transformer's linear layers; BitNet keeps the input/output
embeddings in high precision). State-dict keys are those of the plain model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import as_enum
from memtrain.config.schema import QATActivations, QATScheme
from memtrain.models.spec import ModelSpec

SCHEMES = ("none", "int8", "int4", "bitnet")
WEIGHT_BITS = {"int8": 8, "int4": 4}
EPS = 1e-5  # floor of every scale's denominator (BitNet's reference code uses 1e-5)


def qmax(bits: int) -> int:
    """Largest level of a symmetric signed grid: 2^(bits-1) - 1 (127 for int8, 7 for int4)."""
    return 2 ** (bits - 1) - 1


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel MinMax scale alpha = max|W_row| / qmax, shape [out, 1] (LLM-QAT eq. 1)."""
    return w.detach().abs().amax(dim=1, keepdim=True).clamp(min=EPS) / qmax(bits)


def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (integers in [-qmax, qmax] as int8, scale [out, 1] in W's dtype)."""
    scale = weight_scale(w, bits)
    q = torch.clamp(torch.round(w.detach() / scale), -qmax(bits), qmax(bits))
    return q.to(torch.int8), scale


def ternary_scale(w: torch.Tensor) -> torch.Tensor:
    """BitNet b1.58 eq. 1-3: gamma = mean|W| over the whole matrix (absmean), a scalar."""
    return w.detach().abs().mean().clamp(min=EPS)


def quantize_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W -> (RoundClip(W / gamma, -1, 1) as int8 in {-1, 0, 1}, gamma)."""
    gamma = ternary_scale(w)
    return torch.clamp(torch.round(w.detach() / gamma), -1, 1).to(torch.int8), gamma


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token symmetric absmax int8 fake quantization of x [..., D] (LLM-QAT per-token
    activations; BitNet eq. 4 with Q_b = 2^7): round(x * 127 / max|x_t|) * max|x_t| / 127.
    The clamp to [-128, 127] never binds with absmax scaling (|x| * 127 / max|x| <= 127)."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=EPS) / 127
    return torch.clamp(torch.round(x.detach() / scale), -128, 127) * scale


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized tensor exactly (x + (q - x).detach() would differ from q by a
    rounding); backward: the incoming gradient, unchanged, to x. Saves nothing for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def ste(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: the forward value of `quantized`, the gradient of identity."""
    return _StraightThrough.apply(x, quantized.detach())


def fake_quant_weight(w: torch.Tensor, scheme: str) -> torch.Tensor:
    """quantize-dequantize(W) with an identity gradient."""
    if scheme == "bitnet":
        q, gamma = quantize_ternary(w)
    else:
        q, gamma = quantize_weight(w, WEIGHT_BITS[scheme])
    return ste(w, q.to(w.dtype) * gamma)


class QATLinear(nn.Linear):
    """nn.Linear with fake-quantized weights (int8/int4 per channel) and, optionally, int8
    per-token activations. x [..., in] -> [..., out]; parameters as nn.Linear's."""

    def __init__(self, in_features: int, out_features: int, bias: bool, scheme: str, quantize_input: bool,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.scheme, self.quantize_input = scheme, quantize_input

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return ste(x, quantize_activation(x)) if self.quantize_input else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.prepare_input(x), fake_quant_weight(self.weight, self.scheme), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, qat={self.scheme}, quantize_input={self.quantize_input}"


class BitLinear(QATLinear):
    """BitNet b1.58 BitLinear: y = W~ x~ with x~ = Quant_int8(RMSNorm(x)) per token and W~ ternary
    with absmean scaling (Ma et al. 2024, sec. 2; the norm before the activation quantization as in
    BitNet, Wang et al. 2023, eq. 11). x [..., in] -> [..., out].

    DISCREPANCY: the paper's reference BitLinear replaces the block's pre-attention and pre-FFN
    RMSNorm with its own; a module swap leaves the model's norms in place, so the q/k/v and w1/w3
    inputs are normalized twice (the second norm is parameter-free and cancels only the scale the
    first one's gain applies uniformly).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, "bitnet", True, device=device, dtype=dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(x, (x.shape[-1],), eps=EPS)
        return ste(x, quantize_activation(x))


def make_qat_linear(linear: nn.Linear, scheme: str, quantize_input: bool) -> QATLinear:
    """A QAT copy of `linear` sharing its parameters (same storage, same names)."""
    kwargs = dict(device="meta", dtype=linear.weight.dtype)
    if scheme == "bitnet":
        new = BitLinear(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
    else:
        new = QATLinear(linear.in_features, linear.out_features, linear.bias is not None, scheme, quantize_input, **kwargs)
    new.weight = linear.weight
    if linear.bias is not None:
        new.bias = linear.bias
    return new


def swap_linears(root: nn.Module, scheme: str, quantize_input: bool) -> int:
    """Replace every plain nn.Linear under `root` by its QAT version; returns how many."""
    count = 0
    for name, child in list(root.named_children()):
        if type(child) is nn.Linear:
            setattr(root, name, make_qat_linear(child, scheme, quantize_input))
            count += 1
        else:
            count += swap_linears(child, scheme, quantize_input)
    return count


def apply_qat(model: nn.Module, pcfg: DictConfig, spec: ModelSpec) -> int:
    """precision.qat != none: swap the linear layers of the model's blocks (spec.blocks) for fake-
    quantized ones, in place; layers outside the blocks (embeddings, output head) stay. Returns the
    number of layers swapped (0 when QAT is off)."""
    scheme = as_enum(pcfg.get("qat", "none"), QATScheme)
    if scheme is QATScheme.none:
        return 0
    quantize_input = as_enum(pcfg.get("qat_activations", "int8"), QATActivations) is QATActivations.int8
    return swap_linears(spec.blocks(model), scheme.name, quantize_input)  # the layers keep the scheme's name
