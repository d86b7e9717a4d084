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
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from omegaconf.errors import OmegaConfBaseException

from memtrain.config.errors import ConfigError
from memtrain.engine.checkpoint import Checkpointer, CheckpointError, read_dcp_metadata, read_meta
from memtrain.errors import FileSystemError, file_system_error
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
    return OmegaConf.create(meta["config"])


def export_quantized(checkpoint_dir: str | Path, out: str | Path) -> Path:
    """Load a training checkpoint (step_<N>/ written by memtrain train with precision.qat) and write
    its integer export to folder `out`. Everything is checked before the model is built: the
    target is not a file, meta.json holds a QAT run's config, DCP's metadata (read with the safe
    unpickler) lists every tensor of that model with its shape, and its shards hold the bytes."""
    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    if out.exists() and not out.is_dir():
        raise FileSystemError(f"cannot export into {out}: it is a file; name a folder (it is created if missing)")
    meta = read_meta(checkpoint_dir)
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or \
            not isinstance(config.get("precision"), dict):
        raise CheckpointError(f"{checkpoint_dir / 'meta.json'} holds no run config (model, precision): export needs "
                              "the config of the QAT run that wrote the checkpoint")
    if str(config["precision"].get("qat", "none")) == "none":
        raise CheckpointError(f"{checkpoint_dir} was trained with precision.qat=none: nothing to quantize")
    cfg = _checked_config(config, checkpoint_dir)
    _check_tensors(cfg, read_dcp_metadata(checkpoint_dir), checkpoint_dir)
    model = build_qat_model(cfg)
    state = {"model": get_model_state_dict(model)}
    Checkpointer(checkpoint_dir.parent).load(checkpoint_dir, state)
    model.load_state_dict(state["model"])
    try:
        return export_model(model, cfg, out)
    except OSError as exc:
        raise file_system_error(exc, "cannot write the export to") from exc


def _checked_config(config: dict, checkpoint_dir: Path) -> DictConfig:
    """The stored config with its model section typed by the model's schema and value-checked."""
    from memtrain.config.schema import model_schema
    from memtrain.config.validate import check_values

    try:
        schema = model_schema(str(config["model"].get("arch")))
        cfg = OmegaConf.create(config)
        cfg.model = OmegaConf.merge(OmegaConf.structured(schema), config["model"])
        check_values(cfg.model, "model.")
    except (KeyError, ConfigError, OmegaConfBaseException) as exc:
        raise CheckpointError(f"{checkpoint_dir / 'meta.json'}: its model config is not valid "
                              f"({' '.join(str(exc).split())[:300]})") from exc
    return cfg


def _check_tensors(cfg: DictConfig, metadata, checkpoint_dir: Path) -> None:
    """The model's tensors (built on the meta device) against DCP's metadata, and the bytes they
    need against the shard files' size, before anything is allocated."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from memtrain.models.meta import build_on_meta

    stored = metadata.state_dict_metadata
    model = build_on_meta(build_qat_model, cfg)
    problems, needed = [], 0
    for name, tensor in model.state_dict().items():
        entry = stored.get(f"model.{name}")
        if not isinstance(entry, TensorStorageMetadata):
            problems.append(f"{name} is missing")
        elif tuple(entry.size) != tuple(tensor.shape):
            problems.append(f"{name} is {list(entry.size)} in the checkpoint, {list(tensor.shape)} in its config")
        else:
            needed += tensor.numel() * entry.properties.dtype.itemsize
    if problems:
        raise CheckpointError(f"{checkpoint_dir}: its tensors do not match the model of its meta.json: "
                              f"{'; '.join(problems[:5])}{f'; and {len(problems) - 5} more' if len(problems) > 5 else ''}")
    on_disk = sum(f.stat().st_size for f in checkpoint_dir.glob("*.distcp"))
    if needed > on_disk:
        raise CheckpointError(f"{checkpoint_dir}: the model needs {needed} bytes of weights but the shard files hold "
                              f"{on_disk}; the checkpoint is truncated or its metadata was edited")


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
