"""Every failure a user can cause is one clear paragraph (naming the key or the file), exit code 2
and no traceback, raised before anything starts where it can be: by kind, each with the inputs of
the adversarial pass that found it. Checkpoints that would run code are refused through the
command line too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memtrain import cli
from tests.conftest import REPO, TINY, run_cli
from tests.payloads import FORMS, assert_runs_code, touch

LONG = "a" * 300


def fails_cleanly(capsys, args: list[str], *words: str) -> str:
    """memtrain ARGS exits with code 2 (returned, or raised from inside the Hydra job) printing one
    paragraph that holds `words` and no traceback."""
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Error executing job" not in err, err
    text = " ".join(err.split())
    for word in words:
        assert word in text, (word, text)
    return text


# -- the config: validation never raises itself, values are checked where they are declared ------------

CONFIG_CASES = [
    # validation itself raised (InterpolationKeyError, MissingMandatoryValue, OSError: name too long)
    (["train", "trainer.max_steps=${nonexistent}"], ["trainer.max_steps", "nonexistent"]),
    (["train", "~model"], ["'model'", "value is required"]),
    (["train", f"trainer.resume={LONG}"], ["trainer.resume", "File name too long"]),
    (["train", f"data.root={LONG}"], ["data.root", "File name too long"]),
    (["train", "data.root=${oc.env:MEMTRAIN_SURELY_UNSET}"], ["data.root", "MEMTRAIN_SURELY_UNSET"]),
    # values that passed validation and failed after the job started
    (["train", "optimizer.betas=[2.0,0.9]"], ["optimizer.betas", "at least 0 and less than 1"]),
    (["train", "optimizer.betas=[0.9]"], ["optimizer.betas", "list of 2"]),
    (["train", "optimizer.weight_decay=-1"], ["optimizer.weight_decay", "at least 0"]),
    (["train", "model.init_std=-1"], ["model.init_std", "at least 0"]),
    (["train", "data.formats=[bogus]"], ["data.formats", "bogus", "fasta, a3m, mmcif"]),
    (["train", "optimizer._target_=no.such.Optimizer"], ["optimizer._target_", "optimizer=adamw"]),
    (["train", "optimizer._target_=os.system"], ["optimizer._target_", "torch.optim.Optimizer"]),
    (["train", "+recipe=alphafold_tiny", "trainer.seed=-1"], ["trainer.seed", "at least 0"]),
    (["train", "optimizer.lr=inf"], ["optimizer.lr", "finite"]),
    (["train", "optimizer.lr=nan"], ["optimizer.lr", "finite"]),
    # a model-parallel dimension the model's family does not declare (memtrain.models.family)
    (["train", "model=gpt_tiny", "parallel=dap", "launcher.nproc_per_node=2", "trainer.max_steps=1"],
     ["'parallel.dap'", "model.arch=gpt does not support parallel.dap", "model.arch with parallel.dap: alphafold"]),
    (["estimate", "model=gpt_tiny", "parallel=dap", "launcher.nproc_per_node=2"],
     ["'parallel.dap'", "model.arch=gpt", "alphafold"]),
    (["plan", "model=gpt_tiny", "parallel=dap", "hardware.gpus=2"], ["'parallel.dap'", "model.arch=gpt", "alphafold"]),
    (["estimate", "+recipe=weather_fuxi_tiny", "parallel=spatial", "launcher.nproc_per_node=2"],
     ["'parallel.spatial'", "model.arch=fuxi", "pangu"]),
    # file system, before anything starts
    (["train", "data.root=/etc/hostname"], ["data.root", "not a folder"]),
    (["train", "parallel=zero3", "offload=nvme", "offload.nvme_path="], ["offload.nvme_path", "empty path"]),
    # the planner's inputs
    (["plan", "hardware.gpus=0"], ["hardware.gpus", "at least 1"]),
    (["plan", "hardware.gpu_mem_gb=0"], ["hardware.gpu_mem_gb", "positive"]),
    (["plan", "--global-batch", "1000000000000"], ["--global-batch", "1000000000000"]),
    # unbounded work, refused at once
    (["estimate", "model.n_layers=100000"], ["'model'", "100000 blocks"]),
    (["train", "-m", "trainer.seed=range(512)"], ["-m", "more than 256 jobs", "trainer.seed"]),
    (["train", "-m", "trainer.seed=range(1000000000)", "optimizer=adamw,lion"], ["-m", "more than 256 jobs"]),
    # found by the adversarial pass: unbounded work or a run that can never apply an update
    (["train", "precision=fp16", "precision.init_scale=1e300"], ["precision.init_scale", "at most"]),
    (["train", "trainer.grad_accum=1000000000000"], ["trainer.grad_accum", "at most"]),
    (["train", "+recipe=alphafold_tiny", "model.num_recycles=1000000"], ["model.num_recycles", "at most 32"]),
    (["train", "launcher.max_restarts=1000000"], ["launcher.max_restarts", "at most 100"]),
    (["train", "data=synthetic", "data.num_synthetic_tokens=1000000000000"], ["data.num_synthetic_tokens", "at most"]),
    (["plan", "--validate", "--steps", "1000000"], ["--steps", "at most 1000"]),
    # tensors too large for torch to describe (more than 2^63 bytes, a size beyond int64), seen as tracebacks
    (["estimate", "model.dim=1000000000"], ["'model'", "too large to describe", "Storage size calculation overflowed"]),
    (["estimate", "model.vocab_size=100000000000000000000"], ["'model'", "too large to describe", "Overflow"]),
    (["train", "model=gpt_tiny", "data=synthetic", "trainer.device=cpu", "model.dim=1000000000"],
     ["'model'", "too large to describe"]),
]


@pytest.mark.parametrize("args,words", CONFIG_CASES, ids=[" ".join(a)[:60] for a, _ in CONFIG_CASES])
def test_config_errors_are_one_paragraph(capsys, args, words):
    fails_cleanly(capsys, args, *words)


# -- the machine: what cannot fit is refused before it is allocated --------------------------------------


def test_a_batch_that_cannot_fit_is_refused_before_allocation(capsys, tmp_path):
    fails_cleanly(capsys, ["train", *TINY, "trainer.micro_batch_size=1000000000000", f"hydra.run.dir={tmp_path}"],
                  "trainer.micro_batch_size", "RAM")
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_run_folder_that_cannot_be_made_is_named(capsys):
    fails_cleanly(capsys, ["train", *TINY, "trainer.max_steps=1", "hydra.run.dir=/proc/memtrain_run"], "/proc/memtrain_run")


# -- checkpoints: damaged, mismatched, unsafe ----------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert cli.main(["train", *TINY, "trainer.max_steps=1", "trainer.save_every=1", f"hydra.run.dir={run}"]) == 0
    return run / "checkpoints" / "step_00000001"


def truncate(path: Path) -> None:
    shard = path / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def edit_meta(path: Path, **model) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["config"]["model"].update(model)
    (path / "meta.json").write_text(json.dumps(meta))


DAMAGE = {
    "truncated shard": (truncate, [], ["cannot load checkpoint", "__0_0.distcp is shorter", "truncated"]),
    "garbage .metadata": (lambda p: (p / ".metadata").write_bytes(b"garbage" * 50), [], [".metadata", "not a valid pickle"]),
    "no .metadata": (lambda p: (p / ".metadata").unlink(), [], [".metadata is missing"]),
    "garbage meta.json": (lambda p: (p / "meta.json").write_text("{nope"), [], ["meta.json", "not valid JSON"]),
    "meta.json without config": (lambda p: (p / "meta.json").write_text('{"step": 1}'), [], ["holds no run config"]),
    "model size mismatch": (lambda p: None, ["model.dim=128"], ["model.dim 64 -> 128"]),
    "meta edited, shards not": (lambda p: edit_meta(p, dim=128), ["model.dim=128"], ["Size mismatch", "model.tok_embeddings.weight"]),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_or_mismatched_checkpoint_is_named(case, capsys, checkpoint, tmp_path):
    damage, extra, words = DAMAGE[case]
    path = tmp_path / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, path)
    damage(path)
    fails_cleanly(capsys, ["train", *TINY, "trainer.max_steps=2", f"trainer.resume={path}", *extra,
                           f"hydra.run.dir={tmp_path / 'run'}"], str(path), *words)


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_by_train_resume(checkpoint, tmp_path):
    """The issue's exploit, from a shell: a .metadata whose dotted name reaches os.system."""
    marker = tmp_path / "marker"
    payload = FORMS["dotted-stack-global"](touch(marker))
    assert_runs_code(payload, marker)
    path = tmp_path / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, path)
    (path / ".metadata").write_bytes(payload)
    proc = run_cli("train", *TINY, "trainer.max_steps=2", f"trainer.resume={path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    text = " ".join(proc.stderr.split())
    assert "refusing to load" in text and str(path / ".metadata") in text and "Traceback" not in proc.stderr, text
    assert not marker.exists()


@pytest.fixture(scope="module")
def qat_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("qat")
    assert cli.main(["train", *TINY, "precision.qat=int8", "trainer.max_steps=1", "trainer.save_every=1",
                     f"hydra.run.dir={run}"]) == 0
    return run / "checkpoints" / "step_00000001"


@pytest.mark.parametrize("form", ["dotted-stack-global", "builtins-getattr", "reduce"])
def test_a_crafted_checkpoint_is_refused_by_export(form, capsys, qat_checkpoint, tmp_path):
    marker = tmp_path / "marker"
    payload = FORMS[form](touch(marker))
    assert_runs_code(payload, marker)
    path = tmp_path / qat_checkpoint.name
    shutil.copytree(qat_checkpoint, path)
    (path / ".metadata").write_bytes(payload)
    fails_cleanly(capsys, ["export", str(path), str(tmp_path / "out")], "refusing to load", str(path / ".metadata"))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_export_refuses_a_file_as_target_and_a_meta_without_config(capsys, qat_checkpoint, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    fails_cleanly(capsys, ["export", str(qat_checkpoint), str(target)], str(target), "is a file")
    path = tmp_path / qat_checkpoint.name
    shutil.copytree(qat_checkpoint, path)
    (path / "meta.json").write_text('{"step": 1}')
    fails_cleanly(capsys, ["export", str(path), str(tmp_path / "out")], "meta.json", "no run config")


def test_export_checks_the_stored_model_before_building_it(capsys, qat_checkpoint, tmp_path, monkeypatch):
    """A meta.json edited to dim 65536 (17 GB of weights) is refused from the shapes DCP's metadata
    records, before any tensor is allocated."""
    from memtrain.engine import export

    allocated = []
    monkeypatch.setattr(export, "get_model_state_dict", lambda model: allocated.append(model))
    path = tmp_path / qat_checkpoint.name
    shutil.copytree(qat_checkpoint, path)
    edit_meta(path, dim=65536)
    fails_cleanly(capsys, ["export", str(path), str(tmp_path / "out")], str(path), "do not match",
                  "[64, 64] in the checkpoint, [64, 65536] in its config")
    assert not allocated


# -- data ----------------------------------------------------------------------------------------------


def test_era5_nans_are_named_with_file_and_variable(tmp_path):
    xr = pytest.importorskip("xarray")
    from memtrain.data.era5 import ERA5Fields
    from memtrain.data.era5_synthetic import write
    from memtrain.data.errors import DataFormatError

    write(tmp_path, 8, 16, [500, 850], 4, seed=0, fmt="netcdf")
    victim = [f for f in sorted(tmp_path.glob("*.nc")) if f.name != "stats.nc"][-1]
    with xr.open_dataset(victim) as ds:
        data = ds.load()
    data["t"][0, 0, 0, 0] = np.nan
    victim.unlink()
    data.to_netcdf(victim)
    fields = ERA5Fields(tmp_path, ["z", "t"], ["msl"], [500, 850])
    with pytest.raises(DataFormatError) as info:
        for t in range(fields.n_time):
            fields.step(t)
    assert str(victim) in str(info.value) and "'t'" in str(info.value) and "NaN" in str(info.value)


def test_a_zarr_store_with_pickled_chunks_is_refused(tmp_path):
    from memtrain.data.era5 import _open
    from memtrain.data.errors import DataFormatError

    store = tmp_path / "x.zarr"
    (store / "x").mkdir(parents=True)
    (store / ".zgroup").write_text('{"zarr_format": 2}')
    (store / "x" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "|O", "compressor": None, "fill_value": 0,
        "order": "C", "filters": [{"id": "pickle", "protocol": 5}]}))
    with pytest.raises(DataFormatError, match="refusing to read .*pickle"):
        _open(store)


