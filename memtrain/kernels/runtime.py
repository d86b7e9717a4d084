"""Which Triton variant runs a kernel: compiled for CUDA tensors, the interpreter for CPU tensors
when TRITON_INTERPRET=1. Both are built from the kernel's Python source, so the choice is made per
call by the tensors' device. Triton's own @jit library (tl.sum, tl.max) is interpreted or compiled
as TRITON_INTERPRET was when Triton was imported, so the interpreter needs the variable set before
that import (and a process that imported Triton interpreted cannot also compile kernels)."""

from __future__ import annotations

import torch

from memtrain.config.kernel_runtime import interpret_requested, unavailable_reason  # noqa: F401  (re-exported)


_VARIANTS: dict[tuple[int, bool], object] = {}


def variant(kernel, device: torch.device, autotune=None):
    """The launchable form of `kernel` (a @triton.jit function) for tensors on `device`:
    an InterpretedFunction on CPU (TRITON_INTERPRET=1 required), else a compiled JITFunction,
    wrapped by `autotune(jit_fn)` when given."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    cpu = device.type == "cpu"
    if cpu and not interpret_requested():
        raise RuntimeError("Triton kernels on CPU tensors run only in the interpreter: set TRITON_INTERPRET=1 "
                           "(slow; for tests), or pass CUDA tensors")
    key = (id(kernel), cpu)
    if key not in _VARIANTS:
        fn = kernel.fn
        if cpu:
            _VARIANTS[key] = InterpretedFunction(fn)
        else:
            jit = JITFunction(fn)
            _VARIANTS[key] = autotune(jit) if autotune is not None else jit
    return _VARIANTS[key]
