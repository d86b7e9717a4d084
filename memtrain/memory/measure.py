"""Measure what a forward pass really leaves allocated for the backward pass, on any device
(CPU included), to check the analytic activation model against."""

from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def forward_held_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Net bytes allocated by `forward()` and still held when it returns (the saved activations
    plus the returned tensor), from the profiler's per-op allocation records."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, profile_memory=True) as prof:
        out = forward()
    held = sum(e.self_cpu_memory_usage + getattr(e, "self_device_memory_usage", 0) for e in prof.events())
    return held - out.untyped_storage().nbytes()
