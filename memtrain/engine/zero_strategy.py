"""DeepSpeedStrategy: DeepSpeed ZeRO stages 1-3 and their offloads (parallel=zero1|zero2|zero3) as
a `memtrain.engine.strategy.Strategy`; the DeepSpeed config, its checkpoint reader and the fixes of
DeepSpeed 0.19.8 it applies are memtrain.distributed.zero's (which describes the checkpoint layout)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import ConfigError
from memtrain.config.parallel import ParallelDims
from memtrain.config.parallel_options import offload_option
from memtrain.distributed.zero import (
    DS_TAG,
    NVME_RESUME,
    _fix_zero3_param_dtype,
    _forget_stale_groups,
    _no_shm_comm_build,
    _safe_checkpoint_engine,
    deepspeed_config,
    load_checkpoint_file,
)
from memtrain.engine.checkpoint import Checkpointer, CheckpointError, read_meta
from memtrain.engine.strategy import activation_context
from memtrain.models.spec import ModelSpec
from memtrain.optim.builder import build_lr_scheduler, build_optimizer
from memtrain.precision.amp import Precision


class _LossScaleView:
    """What the trainer reads from `precision.scaler` (is_enabled, get_scale), answered from
    DeepSpeed's own fp16 loss scaler instead of the unused torch GradScaler."""

    def __init__(self, engine: Any):
        self.engine = engine

    def is_enabled(self) -> bool:
        return bool(self.engine.fp16_enabled())

    def get_scale(self) -> float:
        return float(self.engine.optimizer.loss_scale)


