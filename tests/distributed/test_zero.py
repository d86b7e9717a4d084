"""DeepSpeed ZeRO-1/2/3 and their offloads (gloo, CPU, 2 processes) against the single-process run
of test_data_parallel: same gradients, losses and gradient norms, an exact resume, the generated
DeepSpeed config, and checkpoint loading that never unpickles code.

Tolerances: everything runs in fp32. The two ranks compute the same per-token terms as the one
process (micro-batch 4 on each rank instead of 8), summed in another order and averaged over the
ranks by DeepSpeed's reduce(-scatter), then updated by the same torch AdamW on flat partitions.
That reorders fp32 sums only: gradients agree to a few ulps of their scale (rtol 1e-5, atol 1e-7,
as for DDP/FSDP) and three steps later the losses still agree to 1e-6 relative (seen: <= 2e-7).
A real fault is far larger: gradients accumulated twice under optimizer offload moved the third
loss by 2e-4, parameters rounded to bf16 by the NVMe swapper moved the first loss by 5e-5.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memtrain.config.errors import ConfigError
from memtrain.distributed.mesh import ParallelDims
from memtrain.engine.checkpoint import Checkpointer
from memtrain.engine.trainer import Trainer
from memtrain.safe_pickle import UnsafePickleError
from tests.conftest import TINY
from tests.distributed import test_data_parallel
from tests.distributed.batch import Case, batched, worker_env
from tests.distributed.cases import run
from tests.distributed.harness import torchrun_worker
from tests.distributed.test_data_parallel import STEPS

if importlib.util.find_spec("deepspeed") is None:  # found, not imported: importing it costs collection seconds
    pytest.skip("needs DeepSpeed", allow_module_level=True)

from memtrain.distributed.zero import deepspeed_config, load_checkpoint_file  # imports deepspeed only when used

reference = test_data_parallel.reference  # the same single-process run (module-scoped fixture) as DDP/FSDP's

ZERO_STEPS = ["trainer.micro_batch_size=4", "trainer.grad_accum=2"]  # x 2 ranks = the reference's 8 x 2
SINGLE = [*TINY, *STEPS, "trainer.micro_batch_size=8", "trainer.grad_accum=2"]  # the reference's run


def out(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name / "result.pt"


def zero(*overrides: str, fn: str = "train", slow: bool = False) -> Case:
    return Case(2, fn, (*TINY, *STEPS, *overrides, *ZERO_STEPS), slow=slow)


def assert_matches(result: dict, expected: dict, case: str) -> None:
    assert result["grads"].keys() == expected["grads"].keys(), case
    for name, g in expected["grads"].items():
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-5, atol=1e-7, msg=f"{case}: {name}")
    assert result["losses"] == pytest.approx(expected["losses"], rel=1e-6), case
    assert result["grad_norms"] == pytest.approx(expected["grad_norms"], rel=1e-5), case


# -- the same run as one process -----------------------------------------------------------------

CASES = {
    "zero1": zero("parallel=zero1", slow=True),
    "zero2": zero("parallel=zero2"),
    "zero3": zero("parallel=zero3"),
    "zero2-optimizer-cpu": zero("parallel=zero2", "offload=optimizer_cpu"),
    "zero3-params-cpu": zero("parallel=zero3", "offload=params_cpu", slow=True),
    # built inside deepspeed.zero.Init: the eager weights, partitioned module by module, so the same run
    "zero3-meta": zero("parallel=zero3", "trainer.init_device=meta"),
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", batched(__name__, CASES))
def test_zero_matches_single_process(case, launched, reference):
    assert_matches(launched(case), reference, case)


CLIP = ["trainer.grad_clip=0.3"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", batched(__name__, {"zero3-clipped": zero("parallel=zero3", *CLIP, slow=True)}))
def test_zero3_clips_like_single_process(case, launched, tmp_path):
    """The reference's gradient norms stay under 1; clip at 0.3 so DeepSpeed's clipping acts."""
    ref = run(str(out(tmp_path, "single")), [*SINGLE, *CLIP])
    assert max(ref["grad_norms"]) > 0.3
    assert_matches(launched(case), ref, case)


@pytest.fixture(scope="module")
def async_io_op():
    """Build (or load from the cache folder) DeepSpeed's async_io op in a fresh interpreter, so a
    first build does not count against a worker's timeout; skip where it cannot be built.
    .ci/run builds it before the tests (scripts/build_ops.py), so there this only loads it, or
    says (MEMTRAIN_OPS_UNAVAILABLE) that the build did not finish in its time."""
    if os.environ.get("MEMTRAIN_OPS_UNAVAILABLE"):
        pytest.skip(os.environ["MEMTRAIN_OPS_UNAVAILABLE"])
    proc = subprocess.run([sys.executable, "scripts/build_ops.py"], env=worker_env(), capture_output=True,
                          text=True, timeout=1500, check=False, cwd=Path(__file__).resolve().parents[2])
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip() or proc.stderr.strip()[-500:])
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(1800)
def test_zero3_nvme_matches_single_process(async_io_op, tmp_path):
    """ZeRO-Infinity: parameters and optimizer states on disk. DeepSpeed swaps only tensors of at
    least 1 MiB per rank (smaller ones stay in host memory), so the model is widened to dim=512:
    its feed-forward weights and the flat optimizer partition of the matrices then go to NVMe."""
    wide = ["model.dim=512"]
    ref = run(str(out(tmp_path, "single")), [*SINGLE, *wide])
    nvme = tmp_path / "nvme"
    result = torchrun_worker(2, out(tmp_path, "zero"), *TINY, *STEPS, "parallel=zero3", "offload=nvme",
                             f"offload.nvme_path={nvme}", *ZERO_STEPS, *wide, timeout=900)
    assert_matches(result, ref, "zero3-nvme")
    for rank in (0, 1):
        # the parameters were swapped in their own dtype (float32, not DeepSpeed's CPU default bf16)
        assert list((nvme / "zero_stage_3" / "float32params" / f"rank{rank}").glob("*_param.tensor.swp"))
        assert list((nvme / "zero_stage_3" / "optimizer" / f"rank{rank}").glob("exp_avg-*.tensor.swp"))


def test_non_finite_gradients_skip_the_step(compose, tmp_path, monkeypatch):
    """In this process, on a one-rank group: DeepSpeed skips an update whose gradient norm is
    inf, and the strategy reports it as skipped, as memtrain's own strategies do."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    trainer = Trainer(compose("parallel=zero2", "optimizer.lr=1e-2"), tmp_path)
    try:
        weight = trainer.model.module.output.weight
        before = weight.detach().clone()
        handle = weight.register_hook(lambda g: torch.full_like(g, float("inf")))
        result = trainer.train_step()
        handle.remove()
        assert result.skipped and math.isinf(result.grad_norm)
        assert torch.equal(weight, before), "DeepSpeed must not apply a step with inf gradients"
        result = trainer.train_step()
        assert not result.skipped and math.isfinite(result.grad_norm)
        assert not torch.equal(weight, before)
    finally:
        trainer.close()


