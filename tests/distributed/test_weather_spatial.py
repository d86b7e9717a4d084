"""Spatial parallelism (latitude slabs) of Pangu on 2 gloo processes against one process. The
multi-process case runs batched (tests/distributed/batch.py)."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.batch import Case, batched
from tests.distributed.cases import run

pytestmark = pytest.mark.multiprocess

# 32 x 64 grid -> 8 latitude tokens, 4 at the down-sampled stages; windows of 2 latitude rows, so
# each of 2 ranks holds 2 window rows, then 1, and every shifted block exchanges a 1-row halo.
PANGU = ["+recipe=weather_swin_tiny", "model.window_size=[2,2,4]", "trainer.micro_batch_size=1", "trainer.max_steps=2",
         "trainer.warmup_steps=0", "trainer.log_every=1", "trainer.device=cpu"]
# the data set is written once, into the case's folder, before the launch: the ranks only read it
DATA = ["data.root={dir}/era5", "data.stats={dir}/era5/stats.nc", "data.synthetic_time_steps=8"]
# the spatial run also recomputes its blocks (checkpoint=full), halo exchanges included
CASES = {"spatial2-checkpoint-full": Case(2, "train", (*PANGU, *DATA, "parallel=spatial", "activation_checkpoint=full"),
                                          prepare="era5_32x64")}


@pytest.mark.parametrize("case", batched(__name__, CASES))
def test_spatial_pangu_step_matches_one_process(case, launched, tmp_path):
    result = launched(case)
    data = [a.replace("{dir}", str(launched.folder(case))) for a in DATA]  # the same files
    reference = run(str(tmp_path / "single" / "result.pt"), [*PANGU, *data])
    assert result["grads"].keys() == reference["grads"].keys(), case
    for name, g in reference["grads"].items():
        # fp32: the same terms, each parameter's gradient summed over the 2 slabs in another order
        # (recomputation repeats the forward exactly, so it adds no error)
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-4, atol=1e-6, msg=f"{case}: {name}")
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5), case
    assert result["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-4), case
