"""What the multi-process cases run, on every rank of a batched launch (tests/distributed/batch.py):
each function takes the case's folder and its arguments (mostly Hydra overrides) and returns what
the case's test asserts on (rank 0's value is kept). `run` is also the single-process reference,
called in the test process.

An assertion here (the communication checks) fails the case on the rank that sees it; the test
then fails with that rank's traceback.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from memtrain.config.loader import load_config
from memtrain.engine.trainer import Trainer
from memtrain.engine.step import count_targets


# -- training runs: first-step gradients, then the losses and gradient norms of a few steps ---------

def full_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in trainer.model.named_parameters():
        g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        name = name.replace("_checkpoint_wrapped_module.", "").removeprefix("module.")
        grads[name] = g.detach().float().cpu().clone()
    return grads


def zero_full_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    """DeepSpeed ZeRO: the reduced gradients, gathered whole from the ranks' partitions
    (a collective under ZeRO-3: every rank calls it)."""
    from deepspeed.utils import safe_get_full_grad

    grads = {}
    for name, p in trainer.model.module.named_parameters():
        name = name.replace("_checkpoint_wrapped_module.", "")
        grads[name] = safe_get_full_grad(p).detach().float().cpu().clone()
    return grads


def capture_first_step_grads(trainer: Trainer, grads: dict[str, torch.Tensor]) -> None:
    """ZeRO keeps reduced gradients in its own partitions, and zero_grad does not clear them all
    (ZeRO-2 with offload_optimizer keeps accumulating into its host buffers until the next
    step()), so a separate pass would leak into the first step; instead take them inside the
    first real step, after its last backward and before the update."""
    step = trainer.strategy.step

    def step_and_capture():
        if not grads:
            grads.update(zero_full_grads(trainer))
        return step()

    trainer.strategy.step = step_and_capture


def train_run(run_dir: Path, overrides: list[str]) -> dict:
    """The gradients of the first step's micro-batches (as the trainer scales them), then the
    losses and gradient norms of trainer.max_steps optimizer steps."""
    cfg = load_config(overrides)
    trainer = Trainer(cfg, run_dir)
    try:
        if cfg.parallel.name.startswith("zero"):
            grads: dict[str, torch.Tensor] = {}
            capture_first_step_grads(trainer, grads)
        else:
            micro = trainer.micro_batches()
            n = float(trainer.sums.over_batch(count_targets(trainer.spec, micro, trainer.device)))
            for j, (x, y) in enumerate(micro):
                trainer.strategy.forward_backward(x, y, trainer.dims.dp / n, sync=j == len(micro) - 1)
            if trainer.spec.reduce_gradients is not None:
                trainer.spec.reduce_gradients(trainer.strategy.module, trainer.mesh)  # e.g. DAP's partial sums
            grads = full_grads(trainer)
            trainer.optimizer.zero_grad(set_to_none=True)
        records = trainer.fit()
        return {"grads": grads, "losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records]}
    finally:
        trainer.close()  # a group made by the caller (the batch worker) is left alone


def run(out: str, overrides: list[str]) -> dict:
    """The single-process reference, in the calling process: train_run in OUT's folder; the
    result is also saved to OUT."""
    result = train_run(Path(out).parent / "run", overrides)
    torch.save(result, out)
    return result


def train(folder: Path, *overrides: str) -> dict:
    return train_run(folder / "run", list(overrides))


def pipeline(folder: Path, *overrides: str) -> dict:
    """As train, with the first step's gradients gathered from every pipeline stage (each rank
    holds its stages' parameters only; data-parallel replicas agree)."""
    trainer = Trainer(load_config(list(overrides)), folder / "run")
    try:
        micro = trainer.micro_batches()
        n = float(trainer.sums.over_batch(count_targets(trainer.spec, micro, trainer.device)))
        for j, (x, y) in enumerate(micro):
            trainer.strategy.forward_backward(x, y, trainer.dims.dp / n, sync=j == len(micro) - 1)
        local = full_grads(trainer)  # FSDP shards gathered over the data-parallel ranks
        trainer.optimizer.zero_grad(set_to_none=True)
        everyone: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(everyone, local)
        grads = {name: g for stage in everyone for name, g in stage.items()}
        records = trainer.fit()
        return {"grads": grads, "losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records]}
    finally:
        trainer.close()


def zero3_resume(folder: Path, *overrides: str) -> dict:
    """Three runs of the same job: straight through, saving checkpoints, and resumed from the
    saving run's first checkpoint (step 4)."""
    straight = train_run(folder / "straight" / "run", list(overrides))
    saving = train_run(folder / "saving" / "run", [*overrides, "trainer.save_every=4"])
    step4 = folder / "saving" / "run" / "checkpoints" / "step_00000004"
    resumed = train_run(folder / "resumed" / "run", [*overrides, f"trainer.resume={step4}"])
    return {"straight": straight, "saving": saving, "resumed": resumed}


def fp16_skip(folder: Path, *overrides: str) -> list:
    """fp16 under FSDP2: an inf in rank 1's gradient shard; every rank's (skipped, weights
    changed, loss scale) after the step."""
    trainer = Trainer(load_config([*overrides, "parallel=fsdp", "precision=fp16"]), folder / "run")
    try:
        weight = next(p for n, p in trainer.model.named_parameters() if n.endswith("output.weight"))
        before = weight.to_local().clone()
        inputs, targets = trainer.micro_batches()[0]
        trainer.strategy.forward_backward(inputs, targets, 1e-3, sync=True)
        if trainer.env.rank == 1:
            weight.grad.to_local()[0, 0] = float("inf")
        _, skipped = trainer.strategy.step()
        mine = (skipped, not torch.equal(before, weight.to_local()), trainer.precision.scaler.get_scale())
        everyone = [None] * trainer.env.world_size
        dist.all_gather_object(everyone, mine)
        return everyone
    finally:
        trainer.close()


class _RecordedSums:
    """The trainer's RankSums, recording each sum's (kind, this rank's value, the sum)."""

    def __init__(self, sums):
        self.sums, self.dp, self.taken = sums, sums.dp, []

    def over_batch(self, value: torch.Tensor) -> torch.Tensor:
        local = value.clone()
        summed = self.sums.over_batch(value)
        self.taken.append(("batch", local, summed.clone()))
        return summed

    def over_data_parallel(self, value: torch.Tensor) -> torch.Tensor:
        local = value.clone()
        summed = self.sums.over_data_parallel(value)
        self.taken.append(("data_parallel", local, summed.clone()))
        return summed


def rank_sums(folder: Path, *overrides: str) -> dict:
    """One optimizer step's sums over ranks (scored targets, summed loss) as the trainer takes them
    (RankSums: all-reduces over the flattened (dp_replicate, dp_shard, cp) and (dp_replicate,
    dp_shard) meshes), each next to what they replaced: the all-reduce over every rank, rescaled
    by batch_shards / world_size (dp / world_size for the data-parallel sums). Also the step's
    scored targets and the targets of its whole batch counted on the unsharded data (the one-process
    view: data-parallel ranks take interleaved micro-batches, so the step's batch is the first
    grad_accum x dp of them)."""
    cfg = load_config(list(overrides))
    trainer = Trainer(cfg, folder / "run")
    try:
        recorded = _RecordedSums(trainer.sums)
        trainer.step_fn.sums = recorded
        result = trainer.train_step()
        dims, pairs = trainer.dims, []
        for kind, local, summed in recorded.taken:
            world = local.clone()
            dist.all_reduce(world)  # every rank, ranks that share data included
            shards = dims.batch_shards if kind == "batch" else dims.dp
            pairs.append((kind, summed.item(), (world * shards / dims.world_size).item()))
        data, t = trainer.spec.build_data(cfg), cfg.trainer
        whole = sum(int(trainer.spec.num_targets(data.batch(j, t.micro_batch_size)[1]))
                    for j in range(t.grad_accum * dims.dp))
        return {"sums": pairs, "tokens": result.tokens, "whole_batch_targets": whole}
    finally:
        trainer.close()


def check_rank_sums(result: dict, case: str) -> None:
    """In the test process, on rank_sums' result: every sum over ranks equals the rescaled
    world-wide one it replaced, and the step scored its whole batch's targets once (ranks that
    share data, e.g. tensor-parallel, DAP or pipeline ones, do not count them twice)."""
    assert {kind for kind, _, _ in result["sums"]} >= {"batch"}, case
    for kind, summed, rescaled in result["sums"]:
        # float64, 2 ranks: the same one or two terms added (a value doubled and halved back is
        # exact), so bit-identical
        assert summed == rescaled, (case, kind, summed, rescaled)
    assert result["tokens"] == result["whole_batch_targets"], case


# -- communication primitives against the full tensors every rank can compute alone ----------------

def dap_comm(folder: Path) -> str:
    """DAP's communication pairs on every rank against the full tensors (same seed everywhere)."""
    from memtrain.distributed.collectives import gather, gather_replicated, pad_to_multiple, scatter
    from memtrain.distributed.dap import col_to_row, row_to_col

    group, rank, n = dist.group.WORLD, dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    X, W, V = torch.randn(4, 6, 3), torch.randn(4, 6, 3), torch.randn(4, 6, 3)  # [S, R, C], same on every rank
    rows, cols = X.chunk(n, 0)[rank], X.chunk(n, 1)[rank]
    exact = dict(rtol=0, atol=0)  # pure data movement: bit-identical

    # row_to_col / col_to_row move shards exactly, and their backwards are each other
    x = rows.clone().requires_grad_()
    y = row_to_col(x, group)
    torch.testing.assert_close(y, cols, **exact)
    torch.testing.assert_close(col_to_row(y, group), rows, **exact)
    (W.chunk(n, 1)[rank] * y).sum().backward()  # the ranks' losses sum to (W * X).sum()
    torch.testing.assert_close(x.grad, W.chunk(n, 0)[rank], **exact)

    # gather of a replicated computation scaled by 1/n: backward reduce-scatters the gradient
    x = rows.clone().requires_grad_()
    g = gather(x, 0, group)
    torch.testing.assert_close(g, X, **exact)
    ((V * g).sum() / n).backward()
    # fp32 sum of n copies of V / n: round-off of one addition per rank
    torch.testing.assert_close(x.grad, V.chunk(n, 0)[rank], rtol=1e-6, atol=1e-7)

    # gather into a replicated computation (every rank the same loss): backward keeps the own slice
    x = rows.clone().requires_grad_()
    (V * gather_replicated(x, 0, group)).sum().backward()
    torch.testing.assert_close(x.grad, V.chunk(n, 0)[rank], **exact)

    # scatter of a replicated leaf: backward all-gathers the shards' gradients
    x = X.clone().requires_grad_()
    s = scatter(x, 1, group)
    torch.testing.assert_close(s, cols, **exact)
    (W.chunk(n, 1)[rank] * s).sum().backward()
    torch.testing.assert_close(x.grad, W, **exact)

    padded = pad_to_multiple(torch.ones(3, 5), dim=1, multiple=4)
    assert padded.shape == (3, 8) and padded[:, 5:].abs().sum() == 0 and padded[:, :5].sum() == 15
    return "ok"


def dap_sent_bytes(folder: Path, *overrides: str) -> dict:
    """The bytes this rank sends through memtrain.distributed.collectives (DAP's collectives and its
    gradient all-reduce) during trainer.fit(), by collective, in memtrain.models.comm's convention:
    an all-gather or a reduce-scatter (n-1)/n of the whole tensor, an all-to-all (n-1)/n of the
    local one, an all-reduce 2 (n-1)/n of it. Other collectives (the loss's sums, the stop flag)
    go through torch.distributed directly and are not counted."""
    from memtrain.distributed import collectives

    cfg = load_config(list(overrides))
    trainer = Trainer(cfg, folder / "run")
    real, sent = collectives.dist, {"all_gather": 0, "reduce_scatter": 0, "all_to_all": 0, "all_reduce": 0}

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    class Counting:
        """torch.distributed as collectives.py sees it, counting what each call sends."""

        def __getattr__(self, name):
            return getattr(real, name)

        def all_gather_into_tensor(self, out, x, group=None):
            sent["all_gather"] += (real.get_world_size(group) - 1) * nbytes(x)  # x: this rank's shard
            return real.all_gather_into_tensor(out, x, group=group)

        def reduce_scatter_tensor(self, out, x, group=None):
            n = real.get_world_size(group)
            sent["reduce_scatter"] += (n - 1) * nbytes(x) // n  # x: the whole tensor
            return real.reduce_scatter_tensor(out, x, group=group)

        def all_to_all_single(self, out, x, group=None):
            n = real.get_world_size(group)
            sent["all_to_all"] += (n - 1) * nbytes(x) // n  # x: this rank's pieces, one per rank
            return real.all_to_all_single(out, x, group=group)

        def all_reduce(self, x, group=None):
            n = real.get_world_size(group)
            sent["all_reduce"] += 2 * (n - 1) * nbytes(x) // n
            return real.all_reduce(x, group=group)

    collectives.dist = Counting()
    try:
        trainer.fit()
    finally:
        collectives.dist = real
        trainer.close()
    return sent


def _sp_reference(q, k, v, w):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
    (out * w).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _cp_check(name, attention, impl, heads, kv_heads, seq, group):
    from memtrain.distributed.context_parallel import shard_positions

    n, r = dist.get_world_size(group), dist.get_rank(group)
    g = torch.Generator().manual_seed(seq * 100 + heads * 10 + kv_heads)  # the same tensors on every rank
    b, dh = 2, 8
    q = torch.randn(b, heads, seq, dh, generator=g)
    k, v = torch.randn(b, kv_heads, seq, dh, generator=g), torch.randn(b, kv_heads, seq, dh, generator=g)
    w = torch.randn(b, heads, seq, dh, generator=g)
    out, dq, dk, dv = _sp_reference(q, k, v, w)
    pos = shard_positions(seq, n, r, impl)
    ql, kl, vl = (t[:, :, pos].clone().requires_grad_() for t in (q, k, v))
    outl = attention(ql, kl, vl)
    (outl * w[:, :, pos]).sum().backward()
    # fp32: the same softmax sums, blockwise (log-sum-exp merges) or after all-to-alls, in another
    # order than SDPA's; differences are round-off of O(1e-6) relative to values of O(1)
    tol = dict(rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(outl, out[:, :, pos], **tol, msg=f"{name}: output")
    for got, want, what in ((ql.grad, dq, "dq"), (kl.grad, dk, "dk"), (vl.grad, dv, "dv")):
        torch.testing.assert_close(got, want[:, :, pos], **tol, msg=f"{name}: {what}")


def cp_attention(folder: Path) -> list[str]:
    """Ulysses and Ring Attention on each rank's shard of q, k, v against causal SDPA on the whole
    sequence, forward and backward, for several head / KV-head counts; the names of the checks."""
    from memtrain.distributed.context_parallel import RingAttention, UlyssesAttention
    from memtrain.models.gpt.model import CoreAttention

    group = dist.new_group(list(range(dist.get_world_size())))
    n = dist.get_world_size()
    ring, ulysses = RingAttention(group), UlyssesAttention(CoreAttention(), group)
    done = []
    for heads, kv_heads in ((4, 4), (4, 2), (4, 1)):
        _cp_check(f"ring h{heads} kv{kv_heads}", ring, "ring", heads, kv_heads, 8 * n, group)
        _cp_check(f"ulysses h{heads} kv{kv_heads}", ulysses, "ulysses", heads, kv_heads, 6 * n, group)
        done += [f"ring h{heads} kv{kv_heads}", f"ulysses h{heads} kv{kv_heads}"]
    dist.destroy_process_group(group)
    return done


# -- preparation in the test process, before a launch ----------------------------------------------

def era5_32x64(folder: Path) -> None:
    """A synthetic ERA5-format data set on a 32 x 64 grid, 8 time steps, in FOLDER/era5 (the ranks
    only read it)."""
    from memtrain.data.era5_synthetic import write

    write(folder / "era5", 32, 64, time_steps=8)


def dap_stacks(folder: Path) -> list[str]:
    """The extra-MSA and template pair stacks under DAP against one process (dap_stacks.py)."""
    from tests.distributed.dap_stacks import check_stacks

    return check_stacks(dist.group.WORLD)


def aligned_chain_data(folder: Path) -> None:
    """A data root in FOLDER/data holding only 2Q2K (chain A's alignment has several rows, so every
    sample has extra-MSA rows): links to the real files."""
    from tests.unit.alphafold.helpers import aligned_chain_root

    aligned_chain_root(folder / "data")


# -- DeepSpeed ZeRO: the storages held inside the optimizer step -----------------------------------

def _tensors_in(obj, path: str, seen: set[int], found: dict[int, tuple[int, str]], depth: int = 0) -> None:
    """Every tensor reachable from `obj` through attributes, dicts, lists and tuples (and each
    tensor's .grad), recorded once per storage as {data_ptr: (bytes, first path)}."""
    if id(obj) in seen or depth > 8:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "meta" and obj.untyped_storage().nbytes():
            storage = obj.untyped_storage()
            found.setdefault(storage.data_ptr(), (storage.nbytes(), path))
        if obj.grad is not None:
            _tensors_in(obj.grad, f"{path}.grad", seen, found, depth + 1)
        for attr in ("ds_tensor",):  # ZeRO-3's partition of a parameter
            if isinstance(getattr(obj, attr, None), torch.Tensor):
                _tensors_in(getattr(obj, attr), f"{path}.{attr}", seen, found, depth + 1)
        return
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple, set)):
        items = enumerate(obj)
    elif type(obj).__module__.startswith(("deepspeed", "torch.optim", "memtrain")) and hasattr(obj, "__dict__"):
        items = vars(obj).items()
    elif isinstance(obj, torch.nn.Module):
        items = vars(obj).items()
    else:
        return
    for key, value in list(items):
        name = f"[{key}]" if isinstance(key, int) else "[tensor]" if isinstance(key, torch.Tensor) else f".{key}"
        _tensors_in(value, f"{path}{name}", seen, found, depth + 1)


