"""Initialising a model materialised from the meta device in place, module by module, with the
same code the eager build runs (trainer.init_device=meta: memtrain.engine.init_device).

Every module with parameters or buffers of its own is reset by one of:

* its own `reset_parameters(generator_for=None)`: memtrain's modules (AlphaFold's Linear, the
  weather models' attention and window blocks) define it next to their constructor, which calls it
  with no generator, so the eager and the materialised initialisation are one code path. It fills
  every parameter (a DTensor's local shard) and recomputes every buffer (an index table, a mask)
  of the module itself, not of its children; `generator_for(key, tensor)` gives the generator of
  the parameter named `key` within the module ("weight", "bias"), None for torch's global RNG;
* torch's own initialisation of its stock layers (nn.Linear and nn.Conv*d: kaiming_uniform_ with
  a = sqrt(5), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); nn.LayerNorm, nn.GroupNorm, nn.RMSNorm:
  weight ones, bias zeros), written out here with a generator because their reset_parameters take
  none (torch.nn.modules.linear / conv / normalization, torch 2.x).

A module that has parameters or buffers of its own and neither is an error (TypeError naming it):
`to_empty` leaves uninitialised memory, which must never reach training.

Fans and bounds come from a parameter's global shape (a DTensor's `shape`), so a shard draws from
the same distribution as the whole tensor; the values it draws are its own generator's. The
modules are visited children first (torch's Module.apply order), which is the order in which the
eager constructors draw: with plain tensors and no generators `reset_module_tree` redraws the eager
build's weights exactly (tests/unit/test_reset.py).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from memtrain.models.meta import local_tensor

# (parameter name, tensor) -> the generator that fills it (None: torch's global RNG)
GeneratorFor = Callable[[str, torch.Tensor], Optional[torch.Generator]]


def _no_generators(key: str, tensor: torch.Tensor) -> None:
    return None


def scoped(generator_for: Optional[GeneratorFor], prefix: str) -> GeneratorFor:
    """`generator_for` for the parameters of the module at `prefix`: key "weight" -> "prefix.weight"."""
    if generator_for is None:
        return _no_generators
    return lambda key, tensor: generator_for(f"{prefix}.{key}" if prefix else key, tensor)


@functools.lru_cache(maxsize=None)
def _takes_generators(cls: type) -> bool:
    reset = getattr(cls, "reset_parameters", None)
    return reset is not None and "generator_for" in inspect.signature(reset).parameters


def fan_in(weight: torch.Tensor) -> int:
    """torch's fan_in of a weight (in_features x receptive field) from its global shape."""
    return nn.init._calculate_fan_in_and_fan_out(weight)[0]


def uniform_(tensor: torch.Tensor, bound: float, generator: Optional[torch.Generator]) -> None:
    """U(-bound, bound) into `tensor`'s local part."""
    nn.init.uniform_(local_tensor(tensor), -bound, bound, generator=generator)


def xavier_uniform_(weight: torch.Tensor, gain: float, generator: Optional[torch.Generator]) -> None:
    """torch.nn.init.xavier_uniform_ with fans from the global shape (a shard's own shape would
    shrink fan_out) and the same arithmetic, so an unsharded tensor gets torch's exact values."""
    fan_in_, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    std = gain * math.sqrt(2.0 / float(fan_in_ + fan_out))
    uniform_(weight, math.sqrt(3.0) * std, generator)


def reset_torch_default(module: nn.Module, generator_for: GeneratorFor) -> bool:
    """torch's own initialisation of a stock layer, drawn from `generator_for`'s generators; False
    when `module` is none of the layers handled here."""
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        w = module.weight
        # kaiming_uniform_(w, a=sqrt(5)): gain sqrt(2 / (1 + a^2)), bound gain * sqrt(3 / fan_in)
        gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
        fan = fan_in(w)
        uniform_(w, math.sqrt(3.0) * (gain / math.sqrt(fan)) if fan else 0.0, generator_for("weight", w))
        if module.bias is not None:
            uniform_(module.bias, 1 / math.sqrt(fan) if fan > 0 else 0.0, generator_for("bias", module.bias))
        return True
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
        for key, value in (("weight", 1.0), ("bias", 0.0)):
            t = getattr(module, key, None)
            if t is not None:
                local_tensor(t).fill_(value)
        return True
    return False


def _children_first(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        yield from _children_first(child, f"{prefix}.{name}" if prefix else name)
    yield prefix, module


@torch.no_grad()
def reset_module_tree(model: nn.Module, generator_for: Optional[GeneratorFor] = None) -> None:
    """Initialise every parameter and buffer of `model` in place (see the module docstring): each
    module's own `reset_parameters(generator_for)`, else torch's default for a stock layer.
    `generator_for(parameter name in model, tensor)`; None draws from torch's global RNG.

    Raises TypeError for a module with parameters or buffers of its own that neither covers."""
    seen: set[int] = set()
    for prefix, module in _children_first(model):
        if id(module) in seen:  # a module reachable twice is reset once
            continue
        seen.add(id(module))
        gens = scoped(generator_for, prefix)
        if _takes_generators(type(module)):
            module.reset_parameters(generator_for=gens)
            continue
        stock = reset_torch_default(module, gens)
        own = [] if stock else [n for n, _ in module.named_parameters(recurse=False)]
        own += [n for n, b in module.named_buffers(recurse=False) if b is not None]  # a stock layer has none
        if own:
            raise TypeError(f"{type(module).__name__} at '{prefix}' has parameters or buffers ({', '.join(own)}) "
                            "that no initialiser writes: give it reset_parameters(generator_for=None) "
                            "(memtrain.models.reset)")


def set_table(module: nn.Module, name: str, table: Optional[torch.Tensor]) -> None:
    """Buffer `name` of `module` (not persistent: recomputed, never checkpointed) set to `table`, a
    constant computed from sizes: registered at construction, written in place into the buffer
    `to_empty` left (same device and dtype as that one, e.g. after a cast to bf16) when
    materialised. None registers no tensor (e.g. an unshifted window's mask)."""
    old = module._buffers.get(name)
    if old is None or table is None:
        module.register_buffer(name, table, persistent=False)
    else:
        old.copy_(table)
