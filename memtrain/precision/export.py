"""Export of a QAT checkpoint with real quantized weights, and the loader that rebuilds it.

    memtrain export outputs/.../checkpoints/step_00000040 exported/

writes exported/config.json (the training config) and exported/weights.pt, where every fake-
quantized linear layer `name` is stored as integers and scales:

    int8:   name.qweight int8 [out, in],                 name.scale float32 [out, 1]
    int4:   name.qweight uint8 [out, in / 2] (two nibbles q + 8 per byte, low nibble = even
            column),                                     name.scale float32 [out, 1]
    bitnet: name.qweight uint8 [out, ceil(in / 4)] (four 2-bit codes q + 1 per byte, lowest bits =
            first column),                               name.scale float32 [] (absmean gamma)

and every other tensor (embeddings, norms, output head, biases) as it was trained. load_quantized
rebuilds the model with QuantizedLinear layers that unpack and dequantize q * scale: the same
numbers fake quantization computes from the full-precision weights, so the forward passes match.
Reading the training checkpoint (`memtrain export`) is memtrain.engine.export.export_quantized.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn


from memtrain.models import get_spec
from memtrain.safe_pickle import torch_load
from memtrain.precision.qat import QATLinear, apply_qat, quantize_activation, quantize_ternary, quantize_weight, EPS

FORMAT_VERSION = 1


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], [out, in] with in even -> uint8 [out, in / 2]."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    low, high = (packed & 0xF).to(torch.int16) - 8, (packed >> 4).to(torch.int16) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)[:, :in_features].to(torch.int8)


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """int8 values in {-1, 0, 1}, [out, in] -> uint8 [out, ceil(in / 4)], 2 bits per value."""
    pad = (-q.shape[1]) % 4
    u = F.pad(q.to(torch.int16) + 1, (0, pad)).to(torch.uint8).view(q.shape[0], -1, 4)
    return u[..., 0] | (u[..., 1] << 2) | (u[..., 2] << 4) | (u[..., 3] << 6)


def unpack_ternary(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    codes = torch.stack([(packed >> s) & 0x3 for s in (0, 2, 4, 6)], dim=-1).flatten(-2)
    return (codes[:, :in_features].to(torch.int16) - 1).to(torch.int8)


class QuantizedLinear(nn.Module):
    """A linear layer holding integer weights and scales (buffers, no gradients): y = x~ (q s)^T + b,
    x~ the same input transform as the QAT layer it was exported from. x [..., in] -> [..., out]."""

    def __init__(self, in_features: int, out_features: int, scheme: str, quantize_input: bool,
                 qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features, self.scheme, self.quantize_input = in_features, out_features, scheme, quantize_input
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def integer_weight(self) -> torch.Tensor:
        if self.scheme == "int4":
            return unpack_int4(self.qweight, self.in_features)
        if self.scheme == "bitnet":
            return unpack_ternary(self.qweight, self.in_features)
        return self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scheme == "bitnet":
            x = quantize_activation(F.rms_norm(x, (x.shape[-1],), eps=EPS))
        elif self.quantize_input:
            x = quantize_activation(x)
        weight = self.integer_weight().to(self.scale.dtype) * self.scale
        return F.linear(x, weight.to(x.dtype), self.bias)


def quantized_tensors(name: str, layer: QATLinear) -> dict[str, torch.Tensor]:
    w = layer.weight.detach().float()
    if layer.scheme == "bitnet":
        q, scale = quantize_ternary(w)
        return {f"{name}.qweight": pack_ternary(q), f"{name}.scale": scale}
    bits = 4 if layer.scheme == "int4" else 8
    q, scale = quantize_weight(w, bits)
    return {f"{name}.qweight": pack_int4(q) if bits == 4 else q, f"{name}.scale": scale}


def export_model(model: nn.Module, cfg: DictConfig, out: str | Path) -> Path:
    """Write `model` (with QAT layers) to folder `out` with integer weights; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    qat_layers = {n: m for n, m in model.named_modules() if isinstance(m, QATLinear)}
    if not qat_layers:
        raise ValueError("the model has no QAT layers: export needs a checkpoint trained with precision.qat")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in qat_layers.items():
        tensors.update(quantized_tensors(name, layer))
    quantized_weights = {f"{n}.weight" for n in qat_layers}
    for key, value in model.state_dict().items():
        if key not in quantized_weights:
            tensors[key] = value.detach().cpu().clone()
    torch.save(tensors, out / "weights.pt")
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    (out / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "config": container}, indent=2))
    return out


def _config_from(meta: dict) -> DictConfig:
    from memtrain.config.aliases import upgrade_stored_config

    return OmegaConf.create(upgrade_stored_config(meta["config"]))


def build_qat_model(cfg: DictConfig) -> nn.Module:
    """The fake-quantized model of a config, on the CPU in float32."""
    spec = get_spec(cfg.model.arch)
    model = spec.build_model(cfg.model)
    apply_qat(model, cfg.precision, spec)
    return model


def load_quantized(folder: str | Path) -> nn.Module:
    """Rebuild an exported model: its QAT layers become QuantizedLinear with the stored integers."""
    folder = Path(folder)
    cfg = _config_from(json.loads((folder / "config.json").read_text()))
    tensors = torch_load(folder / "weights.pt")
    model = build_qat_model(cfg)
    quantized = [(n, m) for n, m in model.named_modules() if isinstance(m, QATLinear)]
    for name, layer in quantized:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bias = tensors.pop(f"{name}.bias", None)
        setattr(parent, child, QuantizedLinear(layer.in_features, layer.out_features, layer.scheme, layer.quantize_input,
                                               tensors.pop(f"{name}.qweight"), tensors.pop(f"{name}.scale"), bias))
    names = {n for n, _ in quantized}
    missing = [k for k in model.state_dict() if k.rpartition(".")[0] not in names and k not in tensors]
    if missing:
        raise ValueError(f"{folder}/weights.pt lacks {missing[:5]}")
    model.load_state_dict(tensors, strict=False)
    return model.eval()