def test_an_unreadable_data_folder_says_permission_denied(tmp_path, monkeypatch):
    """As root a chmod 000 folder stays readable, so the listing is made to fail as it does for an
    ordinary user; pathlib's rglob would have skipped it and reported no sequences."""
    from memtrain.data.errors import DataFormatError
    from memtrain.data.sequences import load_protein_sequences

    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "a.fasta").write_text(">a\nMKV\n")
    real = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(locked))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataFormatError, match=f"{locked}: permission denied"):
        load_protein_sequences(tmp_path)


def test_data_root_is_checked_only_where_data_is_read(compose, tmp_path):
    """A missing data.root is refused for data read from files, and ignored by the random-token
    source, which reads none (a root left over from another data option does not stop it)."""
    from memtrain.config.errors import ConfigError
    from memtrain.config.validate import validate

    missing = tmp_path / "no_such_folder"
    validate(compose(f"data.root={missing}"))  # TINY selects data=synthetic
    with pytest.raises(ConfigError, match=r"data\.root(.|\n)*does not exist"):
        validate(compose("data=protein", f"data.root={missing}"))


# -- signals: finish the step, checkpoint, one line -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_at_a_step_boundary_with_a_checkpoint(sig, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.Popen([sys.executable, "-m", "memtrain.cli", "train", *TINY, "trainer.max_steps=100000",
                             f"hydra.run.dir={tmp_path}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "step " in line and "loss" in line:  # a step has completed: the loop is running
                break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"memtrain: stopped by {signal.Signals(sig).name} after step"), err
    step = int(lines[0].split("after step ")[1].split()[0])
    saved = tmp_path / "checkpoints" / f"step_{step:08d}"
    assert (saved / "meta.json").is_file() and str(saved) in lines[0]


