"""Cross-field checks of QAT and FP8 settings, run by memtrain.config.validate before any process
starts."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from memtrain.config.errors import as_enum, require
from memtrain.config.schema import Device, DType, QATScheme


def validate_quantization(cfg: DictConfig) -> None:
    p = cfg.precision
    qat = as_enum(p.qat, QATScheme)
    require(not (qat is not QATScheme.none and p.fp8), "precision.qat",
            f"qat={qat.name} fake-quantizes the linear layers that precision.fp8=true runs in FP8; choose one")
    require(not ((qat is not QATScheme.none or p.fp8) and cfg.parallel.tp != 1), "parallel.tp",
            f"parallel.tp={cfg.parallel.tp}: the tensor-parallel plan shards nn.Linear weights, which "
            "precision.qat / precision.fp8 replace; quantized tensor parallelism is not supported")
    if not p.fp8:
        return
    require(as_enum(p.compute_dtype, DType) is DType.bfloat16, "precision.compute_dtype",
            "precision.fp8 runs the rest of the model in bfloat16 autocast: compute_dtype must be bfloat16")
    require(p.fp8_amax_history >= 1, "precision.fp8_amax_history", f"must be at least 1, got {p.fp8_amax_history}")
    device = as_enum(cfg.trainer.device, Device)
    require(device is not Device.cpu and torch.cuda.is_available(), "precision.fp8",
            "FP8 GEMMs need a CUDA GPU of capability >= 8.9 (Ada/Hopper); "
            f"trainer.device={device.name}{'' if torch.cuda.is_available() else ' and no CUDA device is visible'}. "
            "Use precision=bf16")
    cap = torch.cuda.get_device_capability()
    require(cap >= (8, 9), "precision.fp8",
            f"FP8 GEMMs need CUDA capability >= 8.9 (Ada/Hopper); {torch.cuda.get_device_name()} has {cap[0]}.{cap[1]}. "
            "Use precision=bf16")