class DeepSpeedStrategy:
    """ZeRO stage 1/2/3 through a DeepSpeed engine (see the module docstring).

    `model` is the DeepSpeedEngine (a module: `engine(inputs)`, `engine.module` the wrapped
    model), `optimizer` DeepSpeed's ZeRO optimizer around memtrain's torch optimizer."""

    def __init__(self, cfg: DictConfig, model: nn.Module, spec: ModelSpec, dims: ParallelDims,
                 precision: Precision, device: torch.device):
        """`dims`: the run's degrees (the Trainer's, resolved once); DeepSpeed shards over its own
        copy of the world group, so ZeRO takes every rank as a data-parallel one."""
        deepspeed = _import_deepspeed(device)
        self.cfg, self.spec, self.precision, self.device = cfg, spec, precision, device
        self.ds_config = _checked_config(cfg, dims, device)
        optimizer = build_optimizer(cfg.optimizer, model, device.type)
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config, dist_init_required=False,
        )
        engine.checkpoint_engine = _safe_checkpoint_engine(engine)
        self.model, self.optimizer = engine, ds_optimizer
        self.module = engine.module
        self.engine = engine
        # over the torch optimizer inside ZeRO's wrapper, whose param groups are the ones it steps
        self.lr_scheduler = build_lr_scheduler(cfg, ds_optimizer.optimizer)
        if engine.fp16_enabled():
            precision.scaler = _LossScaleView(engine)  # the trainer logs DeepSpeed's loss scale

    # -- one step ---------------------------------------------------------------------------------

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor, scale: float | torch.Tensor,
                         sync: bool) -> torch.Tensor:
        engine = self.engine
        engine.set_gradient_accumulation_boundary(sync)
        with activation_context(self.cfg.offload, self.device):
            loss, _ = self.spec.loss_fn(engine(inputs), targets)
        engine.backward(loss * scale, scale_wrt_gas=False)
        return loss.detach().float()

    def step(self) -> tuple[torch.Tensor, bool]:
        engine = self.engine
        if not engine.is_gradient_accumulation_boundary():
            raise RuntimeError("step() after a micro-batch with sync=False: the gradients were not reduced")
        # clips, updates, zeroes the gradients; with a non-finite gradient norm (fp16 overflow, or
        # inf/nan in bf16/fp32) DeepSpeed skips the update, reports the norm as inf and, for fp16,
        # lowers the loss scale
        engine.step()
        norm = engine.get_global_grad_norm()  # DeepSpeed's: a Python float or a tensor
        if not isinstance(norm, torch.Tensor):
            norm = torch.tensor(math.nan if norm is None else norm, dtype=torch.float64, device=self.device)
        return norm, not engine.was_step_applied()

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self, checkpointer: Checkpointer, step: int, meta: dict[str, Any]) -> Path:
        """DeepSpeed's checkpoint of this step, each rank's RNG state, and meta.json, in
        checkpointer.folder/step_<N>/, committed by the checkpointer once every rank is done."""
        if offload_option(self.cfg).uses_nvme and not getattr(self, "_warned_nvme", False):
            warnings.warn(f"writing DeepSpeed's checkpoint, but {NVME_RESUME}", stacklevel=2)
            self._warned_nvme = True
        tmp = checkpointer.begin(step)
        self.engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={"memtrain_step": step}, save_latest=True)
        torch.save(_rng_state(self.device), tmp / f"rng_rank{dist.get_rank():05d}.pt")
        return checkpointer.commit(step, tmp, meta)

    def load(self, checkpointer: Checkpointer, path: Path) -> dict[str, Any]:
        """Restore model, ZeRO optimizer partitions, loss scaler, DeepSpeed's step counters and
        this rank's RNG from a checkpoint written by `save` on as many ranks; a resumed run
        continues with the same losses as one that never stopped.

        Guaranteed: loading never unpickles arbitrary objects. DeepSpeed's own TorchCheckpointEngine
        reads with torch.load(weights_only=False); here the engine's checkpoint engine is replaced
        so every file DeepSpeed reads (model states, each rank's optimizer states) and the RNG files
        go through `load_checkpoint_file`: torch.load(weights_only=True) with five allow-listed
        classes (DeepSpeed's LossScaler and DynamicLossScaler, ZeroStageEnum, fragment_address,
        torch.Size). DeepSpeed's files need no more than that (checked for fp32 and bf16, stages
        1-3, with and without CPU offload); anything else in a file is refused with
        memtrain.safe_pickle.UnsafePickleError, naming the file. Not covered: DeepSpeed's universal-checkpoint loader and the
        zero_to_fp32.py script in the folder (both weights_only=False; memtrain calls neither).

        Not supported, refused with a CheckpointError: another number of ranks (ZeRO partitions
        are per rank; DeepSpeed's universal-checkpoint conversion is not wired in), a DCP
        checkpoint of parallel=single/ddp/fsdp/hsdp, and offload=nvme (see NVME_RESUME)."""
        path = Path(path)
        if offload_option(self.cfg).uses_nvme:
            raise CheckpointError(f"cannot resume from {path}: {NVME_RESUME}")
        meta = read_meta(path)
        if not (path / DS_TAG).is_dir():
            raise CheckpointError(f"{path} is not a DeepSpeed checkpoint (no {DS_TAG}/ folder): another parallel "
                                  f"option wrote it, which parallel={self.cfg.parallel.name} cannot load")
        written_by, world = len(list(path.glob("rng_rank*.pt"))), dist.get_world_size()
        if written_by != world:
            raise CheckpointError(f"{path} was written by {written_by} ranks; ZeRO partitions resume only on as many "
                                  f"ranks, not {world}")
        try:
            load_path, _ = self.engine.load_checkpoint(str(path), tag=DS_TAG, load_lr_scheduler_states=False)
        except (RuntimeError, KeyError, ValueError, AssertionError, IndexError, TypeError) as exc:
            # DeepSpeed's own checks on what it read (sizes, keys, partition counts); files that
            # cannot be read at all raise memtrain.safe_pickle's errors, which name the file
            raise CheckpointError(f"cannot load checkpoint {path}: DeepSpeed refused its contents ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:300]}); it is corrupt or does not fit this run") from exc
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {path}")
        _set_rng_state(load_checkpoint_file(path / f"rng_rank{dist.get_rank():05d}.pt"), self.device)
        return meta


def _import_deepspeed(device: torch.device) -> Any:
    """deepspeed, imported with its accelerator set to `device`'s type. DeepSpeed picks its
    accelerator once, at import, by probing for a GPU; make it the device memtrain trains on (e.g.
    trainer.device=cpu on a machine with a GPU)."""
    os.environ.setdefault("DS_ACCELERATOR", device.type)
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != device.type:
        raise RuntimeError(f"DeepSpeed's accelerator is {get_accelerator().device_name()!r} (DS_ACCELERATOR or "
                           f"an earlier import of deepspeed), but memtrain trains on {device.type!r}")
    return deepspeed