def zero_step_storages(folder: Path, *overrides: str) -> dict:
    """Train one step under DeepSpeed ZeRO and, on the second step, inside the torch optimizer's
    step (its post-hook: the moments exist, the fp32 gradient partition is still attached, the
    update not yet copied into the low-precision parameters), sum the distinct storages (by
    untyped_storage data_ptr) reachable from DeepSpeed's engine, its ZeRO optimizer, the torch
    optimizer and the module's parameters and gradients. Rank 0's {"total": bytes, "by_path":
    {first path: bytes}}."""
    cfg = load_config([*overrides, "trainer.max_steps=2"])
    trainer = Trainer(cfg, folder / "run")
    seen: dict = {}
    try:
        zero_opt = trainer.strategy.optimizer
        base = zero_opt.optimizer
        calls = {"n": 0}

        def walk(optimizer, args, kwargs):
            calls["n"] += 1
            if trainer.step < 1 or seen:  # the first step makes the moments; measure the second
                return
            found: dict[int, tuple[int, str]] = {}
            visited: set[int] = set()
            for p in trainer.strategy.engine.module.parameters():
                _tensors_in(p, "module.param", visited, found)
            _tensors_in(base, "torch_optimizer", visited, found)
            _tensors_in(zero_opt, "zero_optimizer", visited, found)
            _tensors_in(trainer.strategy.engine, "engine", visited, found)
            seen.update(found)

        handle = base.register_step_post_hook(walk)
        trainer.fit()
        handle.remove()
        by_path: dict[str, int] = {}
        for nbytes, path in seen.values():
            by_path[path] = by_path.get(path, 0) + nbytes
        return {"total": sum(b for b, _ in seen.values()), "by_path": by_path}
    finally:
        trainer.close()


