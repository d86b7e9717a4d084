"""DeepSpeed ZeRO stages 1-3 and their offloads (parallel=zero1|zero2|zero3).

The DeepSpeed config is generated from the resolved Hydra config by `deepspeed_config` (never a
hand-kept JSON); `DeepSpeedStrategy` (memtrain.engine.zero_strategy) wraps the model and memtrain's own torch optimizer in a
DeepSpeed engine and implements the `memtrain.engine.strategy.Strategy` protocol:

* forward_backward: no autocast (with bf16/fp16 DeepSpeed casts the model itself), memtrain's
  loss, `engine.backward(loss * scale, scale_wrt_gas=False)`: the trainer's scale already
  normalises the step, so DeepSpeed must not divide by gradient_accumulation_steps again. The
  accumulation boundary is the trainer's `sync` flag, handed to DeepSpeed with
  `engine.set_gradient_accumulation_boundary(sync)` before each micro-batch.
* step: the learning rate is in the optimizer's param groups (the strategy's lr_scheduler, over
  the torch optimizer inside ZeRO's wrapper), `engine.step()` reduces (stage
  1), clips (trainer.grad_clip), updates (or skips on an fp16 overflow) and zeroes the gradients.
* save/load: DeepSpeed's own checkpoint layout (each rank writes its ZeRO partition), written into
  the folder `Checkpointer.begin` gives and made step_<N>/ by `Checkpointer.commit`, the same commit
  routine as DCP's, so `Checkpointer.latest()` / `checkpoints()` find it and a crash at any point of
  the save leaves the last good one:

      step_<N>/meta.json            step and config, as for every memtrain checkpoint
      step_<N>/deepspeed/           DeepSpeed's files (tag "deepspeed"): *_model_states.pt, one
                                    *_optim_states.pt per rank (its ZeRO partition)
      step_<N>/rng_rank<R>.pt       each rank's RNG state
      step_<N>/latest, zero_to_fp32.py, zero_to_torch.py
                                    DeepSpeed's pointer to the tag and its conversion scripts:
                                    `python step_<N>/zero_to_fp32.py step_<N> OUT` gives fp32 weights

Communication uses the process group memtrain already made (gloo on CPU, nccl on CUDA), passed to
DeepSpeed with dist_init_required=False; with only data parallelism (the only kind validated for
zero*) DeepSpeed's data-parallel group is the world group, which equals the mesh's dp ranks.

DeepSpeed 0.19.8 behaviour handled here: its CPU shared-memory all-reduce op (a ~35 s JIT build,
used only for inference) is switched off; its checkpoint loads go through torch.load(weights_only=
True); on accelerators without fp16 (CPU) ZeRO-3 would give NVMe-swapped fp32 parameters bf16
buffers (fixed, see _fix_zero3_param_dtype); fp16 is refused where DeepSpeed has none (CPU);
resuming under offload=nvme is refused (see NVME_RESUME). offload=nvme JIT-builds DeepSpeed's
async_io and pin_memory ops on first use (needs libaio; ~6 min on 2 cores, then cached in
TORCH_EXTENSIONS_DIR); no other option builds anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, as_enum
from memtrain.config.schema import Device, DType
from memtrain.config.parallel_options import PARALLEL_REGISTRY, Backend, Place, offload_option, parallel_option
from memtrain.distributed.mesh import ParallelDims
from memtrain.safe_pickle import torch_load

# the DeepSpeed parallel options and their ZeRO stages (memtrain.config.parallel_options)
STAGES = {o.name: o.zero_stage for o in PARALLEL_REGISTRY if o.backend is Backend.DEEPSPEED}
_DS_DEVICE = {Place.HOST: "cpu", Place.NVME: "nvme"}  # DeepSpeed's offload device names
DS_TAG = "deepspeed"  # DeepSpeed's checkpoint tag: the sub-folder of step_<N>/ with its files
NVME_RESUME = (
    "offload=nvme cannot resume: DeepSpeed 0.19.8's load_checkpoint under NVMe optimizer offload only copies the "
    "swapped tensor files back and skips the ZeRO optimizer file, so the optimizer sub-groups it kept in memory "
    "(tensors under 1 MiB, e.g. every norm weight), the AdamW step counts and the loss scaler restart from "
    "scratch, and a torch optimizer's moments (created lazily at the first step) are not re-registered with the "
    "swapper, so the restored exp_avg/exp_avg_sq files are ignored; the resumed run would silently differ"
)


# ---------------------------------------------------------------------------------------------
# the DeepSpeed config


def _device_type(cfg: DictConfig) -> str:
    device = as_enum(cfg.trainer.device, Device)
    if device is Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.value  # a torch device type


def deepspeed_config(cfg: DictConfig, dims: ParallelDims, device_type: str | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict for a resolved memtrain config with parallel=zero1|zero2|zero3.

    `dims` gives the data-parallel degree (train_batch_size = micro-batch x accumulation x dp);
    `device_type` (default: from trainer.device) decides whether host memory is pinned."""
    name, opt = cfg.parallel.name, parallel_option(cfg)
    if opt.backend is not Backend.DEEPSPEED:
        raise ConfigError("parallel.name", f"DeepSpeed runs only the ZeRO options, got {name!r}", allowed=list(STAGES))
    stage = opt.zero_stage
    t, p, off = cfg.trainer, cfg.precision, cfg.offload
    device_type = device_type or _device_type(cfg)
    pin = bool(off.pin_memory) and device_type == "cuda"  # pinning only means something for a GPU

    zero: dict[str, Any] = {
        "stage": stage,
        # plain, deterministic reductions: no overlap of communication with the backward
        # (a CUDA-stream feature), gradients copied into one contiguous buffer
        "overlap_comm": False,
        "contiguous_gradients": True,
        "round_robin_gradients": False,
    }
    where = offload_option(cfg)
    if where.optimizer is not Place.DEVICE:
        zero["offload_optimizer"] = {"device": _DS_DEVICE[where.optimizer], "pin_memory": pin}
    if where.params is not Place.DEVICE:
        if not opt.shards_params:
            raise ConfigError("offload.name", f"offload={off.name} offloads parameters, which needs ZeRO stage 3 "
                                              f"(parallel=zero3), got parallel={name}")
        zero["offload_param"] = {"device": _DS_DEVICE[where.params], "pin_memory": pin}
    for section, place in (("offload_optimizer", where.optimizer), ("offload_param", where.params)):
        if place is Place.NVME:
            zero[section]["nvme_path"] = str(Path(off.nvme_path).expanduser().absolute())
    if stage == 3:
        # keep every parameter partitioned between uses (no persistence of small parameters), so the
        # stage-3 path is what runs, also for a tiny test model
        zero["stage3_param_persistence_threshold"] = 0

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(t.micro_batch_size),
        "gradient_accumulation_steps": int(t.grad_accum),
        "train_batch_size": int(t.micro_batch_size) * int(t.grad_accum) * dims.dp,
        "gradient_clipping": float(t.grad_clip),  # 0.0: no clipping
        "zero_optimization": zero,
        # memtrain builds the optimizer (optimizer group, torch.optim); DeepSpeed must take it as
        # is, also with offload_optimizer (default would insist on its own C++ DeepSpeedCPUAdam)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # memtrain logs; keep DeepSpeed's progress report quiet
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "Fail"},  # every rank must write the same tag
    }
    compute = as_enum(p.compute_dtype, DType)
    if compute is DType.bfloat16:
        # bf16 model copy, fp32 master weights and optimizer states inside ZeRO's partitions
        # (also for param_dtype=bfloat16, which in memtrain's own strategies means no fp32 copy)
        # a non-finite gradient norm skips the step, as for fp16 and memtrain's own strategies
        config["bf16"] = {"enabled": True, "check_grad_overflow": True}
    elif compute is DType.float16:
        config["fp16"] = _fp16_section(p)
    return config


