"""Configuration errors, rendered as one paragraph that names the key and the allowed values."""

from __future__ import annotations

import dataclasses
import re
from enum import Enum
from typing import Iterable, TypeVar

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from memtrain.errors import UserError


class ConfigError(UserError):
    """An invalid configuration: `key` is the dotted config key at fault."""

    def __init__(self, key: str, message: str, allowed: Iterable[str] | None = None, allowed_label: str = "Allowed values"):
        self.key, self.message, self.allowed_label = key, message, allowed_label
        self.allowed = list(allowed) if allowed is not None else None
        super().__init__(self.render())

    def render(self) -> str:
        text = f"invalid configuration at '{self.key}': {self.message}"
        if self.allowed is not None:
            text += f". {self.allowed_label}: {', '.join(map(str, self.allowed))}"
        return text.rstrip(".") + "."


def _fields_of(object_type: type | None) -> list[str] | None:
    if object_type is not None and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type) if not f.name.startswith("_")]
    return None


def from_hydra(exc: Exception) -> ConfigError:
    """Translate an error raised while Hydra composes a config into a ConfigError."""
    if isinstance(exc, MissingConfigException):
        match = re.search(r"Could not find '([^']+)'", str(exc))
        missing = match.group(1) if match else str(exc.missing_cfg_file)
        group, _, option = missing.rpartition("/")
        if group:
            return ConfigError(group, f"unknown option {option!r} for config group '{group}'", allowed=exc.options or [])
        return ConfigError(missing, "config not found")
    if isinstance(exc, OverrideParseException):
        reason = exc.message.splitlines()[0]  # drop the link to Hydra's grammar page
        return ConfigError(exc.override or "<command line>", f"cannot parse override: {reason}")
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        first_line = str(cause).splitlines()[0]
        object_type = getattr(cause, "object_type", None)
        if isinstance(cause, MissingMandatoryValue):
            return ConfigError(cause.full_key, "a value is required but none is set (removed with ~, or never given)")
        if first_line.startswith("Key ") and "not in" in first_line:
            key = cause.full_key
            return ConfigError(key, f"unknown key '{key.rpartition('.')[2]}'", allowed=_fields_of(object_type),
                               allowed_label="Allowed keys")
        return ConfigError(cause.full_key, first_line)
    return ConfigError("<command line>", " ".join(str(exc).split()))


def require(condition: bool, key: str, message: str, allowed: Iterable[str] | None = None,
            allowed_label: str = "Allowed values") -> None:
    if not condition:
        raise ConfigError(key, message, allowed, allowed_label)


E = TypeVar("E", bound=Enum)


def as_enum(value: object, enum_type: type[E]) -> E:
    """The member of `enum_type` that `value` is or names.

    A typed config node holds the member (OmegaConf keeps enums as Enum members); an untyped one
    (a `.get` default, a value set on a plain dict or a plan candidate's override) holds its name.
    Compare the result with members (`as_enum(cfg.trainer.device, Device) is Device.cpu`), so a
    misspelt member is an AttributeError rather than a comparison that is always False.

    Raises ValueError for a string that names no member of `enum_type`, TypeError for anything
    else (a member of another enum included); both messages name `enum_type` and its members."""
    if isinstance(value, enum_type):
        return value
    names = ", ".join(enum_type.__members__)
    if isinstance(value, str) and not isinstance(value, Enum):
        try:
            return enum_type[value]
        except KeyError:
            raise ValueError(f"{value!r} is not a {enum_type.__name__}; expected one of: {names}") from None
    raise TypeError(f"expected a {enum_type.__name__} member or its name (one of: {names}), "
                    f"got {type(value).__name__} {value!r}")


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
