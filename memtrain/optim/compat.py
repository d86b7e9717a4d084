"""Which optimizers run with which parallel and precision options, checked before anything starts
(called from memtrain.config.validate)."""

from __future__ import annotations

import importlib.util

from omegaconf import DictConfig

from memtrain.config.errors import enum_names, require

# need a parameter's whole shape (factored or per-block statistics): DeepSpeed's ZeRO hands the
# optimizer flat 1-D partitions, on which they would silently become another algorithm
SHAPE_AWARE = ("Adafactor", "SM3", "CAME", "AdamMini")
ZEROTH_ORDER = ("MeZO",)


def optimizer_name(cfg: DictConfig) -> str:
    return str(cfg.optimizer.get("_target_", "")).rpartition(".")[2]


def validate_optimizer(cfg: DictConfig) -> None:
    name, parallel = optimizer_name(cfg), cfg.parallel.name
    target = cfg.optimizer._target_
    require(not (name in SHAPE_AWARE and parallel.startswith("zero")), "optimizer",
            f"{target} keeps statistics over rows, columns or heads of each parameter, but parallel={parallel} "
            "(DeepSpeed ZeRO) hands the optimizer flat 1-D partitions; use parallel=fsdp (FSDP2 keeps the "
            "shapes) or an elementwise optimizer (adamw, adamw_bf16, adamw_8bit, lion) with zero*")
    if target.startswith("bitsandbytes."):
        require(importlib.util.find_spec("bitsandbytes") is not None, "optimizer",
                "optimizer=adamw_8bit needs bitsandbytes (pip install bitsandbytes)")
        require(parallel not in ("fsdp", "hsdp"), "optimizer",
                f"bitsandbytes' 8-bit optimizers work on plain tensors, not on FSDP2's DTensor shards "
                f"(parallel={parallel}); use parallel=ddp or zero1/zero2/zero3")
    if name in ZEROTH_ORDER:
        require(parallel in ("single", "ddp"), "parallel",
                f"optimizer=mezo perturbs whole replicated parameters in place; it runs with parallel=single or ddp, "
                f"not parallel={parallel}", allowed=["single", "ddp"])
        require(not cfg.precision.loss_scaling, "precision.loss_scaling",
                "optimizer=mezo has no backward pass, so fp16 loss scaling has nothing to scale; use precision=fp32 or bf16")
        require(enum_names(cfg.precision.param_dtype) == "float32", "precision.param_dtype",
                "optimizer=mezo adds lr * g * z to the parameters in place; in bfloat16 those small steps round away")
        require(cfg.offload.name in ("none", "activations_cpu"), "offload.name",
                f"optimizer=mezo keeps no gradients or optimizer states to offload (offload={cfg.offload.name})")
        require(cfg.optimizer.eps > 0, "optimizer.eps", f"the perturbation scale must be positive, got {cfg.optimizer.eps}")
