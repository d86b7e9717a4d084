"""Config names renamed in this release, accepted under their old names for one more release.

    checkpoint        -> activation_checkpoint   the group of activation checkpointing, not the saved
                                                 training checkpoints
    parallel.sp       -> parallel.cp             Ulysses / Ring attention are context parallelism (cp), as in
    parallel.sp_impl  -> parallel.cp_impl        torchtitan and Megatron; sequence parallelism is Megatron's
                                                 norm/dropout split under tp (parallel.tp_sp)

Every override enters memtrain through `rename_overrides` (the command line in memtrain.cli, the
Python API in memtrain.config.loader.compose_config, `estimate --from-run` in
memtrain.memory.from_run), and every config stored in a checkpoint's meta.json through
`upgrade_stored_config` (memtrain.engine.checkpoint.read_meta and the readers of meta.json). No
Hydra or torch import here: the command line calls it before composing anything.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterable

# old top-level config group -> new name (removed in the release after the one that renamed it)
RENAMED_GROUPS: dict[str, str] = {
    "checkpoint": "activation_checkpoint",  # activation checkpointing, not the saved training checkpoints
}

_warned: set[str] = set()


def _pattern(old: str) -> re.Pattern[str]:
    # an override of group `old`: `old=X`, `old.KEY=V`, `+old=X`, `++old.KEY=V`, `~old`, `~old.KEY`
    # (Hydra's override grammar: optional +, ++ or ~ prefix, a dotted key, `=` unless it is a deletion)
    return re.compile(rf"^(?P<prefix>~|\+\+|\+)?{re.escape(old)}(?P<rest>(\.[^=]*)?(=.*)?)$", re.DOTALL)


_PATTERNS = {old: _pattern(old) for old in RENAMED_GROUPS}


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def warn_renamed(old: str, new: str) -> None:
    """One line on stderr naming the old and the new name, once per process and only on rank 0."""
    if old in _warned:
        return
    _warned.add(old)
    if _is_rank0():
        print(f"memtrain: deprecated: config group `{old}` is now `{new}` (write {new}=X, {new}.KEY=V); "
              f"`{old}` will stop working in the next release", file=sys.stderr)


def rename_override(override: str) -> str:
    """`override` (one Hydra override) with a renamed group's old name replaced by the new one;
    anything else is returned unchanged. Prints the deprecation line (warn_renamed) on a rename."""
    for old, pattern in _PATTERNS.items():
        m = pattern.match(override)
        if m is None or (m["prefix"] != "~" and "=" not in m["rest"]):
            continue  # a bare word (e.g. a path or a flag's value) is not an override
        new = RENAMED_GROUPS[old]
        warn_renamed(old, new)
        return f"{m['prefix'] or ''}{new}{m['rest']}"
    return override


def rename_overrides(overrides: Iterable[str], where: str = "the overrides") -> list[str]:
    """Each of `overrides` through rename_override (renamed groups) and rename_keys (renamed keys):
    a list of Hydra overrides, or a command line (flags and other words pass through unchanged)."""
    return rename_keys([rename_override(o) for o in overrides], where)


def upgrade_stored_config(config: Any, where: str = "a stored config") -> Any:
    """A run config stored by an older release (meta.json's "config", a plain dict) with renamed
    groups (silently: the user did not write them) and renamed keys (rename_stored_config, with its
    deprecation line) under their new names; the same object, changed in place. Anything not a
    dict, or a dict that already has the new name, is left as it is."""
    if isinstance(config, dict):
        for old, new in RENAMED_GROUPS.items():
            if old in config and new not in config:
                config[new] = config.pop(old)
        rename_stored_config(config, where)
    return config


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
    if not fresh or not _is_rank0():
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


def rename_keys(overrides: list[str], where: str = "the overrides") -> list[str]:
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
