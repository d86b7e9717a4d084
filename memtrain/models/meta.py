"""Building a model on the meta device (shapes only, no memory), fast at any size.

The estimator, the planner and the resume check need only parameter names and shapes. On the meta
device the weight initialisation still runs (torch's reference implementations of normal_,
uniform_, ... in Python, about 2 ms per tensor: two thirds of the build time of a deep model) and
changes nothing, so `build_on_meta` skips the initialisation functions for meta tensors with a
TorchFunctionMode. Shapes and names are exactly those of the real build.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# initialisers that only write values (never change a shape): on a meta tensor they do nothing
_INIT_FUNCTIONS = frozenset({
    "normal_", "uniform_", "trunc_normal_", "constant_", "ones_", "zeros_", "fill_", "zero_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
    "exponential_", "random_", "bernoulli_", "geometric_", "log_normal_", "cauchy_",
})


class _SkipInitOnMeta(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in _INIT_FUNCTIONS:
            tensor = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[Any], nn.Module], model_cfg: Any) -> nn.Module:
    """`build(model_cfg)` with every tensor on the meta device and initialisers skipped.

    Raises ConfigError('model') when a tensor of the model cannot even be described: more than
    2^63 bytes, or a dimension beyond int64 (torch's "Storage size calculation overflowed" and
    "Overflow when unpacking long")."""
    try:
        with torch.device("meta"), _SkipInitOnMeta():
            return build(model_cfg)
    except (RuntimeError, OverflowError, TypeError) as exc:  # TypeError: a size beyond int64
        reason = " ".join(str(exc).split()).split(" Exception raised from")[0]  # without torch's C++ location
        if "overflow" not in reason.lower():
            raise
        from memtrain.config.errors import ConfigError

        raise ConfigError("model", f"a tensor of this model is too large to describe ({reason[:200]}); its sizes "
                                   "(model.dim, the hidden and vocabulary sizes) are far beyond any device") from None


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of `tensor` (a DTensor's local shard, a view sharing its storage) to fill
    in place; `tensor` itself when it is a plain tensor. Reads the class by name, so that the
    model files import nothing from torch.distributed."""
    return tensor.to_local() if type(tensor).__name__ == "DTensor" else tensor


T = TypeVar("T", bound=Callable[..., torch.Tensor])


def host_table(fn: T) -> T:
    """Decorator for a function computing a constant table from sizes (an index, a mask, coordinates):
    it runs on the CPU and its result moves to the current default device. Arithmetic on the meta
    device runs torch's Python meta kernels, whose first call imports torch._dynamo (most of a
    second), so a model built on the meta device (`build_on_meta`) should compute no table there."""

    @functools.wraps(fn)
    def on_host(*args: Any, **kwargs: Any) -> torch.Tensor:
        device = torch.get_default_device()
        with torch.device("cpu"):
            table = fn(*args, **kwargs)
        return table.to(device)

    return on_host  # type: ignore[return-value]
