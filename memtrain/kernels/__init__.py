"""Fused Triton kernels: each op has kernel.py (@triton.jit), function.py (launcher +
autograd.Function) and reference.py (plain torch). Importing this package does not import Triton."""