# -- memtrain estimate against what DeepSpeed holds inside the optimizer step --------------------

GPT_TINY = ["model=gpt_tiny", "data=synthetic", "data.seq_len=32", "data.num_synthetic_tokens=20000",
            "trainer.micro_batch_size=2", "trainer.device=cpu", "optimizer=adamw"]
STEP_CASES = {f"zero{stage}-{precision}": Case(2, "zero_step_storages",
                                               (*GPT_TINY, f"parallel=zero{stage}", f"precision={precision}"))
              for stage in (1, 2, 3) for precision in ("fp32", "bf16")}


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", batched(__name__, STEP_CASES))
def test_estimate_matches_the_storages_deepspeed_holds_in_the_step(case, launched):
    """gpt_tiny (803,968 parameters) on 2 ranks: the distinct storages DeepSpeed's engine, its ZeRO
    optimizer, the torch optimizer and the module hold inside the second optimizer step, against
    the estimate's terms live in the step (persistent + step). 2%: the estimate counts one flat
    partition where DeepSpeed pads each parameter group to its alignment and makes the fp32
    gradient of one group at a time (the no-decay group's few hundred elements); seen: 0.02%.
    ZeRO-3's reduce bucket (500M elements, kept from init) would hide any other error, so it is
    compared exactly and the rest separately."""
    from memtrain.config.loader import load_config
    from memtrain.memory.estimator import estimate
    from memtrain.memory.zero_memory import ZeroTerm, in_step_bytes

    measured = launched(case)
    est = estimate(load_config([*case_args(case), "launcher.nproc_per_node=2"]))
    terms = [ZeroTerm(**t) for t in est.model_state_terms]
    bucket = sum(t.nbytes for t in terms if t.label == "reduce bucket (IPG)" and t.phase == "persistent")
    measured_bucket = sum(b for path, b in measured["by_path"].items() if ".ipg_buckets." in path)
    assert measured_bucket == bucket, f"{case}: reduce bucket {measured_bucket:,} B measured, {bucket:,} B estimated"
    rest, measured_rest = in_step_bytes(terms) - bucket, measured["total"] - measured_bucket
    assert rest == pytest.approx(measured_rest, rel=0.02), \
        f"{case}: {measured_rest:,} B held in the step besides the bucket, {rest:,} B estimated"