@pytest.mark.slow
@pytest.mark.multiprocess  # memtrain's launcher starts 2 workers
def test_a_signal_stops_every_worker_of_a_launched_job(tmp_path):
    """Ctrl-C reaches the launcher and its workers (one process group): the workers finish the
    step and checkpoint, the launcher exits 130 with the one line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.Popen([sys.executable, "-m", "memtrain.cli", "train", *TINY, "parallel=ddp",
                             "launcher.nproc_per_node=2", "trainer.max_steps=100000", f"hydra.run.dir={tmp_path}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if "step " in line and "loss" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("memtrain: stopped by SIGINT after step"), err
    step = int(lines[0].split("after step ")[1].split()[0])
    assert (tmp_path / "checkpoints" / f"step_{step:08d}" / "meta.json").is_file()


@pytest.mark.slow
@pytest.mark.multiprocess  # memtrain's launcher starts 2 workers
def test_a_failure_inside_launched_workers_is_one_paragraph_each(checkpoint, tmp_path):
    """A shard truncated after the launcher checked meta.json: each worker names the checkpoint
    (exit 2), the launcher adds one line and exits 2; no traceback anywhere."""
    path = tmp_path / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, path)
    truncate(path)
    proc = run_cli("train", *TINY, "parallel=ddp", "launcher.nproc_per_node=2", "trainer.max_steps=2",
                   f"trainer.resume={path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, proc.stderr
    paragraphs = [line for line in proc.stderr.splitlines() if line.startswith("memtrain")]
    assert any(line.startswith("memtrain (rank 0): cannot load checkpoint") for line in paragraphs), proc.stderr
    assert paragraphs[-1].startswith("memtrain: the job stopped:") and " 2 " in paragraphs[-1] + " ", proc.stderr


def test_a_run_whose_updates_are_all_skipped_stops(capsys, tmp_path):
    """lr 1e30: after the first update every gradient is non-finite and every step is skipped; the
    run stops with one paragraph after MAX_CONSECUTIVE_SKIPS (100) such steps instead of exiting 0."""
    fails_cleanly(capsys, ["train", *TINY, "optimizer.lr=1e30", "trainer.max_steps=300", "trainer.log_every=100",
                           f"hydra.run.dir={tmp_path}"], "training stopped at step 101", "non-finite gradients",
                  "optimizer.lr=1e+30")


def test_a_synthetic_weather_dataset_too_large_to_generate_is_refused(capsys, tmp_path):
    fails_cleanly(capsys, ["train", "+recipe=weather_swin_tiny", "data.synthetic_time_steps=100000000",
                           "trainer.device=cpu", f"hydra.run.dir={tmp_path}"], "data.synthetic_time_steps", "GiB")
    assert not list(tmp_path.glob("era5_synthetic*/*.nc"))


OUTSIDE_THE_LOOP = """
import os, signal, sys
import memtrain.memory.estimator as estimator
from memtrain import cli
real = estimator.estimate
def estimate(cfg):
    os.kill(os.getpid(), signal.{sig})  # arrives while the command works, outside any training loop
    return real(cfg)
