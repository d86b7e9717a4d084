"""Measure what a forward pass really leaves allocated for the backward pass, on any device
(CPU included), to check the analytic activation model against."""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def forward_held_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Net bytes allocated by `forward()` and still held when it returns (the saved activations
    plus the returned tensor), from the profiler's per-op allocation records."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, profile_memory=True) as prof:
        out = forward()
    held = sum(e.self_cpu_memory_usage + getattr(e, "self_device_memory_usage", 0) for e in prof.events())
    return held - out.untyped_storage().nbytes()


def trainer_forward_held_bytes(trainer) -> int:
    """forward_held_bytes of one forward and loss of a memtrain Trainer on its first micro-batch,
    under the run's autocast: what the activation model of `memtrain estimate` predicts."""
    inputs, targets = trainer.data.batch(0, trainer.cfg.trainer.micro_batch_size)

    def forward() -> torch.Tensor:
        with trainer.precision.autocast():
            return trainer.spec.loss_fn(trainer.model(inputs), targets)[0]

    return forward_held_bytes(forward)


class LiveBytes(TorchDispatchMode):
    """Bytes of distinct live tensor storages, followed op by op: every storage an op returns is
    counted once, from the op that first returns it until torch frees it (a weak reference's
    finalizer), views and in-place results included. Tensors that existed before the mode was
    entered count only once passed to `track` (the parameters). Works on any device, the CPU
    included, where no allocator keeps statistics; per-phase peaks come from `phase`.

        live = LiveBytes()
        with live:
            live.track(*model.parameters())
            with live.phase("forward"):
                ...
        live.peaks   # {"forward": peak bytes during the phase, ...}
        live.ends    # {"forward": bytes live when the phase ended, ...}
    """

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[int, int] = {}
        self._ignored: set[int] = set()
        self.current = 0
        self.peak = 0
        self._phase_peak = 0
        self.peaks: dict[str, int] = {}
        self.ends: dict[str, int] = {}

    def ignore(self, *tensors: torch.Tensor) -> None:
        """Never count these tensors' storages, not even through views an op returns of them (the
        input batch: a view of it is no new memory). They must outlive the measurement."""
        self._ignored.update(t.untyped_storage()._cdata for t in tensors if isinstance(t, torch.Tensor))

    def track(self, *tensors: torch.Tensor) -> None:
        """Count these tensors' storages from now until torch frees them. A DTensor counts as its
        local shard (the wrapper's own storage reports the global tensor's bytes, which no rank holds)."""
        for t in tensors:
            if isinstance(t, torch.Tensor) and hasattr(t, "_local_tensor"):  # DTensor
                t = t._local_tensor
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in self._sizes or key in self._ignored or st.nbytes() == 0:
                continue
            self._sizes[key] = st.nbytes()
            self.current += st.nbytes()
            self.peak = max(self.peak, self.current)
            self._phase_peak = max(self._phase_peak, self.current)
            weakref.finalize(st, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(*tree_flatten(out)[0])
        return out

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the peak while the block runs (max over repeats of the same name) and the bytes
        live when it ends (the last repeat's)."""
        self._phase_peak = self.current
        yield
        self.peaks[name] = max(self.peaks.get(name, 0), self._phase_peak)
        self.ends[name] = self.current


from memtrain.memory.phases import PHASES  # noqa: E402  (the names the estimator uses)


def step_phase_peaks(cfg, run_dir, steps: int = 2) -> LiveBytes:
    """Run `steps` real optimizer steps of `cfg` (one process, offload=none: the Trainer's model,
    optimizer and TorchStrategy.step) under LiveBytes, with each step split into its phases:
    forward (model and loss under autocast), backward (of the scaled loss), optimizer_step
    (clipping, the update, zeroing the gradients). The parameters are tracked from the start; the
    batches, loaded before, are ignored, views of them included (the estimator counts no input
    tensors). Returns the tracker: its
    `peaks` and `ends` by phase name (PHASES), in bytes."""
    from rich.console import Console

    from memtrain.engine.trainer import Trainer

    trainer = Trainer(cfg, run_dir, console=Console(quiet=True))
    try:
        strategy, spec, precision = trainer.strategy, trainer.spec, trainer.precision
        batches = [trainer.data.batch(step, cfg.trainer.micro_batch_size) for step in range(steps)]
        live = LiveBytes()
        live.ignore(*tree_flatten(batches)[0])
        with live:
            live.track(*trainer.model.parameters())
            for inputs, targets in batches:
                with live.phase("forward"):
                    with precision.autocast():
                        outputs = trainer.model(inputs)
                        loss, _ = spec.loss_fn(outputs, targets)
                        del outputs
                with live.phase("backward"):
                    precision.scaler.scale(loss / float(spec.num_targets(targets))).backward()
                    del loss
                with live.phase("optimizer_step"):
                    strategy.step()  # at the learning rate its scheduler set
        return live
    finally:
        trainer.close()