def case_args(case: str) -> tuple[str, ...]:
    from tests.distributed.batch import REGISTRY

    return REGISTRY[case].args


# -- checkpoints -----------------------------------------------------------------------------------


RESUME = {"zero3-resume": Case(2, "zero3_resume", (*TINY, *STEPS, "parallel=zero3", *ZERO_STEPS,
                                                    "trainer.max_steps=6"), slow=True)}


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", batched(__name__, RESUME))
def test_zero3_resume_continues_with_identical_losses(case, launched):
    runs = launched(case)
    straight, saving, resumed = runs["straight"], runs["saving"], runs["resumed"]
    assert saving["losses"] == straight["losses"]  # saving does not disturb the run

    folder = launched.folder(case) / "saving" / "run" / "checkpoints"
    found = Checkpointer(folder).checkpoints()
    assert [p.name for p in found] == ["step_00000004", "step_00000006"]
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000004", "step_00000006"]  # no temporary left
    step4 = found[0]
    assert json.loads((step4 / "meta.json").read_text())["step"] == 4
    assert sorted(p.name for p in step4.glob("rng_rank*.pt")) == ["rng_rank00000.pt", "rng_rank00001.pt"]
    assert len(list((step4 / "deepspeed").glob("*optim_states.pt"))) == 2  # one ZeRO partition per rank

    # resumed from step 4: same ranks, same data, same operations from the restored state: bitwise the same
    assert resumed["losses"] == straight["losses"][4:]
    assert resumed["grad_norms"] == straight["grad_norms"][4:]


@pytest.mark.slow
def test_deepspeed_checkpoint_survives_a_crash_at_every_point_of_the_commit(compose, tmp_path, monkeypatch):
    """DeepSpeed's files go through the same commit routine as DCP's (tests/unit/test_checkpoint.py
    injects a crash at every step of it for DCP): here, on a one-rank group in this process, each
    crash while re-saving step 2 with keep_last=1 leaves a complete step 2 that DeepSpeed loads."""
    from tests.unit.test_checkpoint import Crash, crash_at

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    trainer = Trainer(compose("parallel=zero2", "trainer.max_steps=4", "trainer.keep_last=1"), tmp_path / "run")
    try:
        trainer.fit(until=2)
        folder, pristine = trainer.checkpointer.folder, tmp_path / "pristine"
        trainer.save()
        shutil.copytree(folder, pristine)
        with monkeypatch.context() as m:
            steps = crash_at(m, None)
            trainer.save()
        for k in range(len(steps)):
            shutil.rmtree(folder)
            shutil.copytree(pristine, folder)
            with monkeypatch.context() as m:
                crash_at(m, k)
                with pytest.raises(Crash):
                    trainer.save()
            latest = Checkpointer(trainer.checkpointer.folder).latest()
            assert latest is not None and (latest / "deepspeed").is_dir(), (k, steps[k])
            assert json.loads((latest / "meta.json").read_text())["step"] == 2
        trainer.load(latest)  # the copy a crash left behind is a whole DeepSpeed checkpoint
        assert trainer.step == 2
        trainer.save()
        assert sorted(p.name for p in trainer.checkpointer.folder.iterdir()) == ["step_00000002"]
    finally:
        trainer.close()


