"""How one optimizer step runs for each parallel option: the wrapped model, the optimizer, the
backward and the update, and how their state is checkpointed. Chosen once from `parallel.name`.

TorchStrategy covers single, ddp, fsdp and hsdp (torch modules and optimizers, DCP checkpoints);
memtrain.engine.zero_strategy.DeepSpeedStrategy covers zero1/2/3.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from memtrain.config.parallel import ParallelDims
from memtrain.config.parallel_options import Backend, DataParallel, Place, offload_option, parallel_option
from memtrain.engine.checkpoint import Checkpointer, read_dcp_metadata
from memtrain.engine.metrics import MetricMeans
from memtrain.models.spec import ModelSpec
from memtrain.optim.builder import WarmupDecayLR, build_lr_scheduler, build_optimizer
from memtrain.precision.amp import Precision


class Strategy(Protocol):
    model: nn.Module  # what the forward runs (wrapped: DDP, FSDP, a DeepSpeed engine)
    module: nn.Module  # the unwrapped model (this rank's stages under pipeline parallelism)
    optimizer: Any  # the optimizer the strategy steps (under DeepSpeed: its ZeRO wrapper)
    lr_scheduler: WarmupDecayLR  # sets the lr of `optimizer`'s param groups; stepped per applied update

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor, scale: float | torch.Tensor,
                         sync: bool) -> torch.Tensor:
        """Forward, loss and backward of (loss * scale); returns the detached summed loss. With
        sync=False (all but the last micro-batch of a step) gradients are only accumulated.
        `scale`: a Python float or a 0-dim float32 tensor on the device."""

    def step(self) -> tuple[torch.Tensor, bool]:
        """Clip, update with the param groups' learning rate (set by `lr_scheduler`) and zero the
        gradients; (gradient norm before clipping, a 0-dim tensor on the device; skipped). Skipped
        is read on the host: a non-finite gradient norm skips the update."""

    def save(self, checkpointer: Checkpointer, step: int, meta: dict[str, Any]) -> Path: ...

    def load(self, checkpointer: Checkpointer, path: Path) -> dict[str, Any]: ...


def activation_context(offload: DictConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """offload=activations_cpu: tensors saved for backward go to (pinned) host memory."""
    if offload_option(offload).activations is not Place.HOST:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=offload.pin_memory and device.type == "cuda")


class TorchStrategy:
    def __init__(self, cfg: DictConfig, model: nn.Module, spec: ModelSpec, mesh: DeviceMesh,
                 precision: Precision, device: torch.device,
                 materialize: Callable[[nn.Module], None] | None = None):
        """`materialize`: for a model built on the meta device (trainer.init_device=meta), called
        with the wrapped model after the sharding, before the optimizer is built."""
        self.cfg, self.spec, self.precision, self.device, self.mesh = cfg, spec, precision, device, mesh
        self.module = model  # unwrapped
        opt = parallel_option(cfg)
        # memtrain.engine.parallelize applied the model-specific parallelism (TP, SP, AlphaFold's DAP),
        # activation checkpointing and regional compilation; data parallelism wraps last, here
        if opt.data_parallel is DataParallel.REPLICATE or (opt.data_parallel is DataParallel.NONE and "dp_replicate" in opt.dp_dims
                                                          and mesh["dp_replicate"].size() > 1):
            from memtrain.distributed.ddp import apply_ddp

            model = apply_ddp(model, mesh, device)
        elif opt.fsdp:
            from memtrain.distributed.fsdp import apply_fsdp

            model = apply_fsdp(
                model, spec.blocks(model), mesh,
                param_dtype=precision.compute_dtype, reduce_dtype=torch.float32,
                reshard_after_forward=cfg.parallel.reshard_after_forward,
                cpu_offload=offload_option(cfg).params is Place.HOST, pin_memory=cfg.offload.pin_memory and device.type == "cuda",
            )
        if materialize is not None:
            materialize(model)
        self.model = model
        self.optimizer = build_optimizer(cfg.optimizer, model, device.type)
        self.lr_scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.metric_fn = spec.metrics(cfg) if spec.metrics is not None else None
        self.extra_metrics = MetricMeans()
        # the family's own gradient reduction (e.g. DAP's partial sums), where this run splits a
        # dimension the family implements: decided once, not by slicing the mesh at every step
        self.reduces_gradients = spec.reduce_gradients is not None and any(
            mesh[d].size() > 1 for d in spec.model_parallel)

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor, scale: float | torch.Tensor,
                         sync: bool) -> torch.Tensor:
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(sync)
        no_sync = self.model.no_sync() if hasattr(self.model, "no_sync") and not sync else contextlib.nullcontext()
        with no_sync:
            with self.precision.autocast(), activation_context(self.cfg.offload, self.device):
                outputs = self.model(inputs)
                loss, _ = self.spec.loss_fn(outputs, targets)
                if self.metric_fn is not None:
                    self.extra_metrics.add(self.metric_fn(outputs, targets))
                del outputs  # the backward needs only what autograd saved (plain logits would stay alive here)
            self.precision.scaler.scale(loss * scale).backward()
        return loss.detach()

    def step(self) -> tuple[torch.Tensor, bool]:
        scaler, clip = self.precision.scaler, self.cfg.trainer.grad_clip
        if self.reduces_gradients:
            self.spec.reduce_gradients(self.module, self.mesh)
        scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        grad_norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        skipped = not bool(torch.isfinite(grad_norm))  # the step's one host read (memtrain.engine.step)
        if scaler.is_enabled():
            scaler.step(self.optimizer)  # skips the update itself when it found inf/nan
            scaler.update()
        elif not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, skipped

    def state(self) -> dict[str, Any]:
        """Model and optimizer state keyed by parameter name (sharded under FSDP), the scaler and
        the RNG, as DCP-loadable tensors."""
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optimizer": optim_sd, "rng": {"cpu": torch.get_rng_state()}}
        if self.precision.scaler.is_enabled():
            state["scaler"] = self.precision.scaler.state_dict()
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self, checkpointer: Checkpointer, step: int, meta: dict[str, Any]) -> Path:
        return checkpointer.save(step, self.state(), meta)

    def load(self, checkpointer: Checkpointer, path: Path) -> dict[str, Any]:
        state = self.state()
        if "scaler" in state and not any(k.startswith("scaler.") for k in read_dcp_metadata(path).state_dict_metadata):
            del state["scaler"]  # written without loss scaling (e.g. fp32 resumed as fp16): a fresh scaler
        meta = checkpointer.load(path, state)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        if "scaler" in state:
            self.precision.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        return meta


def build_strategy(cfg: DictConfig, model: nn.Module, spec: ModelSpec, mesh: DeviceMesh, dims: ParallelDims,
                   precision: Precision, device: torch.device,
                   materialize: Callable[[nn.Module], None] | None = None) -> Strategy:
    """The strategy of parallel.name on `mesh`, whose degrees are `dims`; `materialize` (a model
    built on the meta device) only TorchStrategy takes: validation refuses trainer.init_device=meta
    for the others."""
    if parallel_option(cfg).backend is Backend.DEEPSPEED:
        from memtrain.engine.zero_strategy import DeepSpeedStrategy

        return DeepSpeedStrategy(cfg, model, spec, dims, precision, device)
    if mesh["pp"].size() > 1:
        from memtrain.engine.pipeline_strategy import PipelineStrategy

        return PipelineStrategy(cfg, model, spec, mesh, precision, device)
    return TorchStrategy(cfg, model, spec, mesh, precision, device, materialize)