def _checked_config(cfg: DictConfig, dims: ParallelDims, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed config of `cfg` (memtrain.distributed.zero.deepspeed_config) for the run's
    degrees `dims`, after the checks that need DeepSpeed's accelerator, with DeepSpeed 0.19.8's
    fixes applied."""
    from deepspeed.accelerator import get_accelerator

    if dims.dp != dims.world_size:
        raise ConfigError("parallel", f"ZeRO shards over every rank as data-parallel ranks; got dp={dims.dp} "
                                      f"of world size {dims.world_size}")
    if "Adafactor" in str(cfg.optimizer.get("_target_", "")):
        raise ConfigError("optimizer", "ZeRO hands the optimizer flat 1-D shards of the parameters, so "
                                       "Adafactor could not factor its second moment over rows and columns and "
                                       "would silently become another algorithm; use optimizer=adamw with zero*")
    ds_config = deepspeed_config(cfg, dims, device.type)
    if "fp16" in ds_config and not get_accelerator().is_fp16_supported():
        raise ConfigError("precision", f"DeepSpeed has no fp16 support on this {device.type} device (its "
                                       "accelerator reports is_fp16_supported() False); use precision=bf16 or fp32")
    _no_shm_comm_build()
    _fix_zero3_param_dtype()
    _forget_stale_groups()
    return ds_config


def build_partitioned(cfg: DictConfig, spec: ModelSpec, dims: ParallelDims, precision: Precision,
                      device: torch.device) -> nn.Module:
    """The model of `cfg` built inside deepspeed.zero.Init (ZeRO-3 with trainer.init_device=meta):
    each module is constructed as in the eager build, then its parameters are partitioned over the
    ranks as soon as its constructor returns, so no rank ever holds more than one module's whole
    parameters and its partitions of the others (DeepSpeed's way to build a model larger than one
    device, docs "Constructing Massive Models"). Parameters are partitioned on `device`, or on the
    host / NVMe under offload=params_cpu / nvme (the config's offload_param).

    The weights equal the eager build's bit for bit when every rank seeds the same (and DeepSpeed
    broadcasts rank 0's module by module anyway): each module draws in fp32 as eagerly, its
    parameters are cast to the partitions' dtype (bf16/fp16 under those precisions, else
    param_dtype) just before they are partitioned, as DeepSpeed casts a whole model, and the
    floating buffers are cast to param_dtype, as the eager build's model.to(param_dtype). A parent
    module that rewrites its children's weights after they are built must do so through
    Module.apply, which zero.Init gathers module by module (GPT.init_weights does)."""
    deepspeed = _import_deepspeed(device)
    ds_config = _checked_config(cfg, dims, device)
    from deepspeed.accelerator import get_accelerator
    from deepspeed.runtime.zero.partition_parameters import DeepSpeedTensorOverride

    # deepspeed.comm over memtrain's process group, as deepspeed.initialize sets it up (zero.Init
    # reads the world size from it)
    deepspeed.comm.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                                    dist_init_required=False, verbose=False)

    param_dtype = precision.param_dtype
    dtype = torch.bfloat16 if "bf16" in ds_config else torch.float16 if "fp16" in ds_config else param_dtype

    class CastThenPartition(deepspeed.zero.Init):
        def _post_init_method(self, module: nn.Module) -> None:
            for p in module.parameters(recurse=False):
                if not hasattr(p, "ds_id") and p.is_floating_point():
                    p.data = p.data.to(param_dtype).to(dtype)
            super()._post_init_method(module)

    # tensors made on the partitions' device, in the dtype the constructors ask for (DeepSpeed's
    # default would also make every floating tensor in `dtype`, drawing bf16 weights directly)
    with CastThenPartition(config_dict_or_path=ds_config, dtype=dtype,
                           tensor_overrides=[DeepSpeedTensorOverride.device]):
        model = spec.build_model(cfg.model)
    for module in model.modules():
        for name, b in module._buffers.items():
            if b is not None and b.is_floating_point():
                module._buffers[name] = b.to(param_dtype)
    return model


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
