"""The alphafold_tiny recipe on the real mmCIF structures and A3M alignments of the data folder:
it trains, every loss term is logged, and its loss on a fixed set of samples falls."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from memtrain.config.loader import compose_config
from memtrain.data.sequences import default_protein_root
from memtrain.models import get_spec
from memtrain.models.alphafold.loss import LOSS_WEIGHTS

MMCIF_DIR = Path(default_protein_root()) / "mmcif"


@pytest.mark.skipif(not MMCIF_DIR.is_dir(), reason=f"real protein data not found at {MMCIF_DIR} (set MEMTRAIN_DATA_DIR)")
@pytest.mark.slow
def test_tiny_recipe_trains_on_real_structures_and_its_loss_falls(tmp_path, make_trainer):
    cfg = compose_config(["+recipe=alphafold_tiny", "trainer.device=cpu", "trainer.log_every=1", "trainer.max_steps=20"])
    trainer = make_trainer(cfg, tmp_path)
    spec = get_spec("alphafold")
    assert any(e.msa_source is not None for e in trainer.data.entries)  # an A3M alignment is in use
    samples = [trainer.data.batch(i, 1) for i in range(8)]

    def loss_on_samples() -> float:  # eval mode (no dropout), the same 8 samples each time
        trainer.model.eval()
        with torch.no_grad():
            total = sum(float(spec.loss_fn(trainer.model(inputs), targets)[0]) for inputs, targets in samples)
        trainer.model.train()
        return total / len(samples)

    before = loss_on_samples()
    records = trainer.fit()
    after = loss_on_samples()
    assert len(records) == 20
    for record in records:
        terms = {k[len("loss_"):] for k in record if k.startswith("loss_") and k != "loss_scale"}
        assert terms == set(LOSS_WEIGHTS)
        assert all(math.isfinite(record[f"loss_{t}"]) for t in terms) and math.isfinite(record["loss"])
    assert after < before