# -- host memory: resident set size at start-up and in the steps ---------------------------------

def host_rss(folder: Path, *overrides: str) -> dict:
    """What building and training a model adds to each rank's resident host memory (RSS): the
    peak while the Trainer is built (model build, precision casts, the strategy's wrapping:
    deepspeed.initialize for zero*) and the peak over the steps (trainer.max_steps), each above
    the RSS this process had before, with the same modules imported (deepspeed too) and the freed
    heap released (memtrain.memory.host_rss). A one-block model of the same config is built and
    trained first, so the lazy, one-time costs of this code path (DeepSpeed's submodule imports,
    gloo's buffers, the data loader's first batch) belong to the baseline. Every rank's {"baseline", "startup_peak",
    "after_startup", "steady_peak", "after_steps"} in bytes, rank order."""
    from memtrain.memory import host_rss as rss

    cfg = load_config(list(overrides))
    if cfg.parallel.name.startswith("zero"):
        import deepspeed  # noqa: F401  (its import is baseline, not what the model adds)
    warm = Trainer(load_config([*overrides, "model.n_layers=1", "trainer.max_steps=1"]), folder / "warm-up")
    try:
        warm.fit()
    finally:
        warm.close()
    del warm
    rss.release_freed_memory()
    baseline = rss.rss_bytes()
    rss.reset_peak()
    trainer = Trainer(cfg, folder / "run")
    try:
        startup_peak, after_startup = rss.peak_rss_bytes() - baseline, rss.rss_bytes() - baseline
        rss.reset_peak()
        trainer.fit()
        steady_peak, after_steps = rss.peak_rss_bytes() - baseline, rss.rss_bytes() - baseline
    finally:
        trainer.close()
    mine = {"baseline": baseline, "startup_peak": startup_peak, "after_startup": after_startup,
            "steady_peak": steady_peak, "after_steps": after_steps}
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every


