"""The command line as a user meets it: runs, sweeps, estimates and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from memtrain import cli
from tests.conftest import TINY, run_cli

REQUIRED_METRICS = {"step", "loss", "lr", "tokens_per_s", "peak_mem_bytes", "mfu"}


def read_metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_train_default_run_writes_metrics(tmp_path):
    proc = run_cli("train", f"hydra.run.dir={tmp_path}", "trainer.max_steps=6", "trainer.log_every=3")
    assert proc.returncode == 0, proc.stderr
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [3, 6]
    assert REQUIRED_METRICS <= records[0].keys()
    assert "loss" in proc.stdout and "tok/s" in proc.stdout


@pytest.mark.slow  # a command-line run
def test_train_recipe_and_multirun_sweep(tmp_path):
    proc = run_cli("train", "-m", "+recipe=protein_lm", *TINY, "precision=fp32", "trainer.max_steps=2",
                   "optimizer=adamw,adafactor", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    for job in ("0", "1"):
        assert len(read_metrics(tmp_path / job)) == 2
    assert "Adafactor" in (tmp_path / "1" / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow  # a command-line run
def test_estimate_json_has_the_byte_counts():
    proc = run_cli("estimate", "model=gpt_1b", "precision=bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"params", "grads", "optimizer", "activations", "total"} <= data.keys()
    assert data["total"] == data["params"] + data["grads"] + data["optimizer"] + data["activations"]


@pytest.mark.slow  # a command-line run
def test_estimate_table():
    proc = run_cli("estimate", "activation_checkpoint=full")
    assert proc.returncode == 0, proc.stderr
    for row in ("parameters", "gradients", "optimizer states", "activations", "total"):
        assert row in proc.stdout


BAD_INPUTS = [
    # (arguments, words the one-paragraph error must contain)
    (["train", "trainer.max_stepz=3"], ["trainer.max_stepz", "unknown key", "max_steps", "micro_batch_size"]),
    (["train", "+trainer.max_stepz=3"], ["trainer.max_stepz", "unknown key", "max_steps"]),
    (["train", "model.dim=0"], ["model.dim", "at least 1"]),
    (["train", "trainer.max_steps=many"], ["trainer.max_steps", "many", "Integer"]),
    (["train", "model=gpt_huge"], ["'model'", "gpt_huge", "gpt_1b", "gpt_tiny"]),
    (["train", "activation_checkpoint.mode=sometimes"], ["activation_checkpoint.mode", "none, full, selective"]),
    (["estimate", "+recipe=alphafoldx"], ["'recipe'", "alphafoldx", "protein_lm"]),
    (["train", "parallel.tp=2"], ["parallel.tp", "parallel=single", "tp=2"]),
    (["train", "precision=fp16", "precision.loss_scaling=false"], ["precision.loss_scaling", "float16"]),
    (["train", "data.seq_len=4096"], ["data.seq_len", "max_seq_len"]),
    (["train", "trainer.resume=/no/such/ckpt"], ["trainer.resume", "none, auto"]),
    (["estimate", "--yaml"], ["--yaml", "--json"]),
    (["fly"], ["fly", "train, estimate"]),
]


@pytest.mark.parametrize("args,words", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_paragraph_and_exit_2(capsys, args, words):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    proc = run_cli("train", "optimizer.betas=oops", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "optimizer.betas" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before anything ran


@pytest.mark.slow  # a command-line run
def test_bad_job_in_a_sweep_is_refused_before_any_job_runs(tmp_path):
    proc = run_cli("train", "-m", *TINY, "trainer.max_steps=1", "activation_checkpoint.every_k=1,0", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 2
    assert "activation_checkpoint.every_k" in proc.stderr
    assert not (tmp_path / "0").exists()


@pytest.mark.slow  # a command-line run
def test_corrupt_data_file_is_named(tmp_path):
    root = tmp_path / "proteins"
    root.mkdir()
    (root / "good.fasta").write_text(">a\nMKTAYIAKQR\n")
    bad = root / "broken.fasta"
    bad.write_text("MKTAYIAKQR\n>late header\nMKV\n")
    proc = run_cli("train", "data=protein", f"data.root={root}", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu(capsys):
    assert cli.main(["train", "trainer.device=cuda"]) == 2
    assert "trainer.device" in capsys.readouterr().err


def test_a_run_is_composed_and_validated_once_with_the_files_hydra_main_writes(tmp_path, monkeypatch):
    """`memtrain train OVERRIDES` composes its config once (Hydra's hydra.main composes a run twice,
    once to read hydra.mode, and memtrain's check before it a third time) and validates it once in
    this process; the run folder gets what hydra.main writes: the same .hydra/ files and job log."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    import memtrain.config.loader as loader

    compositions, validations = [], []
    load = ConfigLoaderImpl.load_configuration
    check = loader.check_config
    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration",
                        lambda self, *a, **k: compositions.append(1) or load(self, *a, **k))
    monkeypatch.setattr(loader, "check_config", lambda cfg: validations.append(1) or check(cfg))
    args = [*TINY, "trainer.max_steps=1", "optimizer=adafactor"]
    assert cli.main(["train", *args, f"hydra.run.dir={tmp_path / 'once'}"]) == 0
    assert (len(compositions), len(validations)) == (1, 1)

    # hydra.main's own path (taken for Hydra's flags, e.g. --multirun or --cfg), for comparison
    monkeypatch.setattr("sys.argv", ["memtrain train"])
    assert cli._run_hydra([*args, f"hydra.run.dir={tmp_path / 'main'}"]) == 0
    assert len(compositions) == 3  # hydra.main: one to read hydra.mode, one for the run

    once, main = tmp_path / "once", tmp_path / "main"
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        ours = (once / ".hydra" / name).read_text().replace(str(once), str(main))
        assert ours == (main / ".hydra" / name).read_text(), name
    assert sorted(p.name for p in once.iterdir()) == sorted(p.name for p in main.iterdir())
    from hydra.core.global_hydra import GlobalHydra

    assert not GlobalHydra.instance().is_initialized()  # either path leaves no Hydra application behind
