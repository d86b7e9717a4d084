"""Dynamic Axial Parallelism on 2 gloo processes against the single-process computation."""

from __future__ import annotations

import json

import pytest
import torch

from tests.distributed.harness import HERE, torchrun, torchrun_worker
from tests.distributed.worker import run
from tests.unit.alphafold.helpers import aligned_chain_root


def test_communication_pairs_match_the_full_tensors():
    proc = torchrun(2, HERE / "dap_comm_worker.py", timeout=180)
    assert proc.stdout.count(": ok") == 2


def test_dap_extra_msa_and_template_stacks_match_one_process():
    """The extra-MSA stack and the template pair stack under DAP on 2 ranks against one process:
    outputs, input and parameter gradients; dropout on; plain, checkpointed and chunked blocks;
    sizes that need padding (dap_stacks_worker.py)."""
    proc = torchrun(2, HERE / "dap_stacks_worker.py", timeout=300)
    assert proc.stdout.count(": ok") == 2


ALPHAFOLD = ["+recipe=alphafold_tiny", "data.crop_size=24", "data.max_msa=6", "trainer.max_steps=3",
             "trainer.warmup_steps=0", "trainer.log_every=1", "model.num_recycles=1", "trainer.device=cpu"]


@pytest.fixture(scope="module")
def alphafold_reference(tmp_path_factory):
    """One process, dropout on (the DAP run must draw the same masks), one recycling iteration."""
    out = tmp_path_factory.mktemp("af_single") / "result.pt"
    return run(str(out), [*ALPHAFOLD, "model.msa_dropout=0.15", "model.pair_dropout=0.25"])


# The tiny recipe runs the template and extra-MSA stacks too. "stacks": only 2Q2K's chains, whose
# chain A has an alignment of 4 rows (with 2 MSA rows, 2 extra rows and 1 padding), and every
# sample with a template (its own structure, sequence masked); checkpointed and chunked.
STACKS = ["data.template_source=self", "data.max_msa=2", "data.max_extra_msa=3", "checkpoint=full", "model.chunk_size=5"]


@pytest.mark.parametrize("extra", [[], ["checkpoint=full", "model.chunk_size=4"], ["data.crop_size=23", "data.max_msa=5"],
                                   STACKS],
                         ids=["dap2", "dap2-checkpoint-chunked", "dap2-padded", "dap2-stacks"])
def test_dap_full_model_step_matches_one_process(alphafold_reference, tmp_path, extra):
    reference = alphafold_reference
    if extra is STACKS:
        extra = [*STACKS, f"data.root={aligned_chain_root(tmp_path / 'data')}"]
    if any(e.startswith("data.") for e in extra):  # other samples (odd sizes: padded to a multiple of 2)
        reference = run(str(tmp_path / "single.pt"), [*ALPHAFOLD, "model.msa_dropout=0.15", "model.pair_dropout=0.25", *extra])
    result = torchrun_worker(2, tmp_path / "result.pt", *ALPHAFOLD, "model.msa_dropout=0.15", "model.pair_dropout=0.25",
                             "parallel=dap", *extra)
    assert result["grads"].keys() == reference["grads"].keys()
    for name, g in reference["grads"].items():
        # fp32: the same terms, summed over the dap group's shards in another order
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5)


def test_alphafold_recipe_with_dap_on_two_processes_trains_on_real_structures(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("train", "+recipe=alphafold", "parallel=dap", "launcher.nproc_per_node=2", "model=alphafold_tiny",
                   "precision=fp32", "checkpoint=full", "data.crop_size=32", "data.max_msa=8", "trainer.max_steps=36",
                   "optimizer.lr=1e-2", "trainer.warmup_steps=4", "trainer.log_every=1", "trainer.save_every=0", f"hydra.run.dir={tmp_path}",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 36
    # per-sample losses are noisy (each step is one cropped chain): compare 6-step means
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 1.0, losses


def test_dap_composes_with_data_parallelism(tmp_path):
    """4 ranks: 2 DAP groups of 2, replicated (DDP) across; each group takes its own sample.
    Dropout off: one process draws one mask for both samples, two replicas one each."""
    small = [*ALPHAFOLD, "data.crop_size=16", "data.max_msa=4", "trainer.max_steps=2", "model.structure_dropout=0.0"]
    reference = run(str(tmp_path / "single.pt"), [*small, "trainer.micro_batch_size=2"])
    result = torchrun_worker(4, tmp_path / "result.pt", *small, "parallel=dap", "parallel.dp_replicate=2")
    for name, g in reference["grads"].items():
        # fp32: DAP's sums over shards and DDP's average over 2 replicas, in another order
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5)
