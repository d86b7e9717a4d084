"""memtrain estimate with QAT, FP8 and approximate attention: against the measured forward where
it runs on CPU, by construction for FP8."""

from __future__ import annotations

import pytest

from memtrain.memory.estimator import estimate
from memtrain.memory.measure import trainer_forward_held_bytes

CASES = [
    ("fp32", "precision.qat=int8"), ("bf16", "precision.qat=int8"), ("fp32", "precision.qat=bitnet"),
    ("fp32", "model.attention=linformer"), ("fp32", "model.attention=performer"),
]


@pytest.mark.parametrize("precision,option", CASES, ids=[f"{p}-{o.split('=')[1]}" for p, o in CASES])
def test_activation_estimate_matches_measured_forward(compose, tmp_path, precision, option, make_trainer):
    cfg = compose(f"precision={precision}", option, "model.n_layers=2", "model.dim=128", "model.vocab_size=500",
                  "data.seq_len=64", "model.linformer_k=16", "model.performer_features=32", "model.attention_chunk=16")
    trainer = make_trainer(cfg, tmp_path)
    measured = trainer_forward_held_bytes(trainer)
    est = estimate(cfg)
    # the same 5% as the plain model's test (tests/unit/test_estimator.py): small uncounted scratch
    assert est.activations == pytest.approx(measured, rel=0.05)


def test_fp8_saves_activations_and_counts_delayed_history(compose):
    bf16 = estimate(compose("precision=bf16"))
    fp8 = estimate(compose("precision=fp8"))  # estimate does not validate: the hardware check is validate's
    assert fp8.activations < bf16.activations and fp8.precision_state == 0
    delayed = estimate(compose("precision=fp8", "precision.fp8_scaling=delayed", "precision.fp8_amax_history=8"))
    # 7 linear layers per block (all dims multiples of 16 at the tiny width), 3 histories of 8 float32
    assert delayed.precision_state == 2 * 7 * 3 * 8 * 4
    assert delayed.total - fp8.total == delayed.precision_state
