"""A read-only, plain-Python view of a composed config, for estimating many candidates quickly.

`memtrain plan` estimates thousands of configurations that differ from one composed config in a few
keys. Copying and updating an OmegaConf DictConfig per candidate costs milliseconds (most of a
plan's time before this module); a `ConfigView` over `OmegaConf.to_container(cfg, resolve=True)`
reads the same way (attribute and item access, `in`, `.get`, iteration; enums stay Enum members, as
OmegaConf keeps them) and `replace` makes a candidate by copying only the dictionaries on the
changed keys' paths: the untouched groups are shared between candidates.

The estimator, the cost model and the validator read a view as they read a DictConfig. Nothing
writes to a view: `replace` returns a new one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigView(Mapping):
    """Read-only attribute access over a nested dict (values: scalars, Enum members, lists)."""

    __slots__ = ("_children", "_data", "_key")

    def __init__(self, data: dict):
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "_key", None)

    @classmethod
    def of(cls, cfg: DictConfig) -> ConfigView:
        return cls(OmegaConf.to_container(cfg, resolve=True))

    def _child(self, name: str) -> Any:
        value = self._data[name]
        if isinstance(value, dict):
            view = self._children.get(name)
            if view is None:
                view = self._children[name] = ConfigView(value)
            return view
        return value

    def __getattr__(self, name: str) -> Any:
        try:
            return self._child(name)
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"a ConfigView is read-only (setting {name!r}); use replace()")

    def __getitem__(self, name: str) -> Any:
        return self._child(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __repr__(self) -> str:
        return f"ConfigView({self._data!r})"

    def to_dict(self) -> dict:
        return self._data

    def key(self) -> str:
        """A string equal for equal contents (memoised: views of shared groups compute it once)."""
        if self._key is None:
            object.__setattr__(self, "_key", json.dumps(self._data, sort_keys=True, default=str))
        return self._key

    def replace(self, updates: Mapping[str, Any]) -> ConfigView:
        """A new view with dotted keys set (`{"trainer.micro_batch_size": 4, "parallel": {...}}`);
        a dict value replaces the whole node. Only the dictionaries on the paths are copied; the
        new view reuses this one's views of the unchanged nodes."""
        root = dict(self._data)
        copied: dict[tuple[str, ...], dict] = {(): root}
        for dotted, value in updates.items():
            path = tuple(dotted.split("."))
            node = root
            for i, part in enumerate(path[:-1]):
                prefix = path[:i + 1]
                if prefix not in copied:
                    child = node.get(part)
                    if not isinstance(child, dict):
                        raise KeyError(".".join(prefix))
                    node[part] = copied[prefix] = dict(child)
                node = copied[prefix]
            if path[-1] not in node and not isinstance(value, dict):
                raise KeyError(dotted)
            node[path[-1]] = value
        out = ConfigView(root)
        changed = {path[0] for path in (k.split(".") for k in updates)}
        for name, view in self._children.items():
            if name not in changed:
                out._children[name] = view
        return out


def node_key(node: Any) -> str:
    """A cache key for a config node (a ConfigView or a DictConfig): equal for equal contents."""
    if isinstance(node, ConfigView):
        return node.key()
    return json.dumps(OmegaConf.to_container(node, resolve=True), sort_keys=True, default=str)


def with_values(cfg: Any, updates: Mapping[str, Any]) -> Any:
    """`cfg` with dotted keys set, as a new object of the same kind (ConfigView or DictConfig)."""
    if isinstance(cfg, ConfigView):
        return cfg.replace(updates)
    out = cfg.copy()
    for key, value in updates.items():
        OmegaConf.update(out, key, value, merge=False)
    return out
