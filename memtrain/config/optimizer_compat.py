"""Which optimizers run with which parallel and precision options, checked before anything starts
(called from memtrain.config.validate; re-exported by memtrain.optim.compat)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch
from omegaconf import DictConfig

from memtrain.config.errors import as_enum, require
from memtrain.config.parallel_options import PARALLEL_REGISTRY, offload_option, parallel_option
from memtrain.config.schema import DType

# need a parameter's whole shape (factored or per-block statistics): DeepSpeed's ZeRO hands the
# optimizer flat 1-D partitions, on which they would silently become another algorithm
SHAPE_AWARE = ("Adafactor", "SM3", "CAME", "AdamMini")
ZEROTH_ORDER = ("MeZO",)
CONF_OPTIMIZERS = Path(__file__).resolve().parents[2] / "conf" / "optimizer"


def optimizer_name(cfg: DictConfig) -> str:
    return str(cfg.optimizer.get("_target_", "")).rpartition(".")[2]


def optimizer_class(cfg: DictConfig) -> type:
    """The class optimizer._target_ names; ConfigError when it is not an importable torch optimizer."""
    target = str(cfg.optimizer._target_)
    module, _, name = target.rpartition(".")
    options = sorted(p.stem for p in CONF_OPTIMIZERS.glob("*.yaml"))
    loaded = None
    if module and all(part.isidentifier() for part in target.split(".")):
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            pass
    require(loaded is not None, "optimizer._target_", f"{target!r} is not an importable class (no module {module!r})",
            allowed=[f"optimizer={o}" for o in options], allowed_label="Choose an optimizer option")
    cls = getattr(loaded, name, None)
    require(isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer), "optimizer._target_",
            f"{target!r} is not a torch.optim.Optimizer subclass", allowed=[f"optimizer={o}" for o in options],
            allowed_label="Choose an optimizer option")
    return cls


def validate_optimizer(cfg: DictConfig) -> None:
    name, parallel, opt = optimizer_name(cfg), cfg.parallel.name, parallel_option(cfg)
    target = cfg.optimizer._target_
    if target.startswith("bitsandbytes."):
        require(importlib.util.find_spec("bitsandbytes") is not None, "optimizer",
                "optimizer=adamw_8bit needs bitsandbytes (pip install bitsandbytes)")
    # bitsandbytes is checked by find_spec only: importing it probes CUDA and prints warnings
    cls = None if target.startswith("bitsandbytes.") else optimizer_class(cfg)
    pure_bf16 = as_enum(cfg.precision.param_dtype, DType) is DType.bfloat16
    stochastic = getattr(cls, "updates_bf16_params_stochastically", False) and cfg.optimizer.get("stochastic_rounding", True)
    # DeepSpeed keeps fp32 master weights inside ZeRO's partitions, whatever the model's dtype
    require(not pure_bf16 or stochastic or opt.flat_partitions or name in ZEROTH_ORDER, "optimizer",
            f"precision.param_dtype=bfloat16 keeps no float32 master copy of the weights, and {target} updates them "
            "with round-to-nearest, which drops every update smaller than half a bfloat16 ulp of its weight "
            "(one step at lr 1e-4 leaves most weights unchanged); use optimizer=adamw_bf16 (stochastic rounding "
            "of the weights and moments) to train in pure bfloat16, or precision.param_dtype=float32 with "
            "precision=bf16 autocast", allowed=["optimizer=adamw_bf16", "precision.param_dtype=float32"],
            allowed_label="Use")
    require(not (name in SHAPE_AWARE and opt.flat_partitions), "optimizer",
            f"{target} keeps statistics over rows, columns or heads of each parameter, but parallel={parallel} "
            "(DeepSpeed ZeRO) hands the optimizer flat 1-D partitions; use parallel=fsdp (FSDP2 keeps the "
            "shapes) or an elementwise optimizer (adamw, adamw_bf16, adamw_8bit, lion) with zero*")
    if target.startswith("bitsandbytes."):
        require(not opt.fsdp, "optimizer",
                f"bitsandbytes' 8-bit optimizers work on plain tensors, not on FSDP2's DTensor shards "
                f"(parallel={parallel}); use parallel=ddp or zero1/zero2/zero3")
    if name in ZEROTH_ORDER:
        runs = [o.name for o in PARALLEL_REGISTRY if o.zeroth_order]
        require(opt.zeroth_order, "parallel",
                f"optimizer=mezo perturbs whole replicated parameters in place; it runs with parallel="
                f"{' or '.join(runs)}, not parallel={parallel}", allowed=runs)
        require(not cfg.precision.loss_scaling, "precision.loss_scaling",
                "optimizer=mezo has no backward pass, so fp16 loss scaling has nothing to scale; use precision=fp32 or bf16")
        require(as_enum(cfg.precision.param_dtype, DType) is DType.float32, "precision.param_dtype",
                "optimizer=mezo adds lr * g * z to the parameters in place; in bfloat16 those small steps round away")
        require(not offload_option(cfg).model_states_offloaded, "offload.name",
                f"optimizer=mezo keeps no gradients or optimizer states to offload (offload={cfg.offload.name})")
        require(cfg.optimizer.eps > 0, "optimizer.eps", f"the perturbation scale must be positive, got {cfg.optimizer.eps}")
