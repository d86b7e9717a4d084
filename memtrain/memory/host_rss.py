"""Measure a process's resident host memory (RSS) and its peak, to check the host-memory model
(memtrain.memory.host_memory) against. Linux only: reads /proc/self/status (VmRSS, VmHWM) and
resets the peak by writing 5 to /proc/self/clear_refs (Linux >= 4.0).

RSS counts the pages a process has touched, not what its allocators hold: a tensor made with
torch.empty and never written adds nothing, and memory freed to glibc's heap stays resident until
the heap top is trimmed. `release_freed_memory` makes RSS follow the live tensors: it sets glibc's
mmap threshold to 64 KiB (so every tensor above it is its own mapping, unmapped when freed; this
also stops glibc from raising the threshold as it does by default) and trims the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 64 * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (not Linux?)")


def rss_bytes() -> int:
    """The process's resident set size now, in bytes (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """The process's peak resident set size since it started or since `reset_peak`, in bytes (VmHWM)."""
    return _status_kib("VmHWM") * 1024


def reset_peak() -> None:
    """Start a new peak: VmHWM becomes the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def release_freed_memory() -> None:
    """Collect garbage and give glibc's free heap back to the system; from now on every allocation
    above 64 KiB is a separate mapping, returned to the system when freed (see the module
    docstring). No effect beyond the garbage collection where glibc is not the C library."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.malloc_trim(0)
