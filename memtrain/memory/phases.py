"""The peak of one training step, phase by phase, for `memtrain estimate`.

The per-term table (memtrain.memory.estimator) adds every term; but the gradients and the saved
activations never coexist in full: the backward pass frees a block's saved tensors as it produces
that block's gradients. So one rank's device bytes are followed over the step's three phases, in
the order torch allocates and frees them (for one micro-batch; parameters, optimizer states and
the FSDP working set `gathered` are live throughout):

  forward         the end of the forward pass, as the loss is computed: the saved activations and
                  the loss's own transient tensors (the spec's "loss_forward_transient") or, if
                  larger, a checkpointed block's whole working set (the recompute buffer: it runs
                  in full before its tensors are dropped), plus the
                  gradients where they outlive the step (gradient accumulation over micro-batches;
                  DDP's gradient buckets with gradient_as_bucket_view; DeepSpeed's gradient buffers).
  backward        the backward pass walked block by block, from the loss back to the embeddings.
                  At the loss head: every saved tensor, the head's (root) gradients and the loss's
                  gradient temporaries (the spec's "loss_backward_transient", at least the gradient
                  flowing into the last block). At block i: what blocks 0..i saved, the recompute
                  buffer (a checkpointed block's activations, recomputed), the gradients of the
                  root and of blocks i..L-1, and the gradients flowing through the block (its
                  output's and its input's, two residual-stream tensors). The peak is the largest.
  optimizer_step  all gradients (their activations freed), plus the update's temporaries
                  (`optimizer_temporaries`), plus under ZeRO with a low-precision compute dtype the
                  fp32 copy of this rank's gradient partition that DeepSpeed's step reads.

`peak` is the largest of the three. Sources: torch.autograd's engine (a node's saved tensors are
released once it has run, torch.autograd.graph), torch.optim's fused/foreach/single-tensor
implementations (Adam, AdamW, Adafactor), DeepSpeed's ZeRO stage 1/2 optimizer (the fp32
gradient partition). Checked against live-tensor peaks of real steps on CPU
(tests/unit/test_step_peaks.py, docs/planner.md).
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from memtrain.config.errors import as_enum
from memtrain.config.parallel_options import DataParallel, parallel_option
from memtrain.config.schema import Device
from memtrain.memory import optimizer_memory
from memtrain.precision.amp import dtype_of

PHASES = ("forward", "backward", "optimizer_step")
FP32 = 4


def _foreach(cfg: DictConfig) -> bool:
    """Whether torch's optimizer runs its multi-tensor (foreach) path: the config's foreach, else
    torch's default (foreach on CUDA, per tensor elsewhere)."""
    flag = cfg.optimizer.get("foreach", None)
    if flag is not None:
        return bool(flag)
    return as_enum(cfg.trainer.device, Device) is not Device.cpu


def optimizer_temporaries(cfg: DictConfig, shapes: list[torch.Size], state_bytes: int) -> int:
    """Bytes the optimizer's update allocates and frees within optimizer.step(), for parameters of
    these shapes with states `state_bytes` wide.

    AdamW, Adam: the fused kernels (optimizer.fused, on by default where torch has them: CUDA, CPU)
    allocate nothing; the foreach path allocates sqrt(v) for every parameter at once (one
    parameter-sized list), the per-tensor path one parameter's at a time (the largest).
    Adafactor: the variance estimate (the row x column outer product, or the copied vector
    variance) per parameter: all at once on the foreach path, the largest one per tensor.
    memtrain's optimizers (Lion, SM3, CAME, Adam-mini, ...): one result per foreach op over a
    bucket of at most BUCKET_BYTES of parameters (memtrain.optim._foreach): the largest bucket.
    MeZO: none."""
    name = optimizer_memory.optimizer_name(cfg)
    sizes = [math.prod(s) * state_bytes for s in shapes]
    if not sizes or optimizer_memory.zeroth_order(cfg):
        return 0
    if name in ("AdamW", "Adam"):
        fused = cfg.optimizer.get("fused", None)
        if fused is None or fused:  # None: fused where torch has it (memtrain.optim.builder.fused_supported)
            return 0
        return sum(sizes) if _foreach(cfg) else max(sizes)
    if name == "Adafactor":
        return sum(sizes) if _foreach(cfg) else max(sizes)
    # memtrain's own multi-tensor optimizers cut their foreach ops at BUCKET_BYTES (imported here:
    # memtrain.optim._foreach imports torch.distributed.tensor, most of a second, which estimate needs not)
    from memtrain.optim._foreach import BUCKET_BYTES

    return min(sum(sizes), max(BUCKET_BYTES, max(sizes)))


