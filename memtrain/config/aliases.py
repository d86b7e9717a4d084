"""Config names renamed in this release, accepted under their old names for one more release.

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


def rename_overrides(overrides: Iterable[str]) -> list[str]:
    """Each of `overrides` through rename_override (a list of Hydra overrides, or a command line:
    flags and other words pass through unchanged)."""
    return [rename_override(o) for o in overrides]


def upgrade_stored_config(config: Any) -> Any:
    """A run config stored by an older release (meta.json's "config", a plain dict) with renamed
    groups under their new names; the same object, changed in place. Anything not a dict, or a dict
    that already has the new name, is left as it is."""
    if isinstance(config, dict):
        for old, new in RENAMED_GROUPS.items():
            if old in config and new not in config:
                config[new] = config.pop(old)
    return config
