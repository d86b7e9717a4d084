"""DeepSpeed ZeRO stages 1-3 and their offloads (parallel=zero1|zero2|zero3).

The DeepSpeed config is generated from the resolved Hydra config by `deepspeed_config` (never a
hand-kept JSON); `DeepSpeedStrategy` wraps the model and memtrain's own torch optimizer in a
DeepSpeed engine and implements the `memtrain.engine.strategy.Strategy` protocol:

* forward_backward: no autocast (with bf16/fp16 DeepSpeed casts the model itself), memtrain's
  loss, `engine.backward(loss * scale, scale_wrt_gas=False)`: the trainer's scale already
  normalises the step, so DeepSpeed must not divide by gradient_accumulation_steps again. The
  accumulation boundary is the trainer's `sync` flag, handed to DeepSpeed with
  `engine.set_gradient_accumulation_boundary(sync)` before each micro-batch.
* step: the learning rate goes into the optimizer's param groups, `engine.step()` reduces (stage
  1), clips (trainer.grad_clip), updates (or skips on an fp16 overflow) and zeroes the gradients.
* save/load: DeepSpeed's own checkpoint layout (each rank writes its ZeRO partition), written into
  a temporary folder and renamed to step_<N>/ with meta.json only when every rank is done, so
  `Checkpointer.latest()` / `checkpoints()` find it and a crash mid-save leaves the last good one.

Communication uses the process group memtrain already made (gloo on CPU, nccl on CUDA), passed to
DeepSpeed with dist_init_required=False; with only data parallelism (the only kind validated for
zero*) DeepSpeed's data-parallel group is the world group, which equals the mesh's dp ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from memtrain.config.errors import ConfigError, enum_names
from memtrain.distributed.mesh import ParallelDims
from memtrain.engine.checkpoint import _TMP_PREFIX, Checkpointer, CheckpointError, _fsync_dir, _fsync_tree
from memtrain.engine.strategy import activation_context
from memtrain.models.spec import ModelSpec
from memtrain.optim.builder import build_optimizer
from memtrain.precision.amp import Precision

STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
_MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file of the (dp rank 0) module state


# ---------------------------------------------------------------------------------------------
# the DeepSpeed config


def _device_type(cfg: DictConfig) -> str:
    name = enum_names(cfg.trainer.device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def deepspeed_config(cfg: DictConfig, dims: ParallelDims, device_type: str | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict for a resolved memtrain config with parallel=zero1|zero2|zero3.

    `dims` gives the data-parallel degree (train_batch_size = micro-batch x accumulation x dp);
    `device_type` (default: from trainer.device) decides whether host memory is pinned."""
    name = cfg.parallel.name
    if name not in STAGES:
        raise ConfigError("parallel.name", f"DeepSpeed runs only the ZeRO options, got {name!r}", allowed=list(STAGES))
    stage = STAGES[name]
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
    if off.name in ("optimizer_cpu", "nvme"):
        zero["offload_optimizer"] = {"device": "cpu" if off.name == "optimizer_cpu" else "nvme", "pin_memory": pin}
    if off.name in ("params_cpu", "nvme"):
        if stage != 3:
            raise ConfigError("offload.name", f"offload={off.name} offloads parameters, which needs ZeRO stage 3 "
                                              f"(parallel=zero3), got parallel={name}")
        zero["offload_param"] = {"device": "cpu" if off.name == "params_cpu" else "nvme", "pin_memory": pin}
    if off.name == "nvme":
        nvme_path = str(Path(off.nvme_path).expanduser().absolute())
        zero["offload_optimizer"]["nvme_path"] = nvme_path
        zero["offload_param"]["nvme_path"] = nvme_path
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
    compute = enum_names(p.compute_dtype)
    if compute == "bfloat16":
        # bf16 model copy, fp32 master weights and optimizer states inside ZeRO's partitions
        config["bf16"] = {"enabled": True}
    elif compute == "float16":
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
        raise ConfigError("precision.growth_factor", "DeepSpeed's dynamic loss scaler multiplies by 2 and divides by 2; "
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

    return [DynamicLossScaler, LossScaler, torch.Size]


def _safe_checkpoint_engine(ds_config: Any):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine with torch.load(weights_only=True): tensors,
        containers and the few allow-listed DeepSpeed classes, never arbitrary code."""

        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_allowed_checkpoint_globals()):
                try:
                    return torch.load(path, map_location=map_location, weights_only=True)
                except Exception as exc:  # UnpicklingError, or a file that is not a checkpoint
                    raise CheckpointError(f"refusing to load {path}: {exc}") from exc

    return SafeTorchCheckpointEngine(ds_config)


# ---------------------------------------------------------------------------------------------
# the strategy


def _no_shm_comm_build() -> None:
    """DeepSpeed's torch comm backend JIT-builds a shared-memory all-reduce op on CPU (~35 s of
    C++ compilation) that only `inference_all_reduce` uses; training reduces through the torch
    process group. Mark the op incompatible so it is neither built nor loaded (DeepSpeed keeps
    this probe's dict for the life of the process and reads it before building)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


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

    def __init__(self, cfg: DictConfig, model: nn.Module, spec: ModelSpec, mesh: Any,
                 precision: Precision, device: torch.device):
        import deepspeed

        self.cfg, self.spec, self.precision, self.device = cfg, spec, precision, device
        if not dist.is_initialized():
            raise RuntimeError("DeepSpeed needs a process group; memtrain makes one for every zero* run")
        dims = ParallelDims.from_config(cfg.parallel, dist.get_world_size())
        if dims.dp != dims.world_size:
            raise ConfigError("parallel", f"ZeRO shards over every rank as data-parallel ranks; got dp={dims.dp} "
                                          f"of world size {dims.world_size}")
        if "Adafactor" in str(cfg.optimizer.get("_target_", "")):
            raise ConfigError("optimizer", "ZeRO hands the optimizer flat 1-D shards of the parameters, so Adafactor "
                                           "could not factor its second moment over rows and columns and would silently "
                                           "become another algorithm; use optimizer=adamw with parallel=zero*")
        self.ds_config = deepspeed_config(cfg, dims, device.type)
        _no_shm_comm_build()
        optimizer = build_optimizer(cfg.optimizer, model, device.type)
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config, dist_init_required=False,
        )
        engine.checkpoint_engine = _safe_checkpoint_engine(engine._config)
        self.model, self.optimizer = engine, ds_optimizer
        self.engine = engine
        if engine.fp16_enabled():
            precision.scaler = _LossScaleView(engine)  # the trainer logs DeepSpeed's loss scale

    # -- one step ---------------------------------------------------------------------------------

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor, scale: float, sync: bool) -> torch.Tensor:
        engine = self.engine
        engine.set_gradient_accumulation_boundary(sync)
        with activation_context(self.cfg.offload, self.device):
            loss, _ = self.spec.loss_fn(engine(inputs), targets)
        engine.backward(loss * scale, scale_wrt_gas=False)
        return loss.detach().float()

    def step(self, lr: float) -> tuple[float, bool]:
        engine = self.engine
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        engine.set_gradient_accumulation_boundary(True)
        engine.step()  # clips, updates (skipped on fp16 overflow), zeroes the gradients
        norm = engine.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else math.nan
        skipped = not engine.was_step_applied() or not math.isfinite(grad_norm)
        return grad_norm, skipped

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self, checkpointer: Checkpointer, step: int, meta: dict[str, Any]) -> Path:
        """DeepSpeed's checkpoint of this step, each rank's RNG state, and meta.json, in
        checkpointer.folder/step_<N>/, renamed into place only once complete."""
        folder = checkpointer.folder
        name = f"step_{step:08d}"
        tag = f"{_TMP_PREFIX}{name}"
        tmp, final = folder / tag, folder / name
        rank, main = dist.get_rank(), dist.get_rank() == 0
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        self.engine.save_checkpoint(str(folder), tag=tag, client_state={"memtrain_step": step}, save_latest=False)
        torch.save(_rng_state(self.device), tmp / f"rng_rank{rank:05d}.pt")
        dist.barrier()
        if main:
            (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
            _fsync_tree(tmp)
            if final.exists():  # re-saving the same step
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(folder)
            checkpointer._prune()
        dist.barrier()
        return final

    def load(self, checkpointer: Checkpointer, path: Path) -> dict[str, Any]:
        """Restore model, ZeRO optimizer partitions, loss scaler, DeepSpeed's step counters and
        this rank's RNG from a checkpoint written by `save` with the same world size.

        Guaranteed: every file is read with torch.load(weights_only=True), admitting only tensors,
        plain containers/scalars and DeepSpeed's loss-scaler classes, so loading never runs code
        from the checkpoint. Not guaranteed: resuming on another number of ranks (ZeRO partitions
        are per rank; DeepSpeed's universal-checkpoint conversion is not wired in), and loading a
        DCP checkpoint of parallel=single/ddp/fsdp (refused with a CheckpointError)."""
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise CheckpointError(f"{path} is not a complete memtrain checkpoint (no meta.json)")
        if not (path / _MODEL_STATES).is_file():
            raise CheckpointError(f"{path} is not a DeepSpeed checkpoint (no {_MODEL_STATES}); it was written by "
                                  f"another parallel option and cannot be loaded with parallel={self.cfg.parallel.name}")
        load_path, _ = self.engine.load_checkpoint(str(path.parent), tag=path.name, load_lr_scheduler_states=False)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {path}")
        rank = dist.get_rank()
        rng_file = path / f"rng_rank{rank:05d}.pt"
        if not rng_file.is_file():
            raise CheckpointError(f"{rng_file} is missing: checkpoints resume on the world size that wrote them")
        _set_rng_state(torch.load(rng_file, weights_only=True), self.device)
        return json.loads(meta_file.read_text())


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