def _fp16_section(p: DictConfig) -> dict[str, Any]:
    """fp16 with dynamic loss scaling, the same schedule as torch's GradScaler: start at
    init_scale, halve on every overflow (hysteresis 1), double after growth_interval clean steps.
    DeepSpeed's scale factor is fixed at 2 both ways and its initial scale is a power of two."""
    power = math.log2(p.init_scale)
    if power != int(power):
        raise ConfigError("precision.init_scale", f"DeepSpeed's initial loss scale is a power of two "
                                                  f"(fp16.initial_scale_power), got {p.init_scale}")
    if p.growth_factor != 2.0 or p.backoff_factor != 0.5:
        raise ConfigError("precision.growth_factor",
                          "DeepSpeed's dynamic loss scaler multiplies by 2 and divides by 2; "
                          f"got growth_factor={p.growth_factor}, backoff_factor={p.backoff_factor}")
    return {
        "enabled": True,
        "loss_scale": 0,  # 0: dynamic
        "initial_scale_power": int(power),
        "loss_scale_window": int(p.growth_interval),
        "hysteresis": 1,
        "consecutive_hysteresis": False,
        "min_loss_scale": 1,
    }


# ---------------------------------------------------------------------------------------------
# safe checkpoint loading


def _allowed_checkpoint_globals() -> list[Any]:
    """The classes DeepSpeed's checkpoint files are made of, besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [DynamicLossScaler, LossScaler, ZeroStageEnum, fragment_address, torch.Size]


def load_checkpoint_file(path: str | Path, map_location: Any = None) -> Any:
    """One DeepSpeed checkpoint file through memtrain.safe_pickle.torch_load: torch's weights-only
    loader with the allow-listed DeepSpeed classes added; a file naming anything else (which
    unpickling would import and call) raises UnsafePickleError, a damaged one CorruptFileError."""
    return torch_load(path, _allowed_checkpoint_globals(), map_location=map_location)


def _safe_checkpoint_engine(engine: Any) -> Any:
    """The engine's checkpoint engine (DeepSpeed's plain torch one, as the generated config asks)
    with `load_checkpoint_file` for its load, which DeepSpeed does with weights_only=False."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
        TorchCheckpointEngine,
    )

    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise RuntimeError(f"expected DeepSpeed's TorchCheckpointEngine, got {type(engine.checkpoint_engine).__name__}")

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return load_checkpoint_file(path, map_location)

    return SafeTorchCheckpointEngine(engine._config)


