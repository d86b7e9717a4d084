"""One optimizer step, as a function of the step's micro-batches: `BackpropStep` (forward and
backward through a Strategy: plain/DDP/FSDP, pipeline or DeepSpeed) or
`memtrain.engine.zeroth_order.ZerothOrderStep` (forward passes only). The trainer picks one when
it is built (`build_step_fn`) and hands it the step's micro-batches; neither reads the trainer.

Host synchronisation. The step's loss, gradient norm and target count stay on the device in the
`StepResult`; the loop copies them to the host only on the steps it logs (`StepResult.read`, one
copy). What a step itself still reads, because the host must decide something with it:

* whether the update was applied (`StepResult.skipped`): a non-finite gradient norm skips the
  update, and the learning-rate schedule follows applied updates, so the host needs this bit
  before it can give the next step its learning rate (a Python number for every optimizer) and
  before it calls (or not) an optimizer that takes no skip flag: one read of the gradient norm's
  finiteness per step. DeepSpeed decides it inside engine.step (its own overflow check);
* torch.amp.GradScaler.step (precision=fp16) reads its found-inf flag itself, unless the optimizer
  is a fused torch one that takes the flag on the device;
* MeZO: the projected gradient is the scale of the update (a Python number in `Tensor.add_`): one
  read of (loss, projected gradient) per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.distributed.device_mesh import DeviceMesh

from memtrain.distributed.mesh import batch_mesh, data_parallel_mesh, sum_over
from memtrain.engine.strategy import Strategy
from memtrain.models.spec import ModelSpec

MicroBatches = list[tuple[Any, Any]]  # (inputs, targets) per micro-batch, tensors or dicts of tensors


def to_device(batch: Any, device: torch.device) -> Any:
    """A tensor, or a dict of tensors (feature dicts), on `device`."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if device.type == "cuda" and batch.device.type == "cpu":  # pinned, so the copy is truly asynchronous
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step gives the loop. The tensors are 0-dim and on the training device;
    `loss`, `grad_norm` and `tokens` copy one of them to the host (a synchronisation: the loop
    reads them together with `read`, on logged steps only)."""

    loss_tensor: torch.Tensor  # float64: summed loss / scored targets, over the whole step on every rank
    grad_norm_tensor: torch.Tensor  # 2-norm of the gradients before clipping (MeZO: |projected gradient|)
    tokens_tensor: torch.Tensor  # float64: targets scored in the step on every rank (ModelSpec.num_targets)
    skipped: bool  # optimizer step skipped: non-finite gradients (fp16 overflow)

    @property
    def loss(self) -> float:
        return float(self.loss_tensor)

    @property
    def grad_norm(self) -> float:
        return float(self.grad_norm_tensor)

    @property
    def tokens(self) -> int:
        return int(self.tokens_tensor)

    def read(self, *more: torch.Tensor) -> list[float]:
        """[loss, grad_norm, *more] as Python floats, in one device-to-host copy."""
        values = [self.loss_tensor, self.grad_norm_tensor, *more]
        return torch.stack([v.to(torch.float64) for v in values]).tolist()


@dataclass(frozen=True)
class RankSums:
    """Sums of per-rank step quantities over the ranks, on the device (an all-reduce, no read),
    each over a 1-D mesh flattened from the run's mesh (memtrain.distributed.mesh), so ranks that
    share data count once and nothing is rescaled afterwards.

    batch: the ranks holding disjoint targets ((dp_replicate, dp_shard, cp) flattened);
    data_parallel: the data-parallel ranks ((dp_replicate, dp_shard) flattened)."""

    batch: DeviceMesh
    data_parallel: DeviceMesh

    @classmethod
    def of(cls, mesh: DeviceMesh) -> "RankSums":
        """The sums of the run's `mesh` (a collective on first use: every rank calls it)."""
        return cls(batch_mesh(mesh), data_parallel_mesh(mesh))

    @property
    def dp(self) -> int:
        """The number of data-parallel ranks (ParallelDims.dp)."""
        return self.data_parallel.size()

    def over_batch(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks that hold disjoint targets (ranks that share data, e.g. tensor-
        parallel, DAP or pipeline ones, count once). `value`: a float64 tensor on the device; a
        new tensor is returned. Under pipeline parallelism the loss is already on every stage
        (PipelineStrategy sums it over the pipeline ranks from the last one)."""
        return sum_over(value.clone(), self.batch)

    def over_data_parallel(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the data-parallel ranks (every other rank shares its data), in place."""
        return sum_over(value, self.data_parallel)


def count_targets(spec: ModelSpec, micro: MicroBatches, device: torch.device) -> torch.Tensor:
    """This rank's scored targets in `micro` (float64, on `device`): counted where the batches are
    (the host for a data loader's batches), then copied without waiting."""
    counts = torch.stack([torch.as_tensor(spec.num_targets(targets)) for _, targets in micro])
    return to_device(counts.to(torch.float64).sum(), device)


class BackpropStep:
    """Forward and backward of each micro-batch, then the update, through `strategy`; the loss of
    each micro-batch is scaled by dp / (targets of the whole step), so the reduced gradient is that
    of the mean loss per target over the whole batch."""

    def __init__(self, strategy: Strategy, spec: ModelSpec, sums: RankSums, device: torch.device):
        self.strategy, self.spec, self.sums, self.device = strategy, spec, sums, device

    def __call__(self, micro: MicroBatches, step: int) -> StepResult:
        n_scored = self.sums.over_batch(count_targets(self.spec, micro, self.device))
        scale = (self.sums.dp / n_scored).float()  # the loss's dtype: as a Python scale would be applied
        loss_sum = torch.zeros((), device=self.device)
        for j, (inputs, targets) in enumerate(micro):
            inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
            loss_sum += self.strategy.forward_backward(inputs, targets, scale, sync=j == len(micro) - 1)
        grad_norm, skipped = self.strategy.step()
        return StepResult(self.sums.over_batch(loss_sum.double()) / n_scored, grad_norm, n_scored, skipped)


StepFn = Callable[[MicroBatches, int], StepResult]


def build_step_fn(strategy: Strategy, spec: ModelSpec, precision: Any, sums: RankSums, seed: int,
                  device: torch.device) -> StepFn:
    """The step function for `strategy`'s optimizer: zeroth-order (an optimizer with
    `zeroth_order = True`, e.g. MeZO) or backpropagation."""
    if getattr(strategy.optimizer, "zeroth_order", False):
        from memtrain.engine.zeroth_order import ZerothOrderStep

        return ZerothOrderStep(strategy.module, strategy.optimizer, spec, precision.autocast, sums, seed, device)
    return BackpropStep(strategy, spec, sums, device)
