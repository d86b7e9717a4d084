"""Find the config folders and compose a config from overrides, as the command line does."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from memtrain.config.schema import register_schemas

_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = _ROOT / "conf"
RECIPES_DIR = _ROOT / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def register_all() -> None:
    """Register the schemas and every recipes/<name>.yaml as option <name> of group `recipe`."""
    register_schemas()
    cs = ConfigStore.instance()
    for name in recipe_names():
        node = OmegaConf.load(RECIPES_DIR / f"{name}.yaml")
        cs.store(group="recipe", name=name, node=node, package="_global_")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/train.yaml with `overrides` (Hydra syntax) outside of a Hydra job."""
    from memtrain.config.renames import rename_overrides

    register_all()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=rename_overrides(list(overrides or [])))


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose and validate one job's config; every problem is raised as a ConfigError."""
    from memtrain.config.errors import from_hydra

    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise from_hydra(exc) from exc
    check_config(cfg)
    return cfg


def check_config(cfg: DictConfig) -> None:
    """Resolve and validate a composed config; every problem is raised as a ConfigError."""
    from memtrain.config.errors import from_hydra
    from memtrain.config.validate import validate

    try:
        resolve_all(cfg)
        validate(cfg)
    except OmegaConfBaseException as exc:
        raise from_hydra(exc) from exc


def resolve_all(cfg: DictConfig) -> None:
    """Resolve every interpolation and read every value once, so a missing value or an
    interpolation that cannot resolve (${nonexistent}, ${oc.env:UNSET}) is an error naming its key
    now, not when some code first reads it. Raises OmegaConf's errors (full_key set)."""
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
