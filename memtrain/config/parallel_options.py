"""The parallel options (`parallel.name`, conf/parallel/*.yaml) and the offloads (`offload.name`,
conf/offload/*.yaml) each one works with: the one table that validation, the estimator and the
planner read. Light (no torch), so a config error is reported without importing the backends.

    single, ddp, dap, pp, tp, sp, spatial   no offload of model states; activations_cpu
    fsdp, hsdp (FSDP2)                      params_cpu (CPUOffloadPolicy: sharded states and step on the host)
    zero1, zero2 (DeepSpeed)                optimizer_cpu (ZeRO-Offload)
    zero3 (DeepSpeed)                       optimizer_cpu, params_cpu, nvme (ZeRO-Infinity)

Every option takes activations_cpu (torch.autograd.graph.save_on_cpu) and none.
"""

from __future__ import annotations

_EVERY = ("none", "activations_cpu")

# parallel option -> the offload options it works with (and the estimator has a memory model of)
PARALLEL_OFFLOADS: dict[str, tuple[str, ...]] = {
    "single": _EVERY,
    "ddp": _EVERY,
    "fsdp": ("none", "params_cpu", "activations_cpu"),
    "hsdp": ("none", "params_cpu", "activations_cpu"),
    "zero1": ("none", "optimizer_cpu", "activations_cpu"),
    "zero2": ("none", "optimizer_cpu", "activations_cpu"),
    "zero3": ("none", "optimizer_cpu", "params_cpu", "nvme", "activations_cpu"),
    "dap": _EVERY,
    "pp": _EVERY,
    "tp": _EVERY,
    "sp": _EVERY,
    "spatial": _EVERY,
}
# parallel option -> the model-parallel mesh dimensions (memtrain.models.family) it composes with; a
# degree other than 1 on any other dimension is refused. Which of them a model implements is the
# model family's declaration.
PARALLEL_MODEL_DIMS: dict[str, tuple[str, ...]] = {
    "single": (),
    "ddp": ("sp", "pp"),
    "fsdp": ("tp", "sp", "pp"),
    "hsdp": ("tp", "sp", "pp"),
    "zero1": (),
    "zero2": (),
    "zero3": (),
    "dap": ("dap",),
    "pp": ("pp",),
    "tp": ("tp",),
    "sp": ("sp",),
    "spatial": ("spatial",),
}
PARALLEL_OPTIONS = tuple(PARALLEL_OFFLOADS)
OFFLOAD_OPTIONS = ("none", "activations_cpu", "optimizer_cpu", "params_cpu", "nvme")


def parallel_options_for(offload: str) -> tuple[str, ...]:
    """The parallel options that work with offload option `offload` (() for an unknown one)."""
    return tuple(p for p, offloads in PARALLEL_OFFLOADS.items() if offload in offloads)


def parallel_options_with(dim: str) -> tuple[str, ...]:
    """The parallel options that compose with model-parallel dimension `dim`, the one named after it
    first (parallel=tp for tp)."""
    options = [p for p, dims in PARALLEL_MODEL_DIMS.items() if dim in dims]
    return tuple(sorted(options, key=lambda p: p != dim))
