"""Host synchronisation per training step (memtrain.engine.step): a step's loss, gradient norm and
target counts stay on the device and are read on logged steps only.

CUDA would report each device-to-host copy with torch.cuda.set_sync_debug_mode; a CPU has no such
mode, so a spy counts the reads that would be one: every `aten._local_scalar_dense` (what
`.item()`, `float()`, `int()`, `bool()` of a tensor dispatch to) and every `Tensor.tolist`,
`Tensor.numpy` and `Tensor.cpu` call (which copy from a GPU without that op), attributed to the
step they happen in (the step's own work and the logging after it). Reads inside the data loader's
`batch` are left out: the loader indexes host tensors and its batches are copied to the device
afterwards, so on a GPU they are no device synchronisation."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memtrain.config.loader import compose_config
from memtrain.engine.trainer import Trainer


class HostReads(TorchDispatchMode):
    """Counts host reads of tensor values per `self.step` (set by the caller)."""

    COPYING = ("tolist", "numpy", "cpu")

    def __init__(self):
        super().__init__()
        self.step, self.reads, self.paused = 0, Counter(), False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.paused:
            self.reads[self.step] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._originals = {name: getattr(torch.Tensor, name) for name in self.COPYING}
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, self._counting(original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            self.reads[self.step] += not self.paused
            return original(tensor, *args, **kwargs)
        return read


def reads_per_step(trainer: Trainer) -> dict[int, int]:
    spy = HostReads()
    step = trainer.train_step

    def counted_step():
        spy.step = trainer.step + 1  # this step's work and the logging that follows it
        return step()

    def host_batch(*args, batch=trainer.data.batch):
        spy.paused = True
        try:
            return batch(*args)
        finally:
            spy.paused = False

    trainer.train_step, trainer.data.batch = counted_step, host_batch
    with spy:
        trainer.fit()
    return {s: spy.reads[s] for s in range(1, trainer.step + 1)}


# per precision: reads on a step that is not logged, and on a logged one (log_every=3, 6 steps)
#   every step: 1, whether the gradient norm is finite (a non-finite one skips the update and holds
#               the learning-rate schedule, which the host needs before the next step's update)
#   logged steps: 1 more, the copy of (loss, grad norm, targets since the last log); fp16: 1 more,
#               the loss scale (GradScaler.get_scale); the fused AdamW step takes GradScaler's
#               found-inf flag on the device, so GradScaler.step reads nothing
#   MeZO: its step reads (loss, projected gradient) once, the update's scale; nothing else
#   weather (Pangu-Weather, tiny): its per-variable RMSE metrics are summed on the device and read
#               in the logged step's one copy of the metric means: 1 more
EXPECTED = {"fp32": (1, 2), "bf16": (1, 2), "fp16": (1, 3), "mezo": (1, 2), "weather": (1, 3)}
PANGU = ["+recipe=weather_swin_tiny", "model=pangu_tiny", "model.n_lat=16", "model.n_lon=32", "model.n_levels=3",
         "data.levels=[1000,850,500]", "model.dim=16", "model.window_size=[2,2,4]", "data.synthetic_time_steps=4",
         "trainer.micro_batch_size=1", "trainer.device=cpu", "trainer.save_every=0"]


@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_step_reads_the_device_only_where_the_host_needs_a_value(compose, tmp_path, case, make_trainer):
    steps = ["trainer.max_steps=6", "trainer.log_every=3", "trainer.grad_accum=2"]
    if case == "weather":
        cfg = compose_config([*PANGU, *steps])
    else:
        cfg = compose(*(["optimizer=mezo", "optimizer.lr=1e-3"] if case == "mezo" else [f"precision={case}"]), *steps)
    trainer = make_trainer(cfg, tmp_path)
    reads = reads_per_step(trainer)
    plain, logged = EXPECTED[case]
    assert reads == {1: plain, 2: plain, 3: logged, 4: plain, 5: plain, 6: logged}