def _grads_outlive_step(cfg: DictConfig) -> bool:
    """Gradients live from one step to the next: DDP allocates its buckets once (the gradients are
    views of them); and with gradient accumulation the gradients of the earlier micro-batches are
    live during the later forwards. (DeepSpeed's persistent buffers come labelled by phase from
    memtrain.memory.zero_memory: `zero_phase_terms`.)"""
    return parallel_option(cfg).data_parallel is DataParallel.REPLICATE or cfg.trainer.grad_accum > 1


def step_phases(
    cfg: DictConfig,
    *,
    params: int,
    grads: int,
    optimizer: int,
    gathered: int,
    precision_state: int,
    per_block: list[int],
    outside: int,
    buffer: int,
    block_input: int,
    unit_sizes: list[int],
    device_activations: int | None = None,
    zero_fp32_grads: int = 0,
    temporaries: int = 0,
    loss_forward: int = 0,
    loss_backward: int = 0,
    backward_only: int = 0,
) -> dict[str, int]:
    """{phase: device bytes at that phase's peak} (PHASES) for one rank, from the estimator's terms:
    params, grads, optimizer, gathered, precision_state (model states, as ModelStates),
    per_block and outside (saved activations), buffer (the recompute buffer), block_input (one
    block's residual-stream tensor, the size of the gradient flowing through it), unit_sizes (the
    parameter count of the root, then of each block, as memtrain.memory.estimator.param_units),
    device_activations (offload=activations_cpu: the device holds at most this much activation
    at a time; None otherwise), zero_fp32_grads and temporaries (optimizer step, bytes),
    loss_forward and loss_backward (the spec's "loss_forward_transient" and
    "loss_backward_transient": what the loss allocates beyond what it saves, at its peak in the
    forward, with every saved tensor live, and at the start of the backward), backward_only
    (model-state buffers live during the backward only: DeepSpeed's reduce bucket and one
    autograd gradient)."""
    always = params + optimizer + precision_state
    kept_grads = grads if _grads_outlive_step(cfg) else 0
    saved = sum(per_block) + outside
    forward = always + gathered + kept_grads + (saved if device_activations is None else device_activations) + max(
        loss_forward, buffer)
    # gradients produced by the backward, by unit, in the rank's gradient dtype and sharding
    total_units = sum(unit_sizes) or 1
    new_grads = [0 if kept_grads else grads * n / total_units for n in unit_sizes]
    root_grads, block_grads = new_grads[0], new_grads[1:]
    flowing = 2 * block_input
    # the loss head's backward: every saved tensor still live
    head = always + gathered + kept_grads + root_grads + max(block_input, loss_backward) + (
        saved if device_activations is None else device_activations)
    walk = [head]
    n = len(per_block)
    # blocks of further stacks (per_block's first entries) have no units of their own in unit_sizes
    offset = n - len(block_grads)
    for i in range(n - 1, -1, -1):
        produced = sum(block_grads[max(i - offset, 0):]) if i >= offset else sum(block_grads)
        held = sum(per_block[: i + 1]) if device_activations is None else device_activations
        walk.append(always + gathered + kept_grads + root_grads + produced + held + buffer + flowing)
    backward = max(walk) + backward_only
    optimizer_step = always + grads + zero_fp32_grads + temporaries
    return {"forward": int(forward), "backward": int(backward), "optimizer_step": int(optimizer_step)}


def zero_phase_terms(terms) -> dict[str, int]:
    """step_phases' model-state arguments from DeepSpeed's labelled device terms
    (memtrain.memory.zero_memory.ZeroTerm): persistent ones throughout (as `params`), the
    forward+backward ones as `gathered`, the backward ones as `backward_only`; of the step's, the
    reduced gradient partition (model dtype, filled as the backward reduces each bucket) as `grads`
    and the fp32 gradient partition (made in step()) as `zero_fp32_grads`."""
    from memtrain.memory import zero_memory as z

    device = [t for t in terms if t.where == "device"]
    step_grads = [t for t in device if t.phase == z.STEP]
    fp32 = sum(t.nbytes for t in step_grads if t.label.startswith("fp32"))
    return {"params": sum(t.nbytes for t in device if t.phase == z.PERSISTENT), "optimizer": 0,
            "grads": sum(t.nbytes for t in step_grads) - fp32, "zero_fp32_grads": fp32,
            "gathered": sum(t.nbytes for t in device if t.phase == z.FORWARD_BACKWARD),
            "backward_only": sum(t.nbytes for t in device if t.phase == z.BACKWARD)}