def test_deepspeed_trainers_in_sequence_and_a_failed_build_leave_no_group_behind(compose, tmp_path, monkeypatch):
    """Two DeepSpeed trainers built one after the other in one process (DeepSpeed caches its groups
    in module globals; the second must not find the first's destroyed group), and a build that
    fails after the one-rank group was made leaves neither the group nor the LOCAL_RANK DeepSpeed
    reads behind (a later run in the process would read a launch environment as a launch); the
    one-rank group sets no RANK/WORLD_SIZE/MASTER_PORT at all (an in-memory store, no port)."""
    import torch.distributed as dist

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for k in range(2):
        trainer = Trainer(compose("parallel=zero1", "trainer.max_steps=1"), tmp_path / f"run{k}")
        try:
            assert os.environ.get("LOCAL_RANK") == "0" and not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
            assert math.isfinite(trainer.train_step().loss)
        finally:
            trainer.close()
        assert not dist.is_initialized()
    with pytest.raises(ConfigError, match="optimizer"):
        Trainer(compose("parallel=zero1", "optimizer=adafactor"), tmp_path / "refused")
    assert not dist.is_initialized()
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} & set(os.environ)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_checkpoint_files_load_without_unpickling_code(tmp_path, monkeypatch):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    fine = tmp_path / "fine.pt"
    scaler = DynamicLossScaler(init_scale=2**16, scale_window=100, min_scale=1, delayed_shift=1,
                               consecutive_hysteresis=False)
    torch.save({"zero_stage": ZeroStageEnum.weights, "loss_scaler": scaler, "shape": torch.Size([2, 2]),
                "fragment": fragment_address(numel=4, start=0), "t": torch.ones(2)}, fine)
    state = load_checkpoint_file(fine)
    assert state["zero_stage"] is ZeroStageEnum.weights and state["loss_scaler"].cur_scale == 2**16

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"module": _RunsCode()}, f, protocol=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        load_checkpoint_file(evil)
    assert not (tmp_path / "pwned.txt").exists()


# -- the generated DeepSpeed config (no processes) -------------------------------------------------

DP2 = ParallelDims(dp_replicate=1, dp_shard=2, tp=1, pp=1, cp=1, dap=1, world_size=2)


def test_deepspeed_config_zero1_fp32(compose):
    ds = deepspeed_config(compose("parallel=zero1", "trainer.grad_accum=3", "trainer.grad_clip=0.5"), DP2, "cpu")
    assert ds["zero_optimization"]["stage"] == 1
    batch = (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"])
    assert batch == (4, 3, 24)  # 4 x 3 x 2 ranks
    assert ds["gradient_clipping"] == 0.5
    assert "bf16" not in ds and "fp16" not in ds  # fp32
    assert "offload_optimizer" not in ds["zero_optimization"] and "offload_param" not in ds["zero_optimization"]
    assert ds["zero_allow_untested_optimizer"] is True and ds["zero_force_ds_cpu_optimizer"] is False


def test_deepspeed_config_zero2_bf16_optimizer_cpu(compose):
    cfg = compose("parallel=zero2", "precision=bf16", "offload=optimizer_cpu", "trainer.grad_clip=0")
    ds = deepspeed_config(cfg, DP2, "cuda")
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": True} and "fp16" not in ds
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in ds["zero_optimization"]
    assert ds["gradient_clipping"] == 0.0  # off


def test_deepspeed_config_zero3_fp16_nvme(compose, tmp_path):
    cfg = compose("parallel=zero3", "precision=fp16", "offload=nvme", f"offload.nvme_path={tmp_path}",
                  "precision.init_scale=1024", "precision.growth_interval=50")
    ds = deepspeed_config(cfg, DP2, "cpu")
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    # pin_memory: page-locked buffers only mean something for a GPU
    assert zero["offload_optimizer"] == {"device": "nvme", "nvme_path": str(tmp_path), "pin_memory": False}
    assert zero["offload_param"] == {"device": "nvme", "nvme_path": str(tmp_path), "pin_memory": False}
    fp16 = ds["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0  # dynamic
    assert (fp16["initial_scale_power"], fp16["loss_scale_window"], fp16["hysteresis"]) == (10, 50, 1)
    assert "bf16" not in ds


def test_deepspeed_config_zero3_params_cpu(compose):
    zero = deepspeed_config(compose("parallel=zero3", "offload=params_cpu"), DP2, "cpu")["zero_optimization"]
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert "offload_optimizer" not in zero


@pytest.mark.parametrize("overrides, key", [
    (["parallel=zero2", "offload=params_cpu"], "offload.name"),  # parameter offload is ZeRO-3's
    (["parallel=zero1", "precision=fp16", "precision.init_scale=1000"], "precision.init_scale"),  # not a power of 2
    (["parallel=zero1", "precision=fp16", "precision.growth_factor=4"], "precision.growth_factor"),  # DeepSpeed: 2
    (["parallel=ddp"], "parallel.name"),
])
def test_deepspeed_config_refuses_what_deepspeed_cannot_do(compose, overrides, key):
    with pytest.raises(ConfigError) as err:
        deepspeed_config(compose(*overrides), DP2, "cpu")
    assert err.value.key == key
