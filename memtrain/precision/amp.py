"""Mixed precision: parameter dtype, autocast region and dynamic loss scaling, resolved once."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from memtrain.config.errors import as_enum
from memtrain.config.schema import DType

DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}


def dtype_of(value: DType | str) -> torch.dtype:
    """The torch dtype of a precision.*_dtype value (a DType or its name)."""
    return DTYPES[as_enum(value, DType)]


@dataclass
class Precision:
    param_dtype: torch.dtype
    compute_dtype: torch.dtype
    device_type: str
    scaler: torch.amp.GradScaler

    @classmethod
    def from_config(cls, pcfg: DictConfig, device_type: str) -> "Precision":
        scaler = torch.amp.GradScaler(
            device_type,
            init_scale=pcfg.init_scale,
            growth_factor=pcfg.growth_factor,
            backoff_factor=pcfg.backoff_factor,
            growth_interval=pcfg.growth_interval,
            enabled=pcfg.loss_scaling,
        )
        return cls(dtype_of(pcfg.param_dtype), dtype_of(pcfg.compute_dtype), device_type, scaler)

    @property
    def uses_autocast(self) -> bool:
        return self.compute_dtype != self.param_dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.uses_autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute_dtype)
