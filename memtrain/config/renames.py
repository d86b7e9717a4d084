"""Config keys renamed in a release, read under their old names for one more release.

    parallel.sp       -> parallel.cp        Ulysses / Ring attention are context parallelism (cp), as in
    parallel.sp_impl  -> parallel.cp_impl   torchtitan and Megatron; sequence parallelism is Megatron's
                                            norm/dropout split under tp (parallel.tp_sp)

`rename_overrides` rewrites command-line overrides (train, including -m sweeps and the overrides
Hydra sees, estimate, plan, submit) before anything composes them; `rename_stored_config` maps a
config stored by an older release (a checkpoint's meta.json: resume, estimate --from-run). Either
prints one deprecation line on stderr naming the old and new keys, once per process and only where
RANK is unset or 0 (the launcher's workers receive the rewritten overrides).
"""

from __future__ import annotations

import os
import sys
from typing import Any

# old key -> new key: a config group (top level) or group.leaf, renamed in place (same parent)
RENAMED_KEYS = {
    "parallel.sp": "parallel.cp",
    "parallel.sp_impl": "parallel.cp_impl",
}
# values renamed with their key: parallel.name of conf/parallel/ulysses.yaml and ring.yaml was "sp"
RENAMED_VALUES = {"parallel.name": {"sp": "cp"}}
REMOVED_IN = "the next release"

_reported: set[str] = set()


def _deprecated(old_keys: list[str], where: str) -> None:
    """One line on stderr naming every old key not reported yet in this process (rank 0 only)."""
    fresh = [k for k in dict.fromkeys(old_keys) if k not in _reported]
    if not fresh or os.environ.get("RANK", "0") != "0":
        return
    _reported.update(fresh)
    names = ", ".join(f"{k} is now {RENAMED_KEYS[k]}" for k in fresh)
    print(f"memtrain: deprecated config keys in {where}: {names}; the old names are read until {REMOVED_IN}",
          file=sys.stderr, flush=True)


def _split_override(override: str) -> tuple[str, str, str]:
    """(prefix, key, rest) of a Hydra override: prefix one of '', '+', '++', '~'; rest from '=' on."""
    prefix = "++" if override.startswith("++") else override[:1] if override[:1] in ("+", "~") else ""
    body = override[len(prefix):]
    key, eq, value = body.partition("=")
    return prefix, key, eq + value


def rename_overrides(overrides: list[str], where: str = "the overrides") -> list[str]:
    """`overrides` with every renamed key written under its new name (values unchanged, sweeps
    included: parallel.sp=1,2 -> parallel.cp=1,2); other arguments pass through untouched."""
    out, old = [], []
    for o in overrides:
        prefix, key, rest = _split_override(o)
        if key in RENAMED_KEYS:
            old.append(key)
            o = f"{prefix}{RENAMED_KEYS[key]}{rest}"
        out.append(o)
    if old:
        _deprecated(old, where)
    return out


def rename_stored_config(config: Any, where: str = "a stored config") -> Any:
    """A config dict written by an older release (e.g. meta.json's "config") with its renamed keys
    and values moved to the new names, in place and returned. A new key already present wins over
    the old one. Anything that is not a dict of dicts is returned as is."""
    if not isinstance(config, dict):
        return config
    old = []
    for old_key, new_key in RENAMED_KEYS.items():  # a top-level key (a group) or group.leaf
        parent, _, leaf = old_key.rpartition(".")
        node = config.get(parent) if parent else config
        if isinstance(node, dict) and leaf in node:
            value = node.pop(leaf)
            node.setdefault(new_key.rpartition(".")[2], value)
            old.append(old_key)
    if old:
        for key, mapping in RENAMED_VALUES.items():
            group, leaf = key.split(".", 1)
            node = config.get(group)
            if isinstance(node, dict) and node.get(leaf) in mapping:
                node[leaf] = mapping[node[leaf]]
        _deprecated(old, where)
    return config
