"""Facts about this machine that several layers read (no memtrain import): its physical memory and
a device's memory."""

from __future__ import annotations

import os
from typing import Any


def host_memory_bytes() -> int:
    """Physical memory of this machine, bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory_bytes(device: Any) -> int:
    """The memory of torch.device `device`, bytes: a CUDA device's total memory, or the host's
    physical memory for the CPU."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_properties(device).total_memory
    return host_memory_bytes()
