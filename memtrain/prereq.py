"""What a run needs from the machine it starts on, checked before any worker starts.

A config can be valid (`memtrain estimate` and `memtrain plan` accept it anywhere) and still not run
here: a multi-node job needs a rendezvous, ZeRO-Infinity needs libaio and its NVMe folder, the Triton
kernels (model.attention_backend=triton) need Triton and a CUDA device or the interpreter, a Slurm
launcher needs a reachable controller, and a GPU-sized run started on a CPU would take hours per
step. Each problem is one paragraph saying how to get what is missing (PrerequisiteError, exit 2).
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path

from omegaconf import DictConfig

from memtrain.config.errors import as_enum
from memtrain.config.parallel_options import offload_option
from memtrain.config.schema import Device
from memtrain.errors import UserError

# A run whose forward + backward needs more than this many FLOPs per optimizer step is GPU-sized: a
# CPU core does some 1e10-1e11 FLOP/s, so one step takes minutes to hours there.
CPU_FLOPS_PER_STEP_LIMIT = 1e13
SLURM_PING_TIMEOUT_S = 10


class PrerequisiteError(UserError):
    """Something the run needs is missing on this machine; the message says how to get it."""


def slurm_unreachable() -> str | None:
    """None when sbatch is installed and `scontrol ping` reaches a Slurm controller, else why not."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "sbatch and scontrol are not installed on this machine (run it on a Slurm login node)"
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=SLURM_PING_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"`scontrol ping` did not answer within {SLURM_PING_TIMEOUT_S} s"
    if proc.returncode == 0 and "UP" in proc.stdout:
        return None
    lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    detail = lines[-1].strip()[:200] if lines else "no answer"
    return f"no Slurm controller is reachable from this machine (`scontrol ping`: {detail})"


def check_slurm(what: str, dry_run_hint: str) -> None:
    """Raise PrerequisiteError when no Slurm cluster is reachable for `what`."""
    reason = slurm_unreachable()
    if reason is not None:
        raise PrerequisiteError(f"{what} needs a Slurm cluster, but {reason}. {dry_run_hint}")


def libaio_missing() -> str | None:
    """Why DeepSpeed's async I/O op (ZeRO-Infinity) cannot be built or loaded here, or None."""
    if ctypes.util.find_library("aio") is None:
        return "the libaio library is not installed"
    include_dirs = [*os.environ.get("CPATH", "").split(":"), "/usr/include", "/usr/local/include"]
    if not any(d and (Path(d) / "libaio.h").is_file() for d in include_dirs):
        return "libaio's header (libaio.h) is not installed, and DeepSpeed compiles its async I/O op against it"
    return None


def _nvme(cfg: DictConfig) -> None:
    reason = libaio_missing()
    if reason is not None:
        raise PrerequisiteError(
            f"offload=nvme (ZeRO-Infinity) needs libaio, but {reason}: install it with `apt-get install libaio-dev` "
            "(or `yum install libaio-devel`), or choose offload=params_cpu or offload=optimizer_cpu.")
    path = Path(str(cfg.offload.nvme_path))
    parent = path if path.exists() else path.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PrerequisiteError(
            f"offload.nvme_path={path}: ZeRO-Infinity swaps parameters and optimizer states into this folder, but "
            f"{parent} {'is not a writable folder' if parent.exists() else 'does not exist'} on this machine; "
            "point offload.nvme_path at a folder on a local NVMe drive.")


def _rendezvous(cfg: DictConfig) -> None:
    lc = cfg.launcher
    if lc.nnodes > 1 and lc.rdzv_endpoint.endswith(":0"):
        raise PrerequisiteError(
            f"launcher.nnodes={lc.nnodes}: a multi-node job needs a reachable rendezvous, the same on every node: set "
            "launcher.rdzv_endpoint=HOST:PORT (the first node's address) and launcher.node_rank on each node, or "
            "let Slurm start the nodes (`memtrain submit --nodes N ...`).")


def _kernels(cfg: DictConfig) -> None:
    """model.attention_backend=triton runs memtrain.kernels: Triton, and a CUDA device or
    TRITON_INTERPRET=1 (the interpreter, on CPU tensors) on the machine that trains."""
    from memtrain.models.alphafold.family import AttentionBackend

    if "attention_backend" not in cfg.model or (
            as_enum(cfg.model.attention_backend, AttentionBackend) is not AttentionBackend.triton):
        return
    from memtrain.kernels.runtime import unavailable_reason

    device = as_enum(cfg.trainer.device, Device)
    reason = unavailable_reason("cuda" if device in (Device.cuda, Device.auto) else "cpu")
    if reason is not None:
        raise PrerequisiteError(f"model.attention_backend=triton (with trainer.device={device.name}) {reason}. "
                                "memtrain estimate and memtrain plan accept it on any machine.")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def step_flops(cfg: DictConfig) -> float | None:
    """Forward + backward FLOPs of one optimizer step (3x the forward, times grad_accum), or None
    for a model family without a FLOPs model."""
    from omegaconf.errors import ConfigAttributeError

    from memtrain.models.flops import forward_flops
    from memtrain.models import get_spec

    try:
        block, outside, _ = forward_flops(cfg)
    except ConfigAttributeError:  # a family whose config the FLOPs model does not read (weather, for now)
        return None
    return 3.0 * (get_spec(cfg.model.arch).num_blocks(cfg.model) * block + outside) * cfg.trainer.grad_accum


def _gpu_sized_on_cpu(cfg: DictConfig) -> None:
    """trainer.device=auto on a machine without CUDA: refuse a run that is GPU-sized (an explicit
    trainer.device=cpu runs it anyway)."""
    if as_enum(cfg.trainer.device, Device) is not Device.auto or _cuda_available():
        return
    flops = step_flops(cfg)
    if flops is None or flops <= CPU_FLOPS_PER_STEP_LIMIT:
        return
    raise PrerequisiteError(
        f"this configuration is GPU-sized (about {flops / 1e12:.0f} TFLOP per optimizer step; a CPU takes minutes to "
        "hours per step) and no CUDA device is visible, so trainer.device=auto would run it on the CPU. Run it on a "
        "GPU machine (or `memtrain submit`), shrink it (e.g. +recipe=alphafold_tiny), or pass trainer.device=cpu to "
        "run it here anyway.")


def check_runs_here(cfg: DictConfig) -> None:
    """Everything the run of `cfg` needs on this machine; raises PrerequisiteError. Called once per
    job before any worker starts (not inside a worker that torchrun or srun started)."""
    _rendezvous(cfg)
    if offload_option(cfg).uses_nvme:
        _nvme(cfg)
    _kernels(cfg)
    _gpu_sized_on_cpu(cfg)


def launcher_choice(overrides: list[str]) -> str | None:
    """The hydra/launcher option chosen on the command line (e.g. 'slurm'), or None."""
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key == "hydra/launcher":
            return value
    return None
