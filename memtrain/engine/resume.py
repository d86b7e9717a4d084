"""Whether a checkpoint can be resumed by a run, decided from its meta.json before any weights load.

A checkpoint's meta.json keeps the resolved config of the run that wrote it (plus the world size
and the checkpoint format). `check_resume` compares that config with the new run's and refuses, as
one CheckpointError paragraph naming the checkpoint and the differing keys, anything that would
load wrongly or not at all:

* model: any model key whose change alters the parameter names or shapes (found by building both
  models on the meta device, so it holds for every family without knowing its fields); a change of
  precision.qat or precision.fp8, which swaps layers;
* the checkpoint format: DeepSpeed's (parallel=zero*) and DCP's (every other option) are distinct,
  and a ZeRO checkpoint resumes only on its own stage and world size (its partitions are per rank);
* the optimizer class (optimizer._target_), whose state has another layout;
* the parameter dtype (precision.param_dtype; under ZeRO also precision.compute_dtype), unless the
  run asks for the cast with trainer.resume_cast=true: then the cast is listed in `casts`.

Everything else may change on resume (lr, schedule, batch size, data, activation checkpointing,
the number of DCP ranks, which DCP reshards); optimizer hyper-parameters come from the new config.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from memtrain.config.errors import ConfigError, to_container
from memtrain.config.parallel_options import PARALLEL_OPTIONS, Backend, parallel_option
from memtrain.engine.checkpoint import Checkpointer, CheckpointError, read_meta

FORMAT_DCP, FORMAT_DEEPSPEED = "dcp", "deepspeed"


def checkpoint_format(cfg: DictConfig | dict) -> str:
    name = str(cfg["parallel"]["name"])  # also a saved meta.json's, which may name an option no longer registered
    deepspeed = name in PARALLEL_OPTIONS and parallel_option(name).backend is Backend.DEEPSPEED
    return FORMAT_DEEPSPEED if deepspeed else FORMAT_DCP


def resume_path(cfg: DictConfig, run_dir: str | Path) -> Path | None:
    """The checkpoint trainer.resume names: none, auto (the newest complete one under
    run_dir/checkpoints, None if there is none) or a path."""
    resume = cfg.trainer.resume
    if resume == "none":
        return None
    if resume == "auto":
        return Checkpointer(Path(run_dir) / "checkpoints").latest()
    return Path(resume)


@dataclass
class ResumeCheck:
    """What `check_resume` found: the checkpoint's meta.json and the casts the run asked for."""

    path: Path
    meta: dict[str, Any]
    casts: list[str] = field(default_factory=list)  # "precision.param_dtype: float32 -> bfloat16"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _changed(old: dict[str, Any], new: dict[str, Any], prefix: str) -> list[str]:
    keys = sorted(k for k in old.keys() | new.keys() if k.startswith(prefix) and old.get(k) != new.get(k))
    return [f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys]


