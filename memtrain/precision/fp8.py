"""FP8 training of the blocks' linear layers (precision=fp8) by module swap, with torch._scaled_mm.

Per-tensor scaling (the recipe of Micikevicius et al. 2022, "FP8 Formats for Deep Learning",
sec. 4): a tensor X is sent to FP8 as X_f8 = cast(X * s) with s = FMAX / amax(X), and the GEMM
multiplies by the inverse scales, torch._scaled_mm(a_f8, b_f8, scale_a=1/s_a, scale_b=1/s_b).
Forward operands (activations, weights) use e4m3 (FMAX 448), the output gradient in the backward
uses e5m2 (FMAX 57344), for its range. Dynamic scaling takes amax from the tensor itself; delayed
scaling (precision.fp8_scaling=delayed) takes the max over an amax history of the last
`fp8_amax_history` steps and then records the current amax (Transformer Engine's recipe).
Everything outside the swapped layers stays in the bf16 autocast region.

torch._scaled_mm (torch 2.11-2.13): _scaled_mm(self [M, K], mat2 [K, N], scale_a, scale_b,
bias=None, scale_result=None, out_dtype=None, use_fast_accum=False); self row-major, mat2
column-major, K and N multiples of 16, scales float32 scalars for per-tensor scaling.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import as_enum
from memtrain.config.schema import FP8Scaling
from memtrain.models.spec import ModelSpec

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
FMAX = {E4M3: torch.finfo(E4M3).max, E5M2: torch.finfo(E5M2).max}  # 448, 57344
MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and Hopper (sm_90) have FP8 tensor cores


class FP8Unavailable(RuntimeError):
    pass


def fp8_supported(device: torch.device) -> tuple[bool, str]:
    """(supported, why not) for FP8 GEMMs on `device`."""
    if device.type != "cuda":
        return False, f"FP8 GEMMs need a CUDA GPU of capability >= 8.9 (Ada/Hopper); the device is {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return False, f"FP8 GEMMs need CUDA capability >= 8.9 (Ada/Hopper); {torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}"
    return True, ""


def scale_from_amax(amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """s = FMAX / amax as float32 (amax floored at 1e-12 so an all-zero tensor gives a finite scale)."""
    return FMAX[dtype] / amax.float().clamp(min=1e-12)


def to_fp8(x: torch.Tensor, dtype: torch.dtype, amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cast(x * s) saturated to +-FMAX, 1 / s): x's FP8 image and the inverse scale _scaled_mm takes.
    amax: from a history (delayed scaling); None takes x's own (dynamic scaling)."""
    amax = x.detach().abs().amax() if amax is None else amax
    scale = scale_from_amax(amax, dtype)
    x8 = (x.float() * scale).clamp(-FMAX[dtype], FMAX[dtype]).to(dtype)
    return x8, scale.reciprocal()


def fp8_mm(a8: torch.Tensor, a_inv: torch.Tensor, b8: torch.Tensor, b_inv: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] @ b [K, N] of FP8 operands; b is made column-major as _scaled_mm requires."""
    if b8.stride(0) != 1:
        b8 = b8.t().contiguous().t()
    return torch._scaled_mm(a8.contiguous(), b8, scale_a=a_inv, scale_b=b_inv, out_dtype=out_dtype)


def _history_amax(history: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Delayed scaling: the amax to use now (max of the history; x's own on the first step), then
    roll x's amax into the history in place."""
    if history is None:
        return None
    current = x.detach().abs().amax().float()
    used = torch.where(history.max() > 0, history.max(), current)
    history.copy_(torch.roll(history, 1))
    history[0] = current
    return used


