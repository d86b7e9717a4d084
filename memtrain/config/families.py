"""The model families memtrain knows, and what each declares it supports, without importing them;
and the registry of their ModelSpecs, which `get_spec` fills by importing the one family asked for.
Part of the config layer (validation reads it); memtrain.models.family and memtrain.models.spec
re-export it.

Each family's folder holds a light `family.py` (no torch, no model code) with a tuple `FAMILIES`
of `Family` entries: the `model.arch` it answers to, the module whose import registers its
ModelSpec, and the model-parallel mesh dimensions its ModelSpec implements. This table is read by
validation, the estimator, the planner and `get_spec` (which imports only the family asked for),
so a config error or `memtrain estimate` never imports the other families' models.

Model-parallel dimensions (memtrain.distributed.mesh.DIMS less the data-parallel ones):

    tp       Megatron tensor parallelism (parallel.tp; with parallel.tp_sp, Megatron sequence parallelism)
    cp       context parallelism: the sequence split over ranks, attention by Ulysses or Ring (parallel.cp_impl)
    dap      Dynamic Axial Parallelism (FastFold): AlphaFold's MSA and pair representations split along an axis
    spatial  a sample's latitude grid split in slabs (weather models)
    pp       pipeline parallelism: the blocks split into stages (the ModelSpec's pipeline_fn)

A degree above 1 on a dimension the model's family does not declare is refused (ConfigError naming
parallel.<dim> and model.arch) before any process starts: a model that ignores a mesh dimension
would have its ranks repeat each other's work while the estimator divided the memory by them.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from memtrain.config.errors import ConfigError

# the model families are found by name, like plugins: memtrain.models.<folder>.family, each imported
# only when the table is first read (the config layer imports no model package at load time)
MODELS_PACKAGE = "memtrain.models"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

MODEL_PARALLEL_DIMS = {
    "tp": "tensor parallelism",
    "cp": "context (sequence) parallelism, Ulysses or Ring",
    "dap": "Dynamic Axial Parallelism",
    "spatial": "spatial parallelism of the latitude grid",
    "pp": "pipeline parallelism",
}


@dataclass(frozen=True)
class Family:
    """One `model.arch`: `spec_module` registers its ModelSpec when imported; `model_parallel` are
    the model-parallel dimensions (keys of MODEL_PARALLEL_DIMS) that ModelSpec implements; `schema`
    its config dataclass (conf/model/<option>.yaml starts from /schema/model/<arch>)."""

    arch: str
    spec_module: str
    model_parallel: tuple[str, ...] = ()
    schema: type | None = None  # the model config dataclass (a memtrain.config.schema.ModelConfig), /schema/model/<arch>

    def __post_init__(self) -> None:
        unknown = [d for d in self.model_parallel if d not in MODEL_PARALLEL_DIMS]
        if unknown:
            raise ValueError(f"family {self.arch!r} declares unknown model-parallel dimensions {unknown} "
                             f"(known: {', '.join(MODEL_PARALLEL_DIMS)})")


_FAMILIES: dict[str, Family] | None = None


def families() -> dict[str, Family]:
    """Every family, by arch: the `FAMILIES` of each memtrain/models/<folder>/family.py."""
    global _FAMILIES
    if _FAMILIES is None:
        found: dict[str, Family] = {}
        for info in sorted(pkgutil.iter_modules([str(MODELS_DIR)]), key=lambda i: i.name):
            if not info.ispkg or not (MODELS_DIR / info.name / "family.py").is_file():
                continue
            for fam in importlib.import_module(f"{MODELS_PACKAGE}.{info.name}.family").FAMILIES:
                if fam.arch in found:
                    raise ValueError(f"model.arch {fam.arch!r} is declared twice ({found[fam.arch].spec_module}, "
                                     f"{fam.spec_module})")
                found[fam.arch] = fam
        _FAMILIES = found
    return _FAMILIES


def family(arch: str) -> Family:
    """The family of `model.arch`; ConfigError('model.arch') listing the known ones otherwise."""
    known = families()
    if arch not in known:
        raise ConfigError("model.arch", f"unknown model architecture {arch!r}", allowed=sorted(known))
    return known[arch]


def supporting(dim: str) -> list[str]:
    """The archs whose family declares model-parallel dimension `dim`."""
    return sorted(a for a, f in families().items() if dim in f.model_parallel)


def check_model_parallel(arch: str, degrees: Mapping[str, int]) -> None:
    """Refuse a degree above 1 on a model-parallel dimension `arch` does not declare.

    degrees: resolved degree per mesh dimension (e.g. vars of a ParallelDims); dimensions that are
    not model-parallel (dp_replicate, dp_shard, world_size) are ignored. Raises ConfigError at
    parallel.<dim>, naming model.arch, the dimensions it supports and the archs that support <dim>."""
    fam = family(arch)
    for dim, what in MODEL_PARALLEL_DIMS.items():
        degree = int(degrees.get(dim, 1))
        if degree > 1 and dim not in fam.model_parallel:
            others = supporting(dim)
            raise ConfigError(
                f"parallel.{dim}",
                f"model.arch={arch} does not support parallel.{dim} ({what}), which is {degree} here: its model "
                f"would not be split over those ranks. model.arch={arch} supports "
                f"{', '.join(f'parallel.{d}' for d in fam.model_parallel) or 'no model-parallel dimension'}; set "
                f"parallel.{dim}=1 (another parallel option) or use a model.arch that supports it",
                allowed=others or ["none"], allowed_label=f"model.arch with parallel.{dim}")


def model_parallel_degrees(arch: str, dims: object) -> dict[str, int]:
    """{model-parallel dim: degree} of a ParallelDims-like `dims` for `arch`, after
    check_model_parallel: the degree of every dimension the family declares, 1 for the others."""
    values = {d: int(getattr(dims, d, 1)) for d in MODEL_PARALLEL_DIMS}
    check_model_parallel(arch, values)
    return values


# -- the ModelSpec registry ----------------------------------------------------------------------

_REGISTRY: dict[str, Any] = {}  # arch -> memtrain.models.spec.ModelSpec


def register_spec(spec: Any) -> Any:
    """Register `spec` (a memtrain.models.spec.ModelSpec) under its arch. Raises ValueError where
    the family's declaration (its family.py) and the spec disagree: a declared dimension needs `parallelize`
    (or `pipeline_fn` for "pp"), and a `pipeline_fn` needs "pp" declared."""
    dims = spec.model_parallel
    if any(d != "pp" for d in dims) and spec.parallelize is None:
        raise ValueError(f"model.arch={spec.arch} declares {dims} but its ModelSpec has no parallelize")
    if ("pp" in dims) != (spec.pipeline_fn is not None):
        raise ValueError(f"model.arch={spec.arch}: 'pp' declared {'pp' in dims}, pipeline_fn set "
                         f"{spec.pipeline_fn is not None}; they must agree")
    _REGISTRY[spec.arch] = spec
    return spec


def get_spec(arch: str) -> Any:
    """The ModelSpec of `model.arch`, importing its family's spec module (and no other family's).
    Raises ConfigError('model.arch') for an arch no family declares."""
    module = family(arch).spec_module
    if arch not in _REGISTRY:
        importlib.import_module(module)
    if arch not in _REGISTRY:
        raise ValueError(f"importing {module} registered no ModelSpec for model.arch={arch}")
    return _REGISTRY[arch]