# ---------------------------------------------------------------------------------------------
# the strategy


def _no_shm_comm_build() -> None:
    """DeepSpeed's torch comm backend JIT-builds a shared-memory all-reduce op on CPU (~35 s of
    C++ compilation) that only `inference_all_reduce` uses; training reduces through the torch
    process group. Mark the op incompatible so it is neither built nor loaded (DeepSpeed keeps
    this probe's dict for the life of the process and reads it before building)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _forget_stale_groups() -> None:
    """DeepSpeed caches process groups in module globals (deepspeed.utils.groups, e.g. its clone of
    the world group) for the life of the process. After an earlier process group was destroyed in
    this process (a second Trainer, a test), those point at groups torch no longer knows, and
    deepspeed.initialize fails with "Group ... is not registered". Drop every cached group that
    is not one of the current process group's."""
    from deepspeed.utils import groups
    from torch.distributed.distributed_c10d import _world

    live = set(_world.pg_group_ranks)
    for name, value in list(vars(groups).items()):
        if name.isupper() and name.endswith("_GROUP") and value is not None:
            cached = value.values() if isinstance(value, dict) else [value]
            if any(isinstance(g, dist.ProcessGroup) and g not in live for g in cached):
                setattr(groups, name, {} if isinstance(value, dict) else None)


def _fix_zero3_param_dtype() -> None:
    """DeepSpeed 0.19.8 bug on accelerators without fp16 (the CPU one): zero.Init's _set_dtype reads
    `dtype or torch.float16 if fp16_supported else torch.bfloat16 ...`, which by precedence ignores
    the model's dtype there, so ZeRO-3 partitions an fp32 model with bf16 NVMe swap buffers and
    offload=nvme rounds every swapped parameter to bf16. Honour an explicit dtype, as DeepSpeed
    does on GPUs; without one its own rule stays."""
    from deepspeed.runtime.zero.partition_parameters import (
        InsertPostInitMethodToModuleSubClasses as Base,
    )

    original = Base._set_dtype
    if getattr(original, "_memtrain_fixed", False):
        return

    def _set_dtype(self, ds_config, dtype):
        original(self, ds_config, dtype)
        if dtype is not None:
            self.dtype = dtype

    _set_dtype._memtrain_fixed = True
    Base._set_dtype = _set_dtype
