"""Whether the Triton kernels (memtrain.kernels) can run here, as validation and the planner ask it
before anything is built: light (no Triton import). Re-exported by memtrain.kernels.runtime."""

from __future__ import annotations

import importlib.util
import os

import torch


def interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device: str) -> str | None:
    """None when Triton kernels can run on `device` ("cuda" or "cpu"); otherwise why not."""
    if importlib.util.find_spec("triton") is None:
        return "needs Triton (pip install 'memtrain[kernels]')"
    if device == "cuda" and torch.cuda.is_available():
        return None
    if interpret_requested():
        return None
    return ("needs a CUDA device; none is visible (set TRITON_INTERPRET=1 to run the kernels on CPU "
            "in Triton's interpreter, slowly, or choose attention_backend=naive or sdpa)")
