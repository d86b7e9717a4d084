"""`memtrain estimate --from-run PATH [overrides]`: the memory a checkpointed run needs, or would
need with some keys changed ("this run with parallel=fsdp instead").

PATH is a run folder (its newest complete checkpoint under checkpoints/), a checkpoints/ folder,
or one checkpoint folder step_<N>/. The run's resolved config is read from the checkpoint's
meta.json (memtrain.engine.checkpoint.read_meta: JSON only, nothing executed); each override then
applies on top of it as on the command line: `group=option` replaces that group with the option
composed by Hydra, `key=value` sets one key. The result is validated like any config, with
trainer.resume cleared (the estimate resumes nothing) and trainer.device=auto where the run asked
for CUDA on a machine without it (an estimate touches no device).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from memtrain.config.errors import ConfigError, from_hydra
from memtrain.config.schema import Device

GROUPS = ("model", "parallel", "precision", "optimizer", "offload", "activation_checkpoint", "data", "trainer", "launcher",
          "hardware")


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint folder PATH names: itself (it holds meta.json), or the newest complete one
    under PATH/checkpoints/ or PATH/; ConfigError naming --from-run when there is none."""
    from memtrain.engine.checkpoint import META_FILE, Checkpointer

    p = Path(path).expanduser()
    if (p / META_FILE).is_file():
        return p
    for folder in (p / "checkpoints", p):
        if folder.is_dir():
            latest = Checkpointer(folder).latest()
            if latest is not None:
                return latest
    raise ConfigError("--from-run", f"{path}: no checkpoint found (a run folder with checkpoints/step_<N>/, or a "
                                    "step_<N>/ folder with meta.json, as memtrain train writes them)")


def config_from_run(path: str | Path, overrides: list[str]) -> DictConfig:
    """The stored config of the checkpoint at `path` with `overrides` applied, validated."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from memtrain.config.aliases import rename_overrides
    from memtrain.config.loader import compose_config
    from memtrain.config.validate import validate
    from memtrain.engine.checkpoint import read_meta

    folder = checkpoint_folder(path)
    stored = read_meta(folder).get("config")  # read_meta renames an older release's groups
    overrides = rename_overrides(overrides)
    if not isinstance(stored, dict) or not all(g in stored for g in ("model", "parallel", "trainer")):
        raise ConfigError("--from-run", f"{folder}/meta.json holds no run config (a checkpoint from another tool?)")
    cfg = _stored_config(stored, folder)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OmegaConfBaseException as exc:
        raise from_hydra(exc) from exc
    except Exception as exc:  # Hydra's OverrideParseException: a malformed override
        raise ConfigError("overrides", f"cannot parse {overrides}: {exc}") from None
    for o in parsed:
        key = o.key_or_group
        if o.is_delete() or key.startswith(("hydra", "recipe")):
            raise ConfigError(key, "with --from-run, overrides change the run's config: use group=option or "
                                   "key=value (no recipes, deletions or hydra keys)")
        if key in GROUPS:  # a group option in place of the run's
            node = compose_config([f"{key}={o.value()}"])[key]
            cfg[key] = OmegaConf.create(OmegaConf.to_container(node, resolve=True, enum_to_str=True))
        else:
            group = key.split(".", 1)[0]
            if group not in GROUPS or OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
                raise ConfigError(key, f"the run's config has no key {key!r}")
            OmegaConf.update(cfg, key, o.value(), merge=True)
    cfg.trainer.resume = "none"
    _enum_members(cfg, f"{folder}/meta.json")
    if cfg.trainer.device is Device.cuda and not torch.cuda.is_available():
        cfg.trainer.device = "auto"
    validate(cfg)
    return cfg


def _stored_config(stored: dict, folder: Path) -> DictConfig:
    """meta.json's config as a DictConfig, checked as a composed config would be: every group
    present, the model's keys and types those of its family's schema, every interpolation
    resolvable. ConfigError naming --from-run and the file otherwise (meta.json is written by
    memtrain train; one edited by hand or by another tool is refused here, not deep in a build)."""
    from memtrain.config.families import families
    from memtrain.config.schema import model_schema

    where = f"{folder}/meta.json"
    missing = [g for g in GROUPS if not isinstance(stored.get(g), dict)]
    if missing:
        raise ConfigError("--from-run", f"{where}: the stored config has no {', '.join(missing)} group "
                                        "(written by another tool or an edited file?)")
    arch = stored["model"].get("arch")
    if not isinstance(arch, str):
        raise ConfigError("--from-run", f"{where}: the stored config names no model.arch")
    try:
        cfg = OmegaConf.create(stored)
        if arch in families():  # an unknown arch is refused by validation, naming model.arch
            OmegaConf.merge(OmegaConf.structured(model_schema(arch)), cfg.model)  # unknown keys, wrong types
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    except OmegaConfBaseException as exc:
        reason = " ".join(str(exc).split("\n")[0].split())
        raise ConfigError("--from-run", f"{where}: the stored config does not fit this memtrain's schema "
                                        f"({reason})") from None
    return cfg


def _enum_members(cfg: DictConfig, where: str) -> None:
    """The enum-valued keys of the groups with one schema (and the model's) as members, as a
    composed config holds them: meta.json and `key=value` overrides give their names as plain
    strings. A key the stored config lacks (an older release's) takes its schema default; a name
    that is no member is a ConfigError naming the key."""
    import dataclasses
    import typing
    from enum import Enum

    from memtrain.config import schema
    from memtrain.config.families import families

    schemas = {"parallel": schema.ParallelConfig, "precision": schema.PrecisionConfig, "offload": schema.OffloadConfig,
               "activation_checkpoint": schema.ActivationCheckpointConfig, "trainer": schema.TrainerConfig,
               "launcher": schema.LauncherConfig, "hardware": schema.HardwareConfig,
               "data": schema.ERA5DataConfig if str(cfg.data.get("source")) in ("era5", "DataSource.era5") else schema.DataConfig}
    if cfg.model.get("arch") in families():
        schemas["model"] = schema.model_schema(cfg.model.arch)
    for group, dataclass_type in schemas.items():
        hints = typing.get_type_hints(dataclass_type)
        for f in dataclasses.fields(dataclass_type):
            enum_type = hints[f.name]
            if not (isinstance(enum_type, type) and issubclass(enum_type, Enum)):
                continue
            value = cfg[group].get(f.name, f.default)
            if isinstance(value, str) and value.startswith(f"{enum_type.__name__}."):
                value = value[len(enum_type.__name__) + 1:]  # OmegaConf's spelling of a member
            if not isinstance(value, enum_type) and value not in enum_type.__members__:
                raise ConfigError(f"{group}.{f.name}", f"{value!r} (from {where} or an override) is not a "
                                                       f"{enum_type.__name__}", allowed=enum_type.__members__)
            cfg[group][f.name] = value if isinstance(value, enum_type) else enum_type[value]
