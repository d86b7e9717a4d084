"""Model families, one folder each (model, spec, parallelize, family.py). Importing this package
imports no family: `get_spec(arch)` imports only the one asked for (memtrain.models.family lists
them, with what each supports)."""

from __future__ import annotations

from typing import Any

__all__ = ["ModelSpec", "get_spec", "register_spec"]


def __getattr__(name: str) -> Any:  # the spec module imports torch: only when it is asked for
    if name in __all__:
        from memtrain.models import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
