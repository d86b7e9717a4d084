"""`memtrain estimate`'s peak over a step's phases (memtrain.memory.phases) against the live-tensor
peak of two real optimizer steps on this CPU (memtrain.memory.measure.step_phase_peaks), for the
three model families over precision, activation checkpointing, chunking and micro-batch."""

from __future__ import annotations

import pytest

from memtrain.config.loader import load_config
from memtrain.memory.estimator import estimate
from memtrain.memory.measure import PHASES, step_phase_peaks


GPT = ["model=gpt_tiny", "data=synthetic", "data.seq_len=64", "data.num_synthetic_tokens=20000",
       "trainer.micro_batch_size=2"]
AF = ["+recipe=alphafold_tiny", "data.crop_size=16", "data.max_msa=4", "data.max_extra_msa=6"]
PANGU = ["+recipe=weather_swin_tiny"]
FUXI = ["+recipe=weather_fuxi_tiny"]

# each case is two steps of a tiny model: well under a second on 2 CPU cores
CASES = [
    GPT + ["precision=bf16", "activation_checkpoint=none"],
    AF + ["precision=fp32", "activation_checkpoint=none"],
    PANGU + ["precision=bf16", "activation_checkpoint=full"],
    GPT + ["precision=fp32", "activation_checkpoint=none"],
    GPT + ["precision=bf16", "activation_checkpoint=full"],
    GPT + ["precision=fp32", "activation_checkpoint=selective"],
    GPT + ["precision=bf16", "activation_checkpoint=selective", "activation_checkpoint.policy=attention"],
    GPT + ["precision=fp32", "activation_checkpoint=none", "model.loss_chunk=0", "trainer.micro_batch_size=4"],
    AF + ["precision=bf16", "activation_checkpoint=none"],
    AF + ["precision=fp32", "activation_checkpoint=full"],
    AF + ["precision=bf16", "activation_checkpoint=selective"],
    AF + ["precision=fp32", "activation_checkpoint=none", "model.chunk_size=8"],
    AF + ["precision=fp32", "activation_checkpoint=none", "model.attention_backend=sdpa", "data.crop_size=24"],
    PANGU + ["precision=fp32", "activation_checkpoint=none"],
    PANGU + ["precision=bf16", "activation_checkpoint=none"],
    PANGU + ["precision=fp32", "activation_checkpoint=full"],
    PANGU + ["precision=fp32", "activation_checkpoint=selective", "trainer.micro_batch_size=1"],
    FUXI + ["precision=fp32", "activation_checkpoint=none"],
    FUXI + ["precision=bf16", "activation_checkpoint=full"],
]


def _id(case: list[str]) -> str:
    return "-".join(o.split("=")[-1] for o in case)


def check(case: list[str], tmp_path) -> None:
    cfg = load_config([*case, "trainer.device=cpu"])
    est = estimate(cfg)
    live = step_phase_peaks(cfg, tmp_path, steps=2)
    measured = max(live.peaks.values())
    assert set(est.phases) == set(PHASES) == set(live.peaks)
    # The model counts every tensor it knows of and fits no constant to these runs; what it leaves
    # out: the RNG states checkpointing keeps, rotary tables, a few scalars and reductions' scratch.
    # Observed within 5% of the measured peak; the bound of 10% is the estimator's target.
    assert est.peak == pytest.approx(measured, rel=0.10)
    assert est.peak == max(est.phases.values())


@pytest.mark.parametrize("case", CASES, ids=map(_id, CASES))
def test_peak_matches_two_real_steps(case, tmp_path):
    check(case, tmp_path)
