"""Evoformer attention with a pair bias: Triton kernels (kernel.py), launcher and autograd
(function.py), plain-torch reference (reference.py). Importing this package imports Triton."""

from memtrain.kernels.evoformer_attention.function import evoformer_attention
from memtrain.kernels.evoformer_attention.reference import evoformer_attention_reference

__all__ = ["evoformer_attention", "evoformer_attention_reference"]