# -- building on the meta device (trainer.init_device=meta) ----------------------------------------

def meta_init(folder: Path, *overrides: str) -> dict:
    """Build the Trainer under LiveBytes (every tensor storage this rank allocates, a DTensor as its
    local shard), then train trainer.max_steps steps. Returns the construction's peak bytes, the
    model's full and this rank's shard bytes, each local shard's statistics, every rank's first
    values of each shard (to compare ranks) and the logged losses."""
    from memtrain.memory.measure import LiveBytes

    cfg = load_config(list(overrides))
    live = LiveBytes()
    with live:
        trainer = Trainer(cfg, folder / "run")
    try:
        params = dict(trainer.model.named_parameters())
        local = {n: (p.to_local() if isinstance(p, DTensor) else p).detach().float() for n, p in params.items()}
        heads = {n: t.flatten()[:64].clone() for n, t in local.items()}
        everyone: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(everyone, heads)
        result = {
            "init_device": trainer.init_device.name,  # an InitDevice; its name: result.pt is loaded weights-only
            "peak_bytes": live.peak,
            "full_bytes": sum(p.numel() * p.element_size() for p in params.values()),  # a DTensor's numel is global
            "shard_bytes": sum(t.numel() * params[n].element_size() for n, t in local.items()),
            "stats": {n: (t.numel(), float(t.mean()), float(t.std())) for n, t in local.items() if t.numel() > 1},
            "heads": everyone,
            "n_layers": cfg.model.get("n_layers"),
        }
        records = trainer.fit()
        result["losses"] = [r["loss"] for r in records]
        return result
    finally:
        trainer.close()


