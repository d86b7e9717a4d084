"""Predicted structures written with Biopython and read back with Biopython's own parsers; the
held-out evaluation hook and `memtrain predict` on a tiny trained model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio.PDB import MMCIFParser, PDBParser

from memtrain.config.loader import compose_config
from memtrain.data.sequences import default_protein_root
from memtrain.models.alphafold import residue_constants as rc
from memtrain.models.alphafold.structure_io import write_structure
from tests.conftest import run_cli

MMCIF_DIR = Path(default_protein_root()) / "mmcif"
needs_data = pytest.mark.skipif(not MMCIF_DIR.is_dir(), reason=f"real protein data not found at {MMCIF_DIR} (set MEMTRAIN_DATA_DIR)")


def toy_chain():
    aatype = np.array([rc.RESTYPES.index("W"), rc.GLY, rc.UNK, rc.RESTYPES.index("D")])
    positions = np.random.default_rng(0).normal(scale=10.0, size=(4, 14, 3)).astype(np.float32)
    mask = rc.ATOM14_MASK[aatype].copy()
    mask[2, :3] = 1.0  # unknown residue: its N, CA, C
    mask[3, 7] = 0.0  # ASP without OD2
    return aatype, positions, mask


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
def test_written_structures_read_back_with_biopython(tmp_path, suffix):
    aatype, positions, mask = toy_chain()
    plddt = np.array([91.5, 70.25, 12.0, 55.0])
    path = write_structure(tmp_path / f"x{suffix}", aatype, positions, mask, residue_index=np.array([4, 5, 6, 9]), plddt=plddt)
    parser = PDBParser(QUIET=True) if suffix == ".pdb" else MMCIFParser(QUIET=True)
    residues = list(parser.get_structure("x", str(path))[0]["A"])
    assert [r.get_resname() for r in residues] == ["TRP", "GLY", "UNK", "ASP"]
    assert [r.id[1] for r in residues] == [5, 6, 7, 10]  # 1-based residue numbers
    for i, residue in enumerate(residues):
        names = rc.GT_ATOM14_NAMES[rc.RESNAMES[aatype[i]]]
        expected = [names[k] for k in range(len(names)) if mask[i, k] > 0]
        assert [a.get_id() for a in residue] == expected
        for atom in residue:
            k = names.index(atom.get_id())
            np.testing.assert_allclose(atom.coord, positions[i, k], rtol=0, atol=1e-3)  # 3 decimals in the file
            assert atom.bfactor == pytest.approx(plddt[i], abs=0.01)
            assert atom.element == atom.get_id()[0]


def test_output_format_comes_from_the_suffix(tmp_path):
    aatype, positions, mask = toy_chain()
    with pytest.raises(ValueError, match=r"\.pdb, \.cif or \.mmcif"):
        write_structure(tmp_path / "x.xyz", aatype, positions, mask)


TINY_RUN = ["+recipe=alphafold_tiny", "data.crop_size=16", "data.max_msa=4", "trainer.device=cpu", "trainer.log_every=1"]


@needs_data
@pytest.mark.slow
def test_evaluation_every_n_steps_writes_predictions_and_holds_the_chain_out(tmp_path, make_trainer):
    cfg = compose_config([*TINY_RUN, "trainer.max_steps=2", "trainer.eval_every=2", "data.eval_chains=[4zey_A]"])
    trainer = make_trainer(cfg, tmp_path)
    assert "4zey_A" not in {e.chain.name for e in trainer.data.entries}  # held out of training
    records = trainer.fit()
    assert "val_lddt_ca" not in records[0] and 0.0 <= records[1]["val_lddt_ca"] <= 1.0
    assert 0.0 <= records[1]["val_plddt"] <= 100.0
    assert all(k in records[0] for k in ("loss_fape_backbone", "loss_fape_sidechain", "loss_supervised_chi", "loss_plddt"))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged[1]["val_lddt_ca"] == records[1]["val_lddt_ca"]
    written = tmp_path / "eval" / "step_00000002" / "4zey_A.pdb"
    residues = list(PDBParser(QUIET=True).get_structure("p", str(written))[0]["A"])
    assert len(residues) == 16  # the crop: the 16-residue window of 4ZEY A with the most resolved residues
    # the same fixed crop and MSA each time: a second evaluation of the same weights agrees
    again = trainer.evaluator(trainer.model, 2, None, trainer.device)
    assert again["val_lddt_ca"] == pytest.approx(records[1]["val_lddt_ca"], abs=1e-6)
    # evaluating draws no random numbers and changes no weights: training is the same without it
    plain = make_trainer(compose_config([*TINY_RUN, "trainer.max_steps=2", "data.eval_chains=[4zey_A]"]), tmp_path / "plain")
    assert [r["loss"] for r in plain.fit()] == [r["loss"] for r in records]


@needs_data
def test_eval_every_needs_held_out_chains_and_the_whole_model():
    from memtrain.config.errors import ConfigError
    from memtrain.config.validate import validate

    with pytest.raises(ConfigError, match="data.eval_chains"):
        validate(compose_config([*TINY_RUN, "trainer.eval_every=2"]))
    # AlphaFold declares no pipeline split (models/alphafold/family.py), so the evaluation, which runs
    # the whole model, never meets pipeline stages: the layout is refused at parallel.pp first
    with pytest.raises(ConfigError, match="'parallel.pp'.*does not support parallel.pp"):
        validate(compose_config([*TINY_RUN, "trainer.eval_every=2", "data.eval_chains=[4zey_A]", "parallel=pp",
                                 "launcher.nproc_per_node=2"]))
    with pytest.raises(ConfigError, match="no evaluation step"):
        validate(compose_config(["model=gpt_tiny", "data=synthetic", "trainer.eval_every=2"]))


@needs_data
@pytest.mark.slow
def test_predict_writes_a_structure_from_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    done = run_cli("train", *TINY_RUN, "trainer.max_steps=1", "trainer.save_every=1", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr
    checkpoint = run / "checkpoints" / "step_00000001"
    out = tmp_path / "4zey.cif"
    result = run_cli("predict", str(checkpoint), str(MMCIF_DIR / "4zey.cif"), str(out))
    assert result.returncode == 0, result.stderr
    assert "lddt_ca" in result.stdout and "plddt" in result.stdout
    residues = list(MMCIFParser(QUIET=True).get_structure("p", str(out))[0]["A"])
    assert len(residues) == 84  # the whole chain, no crop
    # a bad checkpoint, input or output: one paragraph, exit code 2, no traceback
    for args, words in (
        ([str(tmp_path), str(MMCIF_DIR / "4zey.cif"), str(out)], "not a memtrain checkpoint"),
        ([str(checkpoint), str(tmp_path / "missing.cif"), str(out)], "no such input file"),
        ([str(checkpoint), str(MMCIF_DIR / "4zey.cif"), str(tmp_path / "x.txt")], "must end in .pdb"),
        ([str(checkpoint), str(MMCIF_DIR / "4zey.cif"), str(out), "--chain", "Q"], "no protein chain with author chain id"),
    ):
        bad = run_cli("predict", *args)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    # meta.json holds plain names: a bad one is named with its key; a key an older release did not
    # write takes its default, a data key this release does not read is left out (the model and
    # data sections are typed by their schemas)
    stored = json.loads((checkpoint / "meta.json").read_text())
    for section, key, value, code, words in (("model", "attention_backend", "Naive", 2, "'model.attention_backend'"),
                                             ("data", "template_source", "SELF", 2, "'data.template_source'"),
                                             ("model", "attention_backend", None, 0, "wrote"),
                                             ("data", "no_longer_read", 1, 0, "wrote")):
        old = tmp_path / f"old_{section}_{value}" / "step_00000001"
        shutil.copytree(checkpoint, old)
        changed = json.loads(json.dumps(stored))
        if value is None:
            del changed["config"][section][key]
        else:
            changed["config"][section][key] = value
        (old / "meta.json").write_text(json.dumps(changed))
        result = run_cli("predict", str(old), str(MMCIF_DIR / "4zey.cif"), str(out))
        assert result.returncode == code, result.stderr
        assert words in result.stdout + result.stderr and "Traceback" not in result.stderr, result.stderr
