"""Fused layer norm: Triton kernels (kernel.py), launcher and autograd (function.py), reference."""

from memtrain.kernels.layer_norm.function import layer_norm
from memtrain.kernels.layer_norm.reference import layer_norm_reference

__all__ = ["layer_norm", "layer_norm_reference"]
