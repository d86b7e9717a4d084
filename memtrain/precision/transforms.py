"""The precision module swaps the engine applies after building a model: quantization-aware
training (memtrain.precision.qat) and FP8 linear layers (memtrain.precision.fp8)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from memtrain.models.spec import ModelSpec
from memtrain.precision.qat import apply_qat


def apply_precision_transforms(model: nn.Module, pcfg: DictConfig, spec: ModelSpec, device: torch.device) -> None:
    apply_qat(model, pcfg, spec)
    if pcfg.get("fp8", False):
        from memtrain.precision.fp8 import apply_fp8

        apply_fp8(model, pcfg, spec, device)