class FP8LinearFunction(torch.autograd.Function):
    """y = x W^T with FP8 GEMMs. x [M, K], W [N, K] -> y [M, N] in out_dtype.

    forward:  y  = (x_e4m3 @ W_e4m3^T) / (s_x s_w)
    backward: dx = (g_e5m2 @ W_e4m3) / (s_g s_w),  dW = (g_e5m2^T @ x_e4m3) / (s_g s_x)
    Saved for backward: x_e4m3 and W_e4m3 (1 byte per element) and their inverse scales.
    """

    @staticmethod
    def forward(ctx, x, weight, out_dtype, hist_x, hist_w, hist_g):
        x8, x_inv = to_fp8(x, E4M3, _history_amax(hist_x, x))
        w8, w_inv = to_fp8(weight, E4M3, _history_amax(hist_w, weight))
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.hist_g, ctx.x_dtype, ctx.w_dtype = hist_g, x.dtype, weight.dtype
        return fp8_mm(x8, x_inv, w8.t(), w_inv, out_dtype)

    @staticmethod
    def backward(ctx, grad):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        g8, g_inv = to_fp8(grad, E5M2, _history_amax(ctx.hist_g, grad))
        grad_x = fp8_mm(g8, g_inv, w8, w_inv, grad.dtype).to(ctx.x_dtype)  # [M, N] @ [N, K]
        grad_w = fp8_mm(g8.t(), g_inv, x8, x_inv, torch.float32).to(ctx.w_dtype)  # [N, M] @ [M, K]
        return grad_x, grad_w, None, None, None, None


class FP8Linear(nn.Linear):
    """nn.Linear whose matmul runs in FP8 (bias added in the output dtype). x [..., in] -> [..., out]
    in bf16. in_features and out_features must be multiples of 16 (_scaled_mm's constraint)."""

    AMAX = ("amax_x", "amax_w", "amax_g")  # delayed scaling's history of |x|max, [history] fp32 each

    def __init__(self, in_features: int, out_features: int, bias: bool, history: int = 0, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.history = history
        if history > 0:
            for name in self.AMAX:
                self.register_buffer(name, torch.zeros(history, device=device, dtype=torch.float32))

    def reset_parameters(self, generator_for=None) -> None:
        """torch's nn.Linear initialisation of the weight and bias (drawn from `generator_for`'s
        generators: memtrain.models.reset), and an empty amax history; nn.Linear's constructor
        calls it before the history exists."""
        from memtrain.models.reset import reset_torch_default, scoped

        reset_torch_default(self, scoped(generator_for, ""))
        self.reset_state()

    @torch.no_grad()
    def reset_state(self) -> None:
        """The amax history as a new layer has it (zeros): the state the FP8 swap adds, which a
        model family's initialiser does not know (memtrain.engine.init_device.materialize)."""
        for name in self.AMAX:
            buffer = getattr(self, name, None)
            if buffer is not None:
                buffer.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hist = (self.amax_x, self.amax_w, self.amax_g) if self.history > 0 else (None, None, None)
        y = FP8LinearFunction.apply(x.reshape(-1, x.shape[-1]), self.weight, torch.bfloat16, *hist)
        y = y.view(*x.shape[:-1], self.out_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y


def swap_to_fp8(root: nn.Module, history: int) -> int:
    count = 0
    for name, child in list(root.named_children()):
        if type(child) is nn.Linear and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            new = FP8Linear(child.in_features, child.out_features, child.bias is not None, history,
                            device=child.weight.device, dtype=child.weight.dtype)
            new.weight = child.weight
            if child.bias is not None:
                new.bias = child.bias
            setattr(root, name, new)
            count += 1
        else:
            count += swap_to_fp8(child, history)
    return count


def apply_fp8(model: nn.Module, pcfg: DictConfig, spec: ModelSpec, device: torch.device) -> int:
    """Swap the blocks' nn.Linear layers (those with dimensions multiple of 16) for FP8Linear;
    raises FP8Unavailable on hardware without FP8 GEMMs. Returns the number swapped."""
    ok, why = fp8_supported(device)
    if not ok:
        raise FP8Unavailable(f"precision=fp8: {why}. Use precision=bf16 on this hardware.")
    history = pcfg.fp8_amax_history if as_enum(pcfg.fp8_scaling, FP8Scaling) is FP8Scaling.delayed else 0
    return swap_to_fp8(spec.blocks(model), history)


def reference_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The FP8 forward emulated in float32: quantize-dequantize both operands, then matmul."""
    x8, x_inv = to_fp8(x, E4M3)
    w8, w_inv = to_fp8(weight, E4M3)
    return (x8.float() * x_inv) @ (w8.float() * w_inv).T


__all__ = ["FP8Linear", "FP8LinearFunction", "FP8Unavailable", "apply_fp8", "fp8_supported", "to_fp8"]