estimator.estimate = estimate
sys.exit(cli.main(["estimate"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig, word", [("SIGINT", "interrupted"), ("SIGTERM", "terminated")])
def test_a_signal_outside_the_training_loop_is_one_line(sig, word):
    proc = subprocess.run([sys.executable, "-c", OUTSIDE_THE_LOOP.format(sig=sig)], cwd=REPO, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    assert proc.stderr.strip() == f"memtrain: {word}", proc.stderr


def test_a_zero_checkpoint_on_another_world_size_is_refused_before_deepspeed_starts(capsys, tmp_path):
    """The issue's case, which came out as Hydra's 'Error executing job' with a traceback: a ZeRO
    checkpoint written by 2 ranks, resumed by one process."""
    pytest.importorskip("deepspeed")
    from memtrain.config.errors import to_container
    from memtrain.config.loader import load_config

    path = tmp_path / "checkpoints" / "step_00000002"
    path.mkdir(parents=True)
    stored = to_container(load_config([*TINY, "parallel=zero2", "launcher.nproc_per_node=2"]))
    (path / "meta.json").write_text(json.dumps({"step": 2, "config": stored, "world_size": 2, "format": "deepspeed"}))
    fails_cleanly(capsys, ["train", *TINY, "parallel=zero2", "trainer.max_steps=3", f"trainer.resume={path}",
                           f"hydra.run.dir={tmp_path / 'run'}"], str(path), "world size 2 -> 1")


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.output_subdir", "hydra.job.env_set.MEMTRAIN_X"])
def test_a_hydra_key_that_cannot_resolve_is_named_before_the_run_folder(capsys, key, tmp_path, monkeypatch):
    """Hydra resolves hydra.run.dir, hydra.output_subdir and hydra.job.env_set while it makes the
    run folder; one that cannot resolve is refused with the key, not a traceback from inside Hydra."""
    monkeypatch.delenv("MEMTRAIN_SURELY_UNSET", raising=False)
    run = [] if key == "hydra.run.dir" else [f"hydra.run.dir={tmp_path / 'run'}"]
    fails_cleanly(capsys, ["train", *TINY, "trainer.max_steps=1", *run, f"++{key}=${{oc.env:MEMTRAIN_SURELY_UNSET}}"],
                  key, "MEMTRAIN_SURELY_UNSET")
    assert not (tmp_path / "run").exists()


MISSING_DATA = [
    # (overrides, the folder's name under tmp_path, words): data.root unset reads $MEMTRAIN_DATA_DIR
    ([*TINY, "data=protein"], "proteins", ["MEMTRAIN_DATA_DIR", "data.root", "does not exist"]),
    (["+recipe=alphafold_tiny"], "proteins/mmcif", ["MEMTRAIN_DATA_DIR", "data.root", "no mmCIF files"]),
    (["+recipe=weather_swin_tiny", "data.root=EMPTY"], "", ["data.root", "no *.nc or *.zarr"]),
]


@pytest.mark.parametrize("overrides,folder,words", MISSING_DATA, ids=["protein", "structure", "era5"])
def test_data_that_is_not_there_is_one_paragraph(capsys, overrides, folder, words, tmp_path, monkeypatch):
    """The data a run reads is missing (the default folder under $MEMTRAIN_DATA_DIR, or an empty
    data.root): the folder and the keys that choose it, not a traceback from the reader."""
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("MEMTRAIN_DATA_DIR", str(empty))
    overrides = [o.replace("EMPTY", str(empty)) for o in overrides]
    fails_cleanly(capsys, ["train", *overrides, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}"],
                  str(empty / folder).rstrip("/"), *words)
