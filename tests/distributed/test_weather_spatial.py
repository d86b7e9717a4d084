"""Spatial parallelism (latitude slabs) of Pangu on 2 gloo processes against one process."""

from __future__ import annotations

import pytest
import torch

from memtrain.data.era5_synthetic import write
from tests.distributed.harness import torchrun_worker
from tests.distributed.worker import run

# 32 x 64 grid -> 8 latitude tokens, 4 at the down-sampled stages; windows of 2 latitude rows, so
# each of 2 ranks holds 2 window rows, then 1, and every shifted block exchanges a 1-row halo.
PANGU = ["+recipe=weather_swin_tiny", "model.window_size=[2,2,4]", "trainer.micro_batch_size=1", "trainer.max_steps=2",
         "trainer.warmup_steps=0", "trainer.log_every=1", "trainer.device=cpu"]


def test_spatial_pangu_step_matches_one_process(tmp_path):
    root = tmp_path / "era5"
    write(root, 32, 64, time_steps=8)  # written once here: the ranks only read it
    data = [f"data.root={root}", f"data.stats={root / 'stats.nc'}", "data.synthetic_time_steps=8"]
    reference = run(str(tmp_path / "single" / "result.pt"), [*PANGU, *data])
    # the spatial run also recomputes its blocks (checkpoint=full), halo exchanges included
    result = torchrun_worker(2, tmp_path / "spatial" / "result.pt", *PANGU, *data, "parallel=spatial", "checkpoint=full",
                             timeout=600)
    assert result["grads"].keys() == reference["grads"].keys()
    for name, g in reference["grads"].items():
        # fp32: the same terms, each parameter's gradient summed over the 2 slabs in another order
        # (recomputation repeats the forward exactly, so it adds no error)
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert result["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-4)