@functools.lru_cache(maxsize=8)
def _state_shapes(model_json: str, schema: type, arch: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from memtrain.models import get_spec

    mcfg = OmegaConf.merge(OmegaConf.structured(schema), json.loads(model_json))
    with torch.device("meta"):
        model = get_spec(arch).build_model(mcfg)
    return tuple((name, tuple(t.shape)) for name, t in model.state_dict().items())


def _shape_differences(stored_model: dict, cfg: DictConfig, path: Path) -> list[str]:
    """Parameter and buffer names/shapes that differ between the stored model config and cfg.model."""
    schema = OmegaConf.get_type(cfg.model)
    new_model = to_container(cfg.model)
    try:
        old = dict(_state_shapes(json.dumps(stored_model, sort_keys=True), schema, stored_model.get("arch", "")))
    except (ConfigError, OmegaConfBaseException, TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot resume from {path}: the model config stored in its meta.json is not valid for "
                              f"model.arch={cfg.model.arch} ({' '.join(str(exc).split())[:300]})") from exc
    new = dict(_state_shapes(json.dumps(new_model, sort_keys=True), schema, cfg.model.arch))
    diffs = [f"{n} {list(old[n])} -> {list(new[n])}" for n in old.keys() & new.keys() if old[n] != new[n]]
    diffs += [f"{n} only in the checkpoint" for n in old.keys() - new.keys()]
    diffs += [f"{n} only in this run" for n in new.keys() - old.keys()]
    return sorted(diffs)


def check_resume(path: str | Path, cfg: DictConfig, world_size: int) -> ResumeCheck:
    """Read `path`'s meta.json and compare the stored config with `cfg` (the new run's, on
    `world_size` ranks). Raises CheckpointError naming the checkpoint and every differing key."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"trainer.resume={path}: no such checkpoint folder")
    meta = read_meta(path)
    stored = meta.get("config")
    if not isinstance(stored, dict) or not all(isinstance(stored.get(g), dict) for g in ("model", "precision", "parallel",
                                                                                         "optimizer")):
        raise CheckpointError(f"cannot resume from {path}: its meta.json holds no run config (model, precision, "
                              "parallel, optimizer), so it cannot be checked against this run; it was not written by "
                              "memtrain train, or it was edited")
    old, new = _flat(stored), _flat(to_container(cfg))
    problems: list[str] = []
    casts: list[str] = []

    # the checkpoint's format and, for ZeRO, its partitioning
    old_format, new_format = meta.get("format", checkpoint_format(stored)), checkpoint_format(cfg)
    if old_format != new_format:
        problems.append(f"parallel.name {json.dumps(stored['parallel']['name'])} -> {json.dumps(cfg.parallel.name)} "
                        f"(a {old_format} checkpoint; parallel={cfg.parallel.name} reads {new_format} checkpoints)")
    elif new_format == FORMAT_DEEPSPEED:
        if stored["parallel"]["name"] != cfg.parallel.name:
            problems.append(f"parallel.name {json.dumps(stored['parallel']['name'])} -> {json.dumps(cfg.parallel.name)} "
                            "(ZeRO stages partition the states differently)")
        stored_world = meta.get("world_size")
        if stored_world is None:
            stored_world = len(list(path.glob("rng_rank*.pt")))  # written before meta.json recorded it
        if stored_world != world_size:
            problems.append(f"world size {stored_world} -> {world_size} (ZeRO partitions are per rank: resume on "
                            f"{stored_world} ranks, e.g. launcher.nproc_per_node x launcher.nnodes)")

    # the model's parameters
    model_changes = _changed(old, new, "model.")
    if stored["model"].get("arch") != cfg.model.arch:
        problems += [c for c in model_changes if c.startswith("model.arch ")]
    elif model_changes:
        shapes = _shape_differences(stored["model"], cfg, path)
        if shapes:
            problems.append(f"{'; '.join(model_changes)} (parameters that differ: {'; '.join(shapes[:6])}"
                            f"{f'; and {len(shapes) - 6} more' if len(shapes) > 6 else ''})")
    for key in ("precision.qat", "precision.fp8"):
        problems += [f"{c} (replaces the linear layers)" for c in _changed(old, new, key) if c.split()[0] == key]

    # the optimizer's state
    problems += [f"{c} (its state cannot be loaded into another optimizer)"
                 for c in _changed(old, new, "optimizer._target_")]

    # dtypes
    dtype_keys = ["precision.param_dtype"] + (["precision.compute_dtype"] if new_format == FORMAT_DEEPSPEED else [])
    dtype_changes = [c for key in dtype_keys for c in _changed(old, new, key) if c.split()[0] == key]
    if dtype_changes and new_format == FORMAT_DEEPSPEED:
        problems += [f"{c} (DeepSpeed keeps other optimizer states per precision)" for c in dtype_changes]
    elif dtype_changes and not cfg.trainer.get("resume_cast", False):
        problems += [f"{c} (would cast the weights and optimizer states; pass trainer.resume_cast=true to do so)"
                     for c in dtype_changes]
    else:
        casts += dtype_changes

    if problems:
        raise CheckpointError(f"cannot resume from {path}: it does not match this run: {'; '.join(problems)}. Resume "
                              "with the checkpoint's values for these keys, or start a new run (trainer.resume=none)")
    return ResumeCheck(path, meta, casts)


def describe_casts(path: Path, state: dict[str, Any]) -> str:
    """'N model tensors and M optimizer tensors from float32 to bfloat16': the tensors of `state`
    (a DCP state dict, as the strategy loads it) whose dtype differs from the checkpoint's."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from memtrain.engine.checkpoint import read_dcp_metadata

    stored = {k: v.properties.dtype for k, v in read_dcp_metadata(path).state_dict_metadata.items()
              if isinstance(v, TensorStorageMetadata)}
    counts: dict[tuple[str, str, str], int] = {}
    for key, tensor in _flat_tensors(state).items():
        if key in stored and isinstance(tensor, torch.Tensor) and tensor.dtype != stored[key]:
            group = key.split(".", 1)[0]
            k = (group, str(stored[key]).removeprefix("torch."), str(tensor.dtype).removeprefix("torch."))
            counts[k] = counts.get(k, 0) + 1
    return ", ".join(f"{n} {group} tensors from {a} to {b}" for (group, a, b), n in sorted(counts.items())) or "nothing"


def _flat_tensors(state: dict[str, Any]) -> dict[str, Any]:
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    flat, _ = flatten_state_dict(state)
    return flat
