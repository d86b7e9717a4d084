"""Kernel tests run Triton's interpreter on CPU tensors when no CUDA device is visible.

Triton decides at import time whether its own @jit library functions (tl.sum, tl.max, ...) are
interpreted, from TRITON_INTERPRET. So this file imports Triton and the kernel modules with
TRITON_INTERPRET=1 and then restores the variable: no other test in the same process sees it set.
Each kernel test sets it again for its own duration (the launcher checks it before running a
kernel on CPU tensors). With a CUDA device nothing is interpreted: the interpreter tests skip and
test_cuda.py runs the same cases compiled, in bf16 as well.
"""

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()

if INTERPRET:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        triton = pytest.importorskip("triton")
        import triton.language as tl

        import memtrain.kernels.evoformer_attention  # noqa: F401
        import memtrain.kernels.layer_norm  # noqa: F401
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous
    # False when Triton was imported earlier in this process without TRITON_INTERPRET=1
    INTERPRETER_READY = type(tl.sum).__name__ == "InterpretedFunction"
else:
    pytest.importorskip("triton")
    INTERPRETER_READY = False


@pytest.fixture(autouse=True)
def triton_interpret(monkeypatch, request):
    if request.node.path.name == "test_cuda.py":
        yield
        return
    if not INTERPRET:
        pytest.skip("a CUDA device is visible: test_cuda.py runs these cases compiled")
    if not INTERPRETER_READY:
        pytest.fail("Triton was imported in this process before tests/kernels/conftest.py, without "
                    "TRITON_INTERPRET=1; run with TRITON_INTERPRET=1 set")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