def zero_init(folder: Path, *overrides: str) -> dict:
    """ZeRO-3 (trainer.init_device=eager, or meta: the model built inside deepspeed.zero.Init):
    the Trainer built under LiveBytes, then every parameter gathered (deepspeed.zero.GatheredParameters)
    and compared with an eager build of the same seed cast as the eager path casts it (param_dtype,
    then DeepSpeed's bf16/fp16), the buffers likewise; the weight-decay groups against the eager
    model's; then trainer.max_steps steps. Returns the peak bytes of the model's build (until the
    wrapping starts) and of the whole construction (with DeepSpeed's buffers, e.g. its reduce
    bucket), the whole parameters' bytes, this rank's partitions' bytes, the largest module's fp32
    parameter bytes, the names that differ and the losses."""
    import deepspeed

    from memtrain.memory.measure import LiveBytes
    from memtrain.models import get_spec
    from memtrain.optim.builder import param_groups

    import memtrain.engine.trainer as trainer_module

    cfg = load_config(list(overrides))
    live, build = LiveBytes(), {}
    wrap = trainer_module.parallelize

    def parallelize(*args, **kwargs):  # the model is built: its peak, before DeepSpeed's buffers
        build["peak"] = live.peak
        return wrap(*args, **kwargs)

    trainer_module.parallelize = parallelize
    try:
        with live:
            trainer = Trainer(cfg, folder / "run")
    finally:
        trainer_module.parallelize = wrap
    try:
        module = trainer.strategy.module
        params = dict(module.named_parameters())
        result = {
            "init_device": trainer.init_device.name,  # an InitDevice; its name: result.pt is loaded weights-only
            "build_peak_bytes": build["peak"],
            "peak_bytes": live.peak,
            "full_bytes": sum(p.ds_numel * p.element_size() for p in params.values()),
            "partition_bytes": sum(p.ds_tensor.numel() * p.element_size() for p in params.values()),
            "largest_module_bytes": max(sum(p.ds_numel * 4 for p in m.parameters(recurse=False))
                                        for m in module.modules()),  # fp32 while it is built
        }
        groups = [len(g["params"]) for g in param_groups(module, 0.1)]  # as the strategy saw them: partitioned
        with deepspeed.zero.GatheredParameters(list(params.values())):
            gathered = {n.replace("_checkpoint_wrapped_module.", ""): p.detach().clone() for n, p in params.items()}
        torch.manual_seed(cfg.trainer.seed)
        eager = get_spec(cfg.model.arch).build_model(cfg.model).to(trainer.precision.param_dtype)
        want = dict(eager.named_parameters())
        result["names_equal"] = want.keys() == gathered.keys()
        result["params_differ"] = [n for n, p in want.items()
                                   if not torch.equal(p.detach().to(gathered[n].dtype), gathered[n])]
        buffers = {n.replace("_checkpoint_wrapped_module.", ""): b for n, b in module.named_buffers()}
        result["buffers_differ"] = [n for n, b in eager.named_buffers()
                                    if n not in buffers or not (b.dtype == buffers[n].dtype and torch.equal(b, buffers[n]))]
        result["groups"] = (groups, [len(g["params"]) for g in param_groups(eager, 0.1)])
        result["dtype"] = str(next(iter(gathered.values())).dtype)
        result["losses"] = [r["loss"] for r in trainer.fit()]
        return result
    finally:
        trainer.close()
