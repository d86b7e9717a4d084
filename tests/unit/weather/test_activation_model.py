"""The weather models' activation model (memtrain/models/weather/spec.py) against what a real
forward pass (model and loss, as the Trainer runs them) leaves allocated on this CPU."""

from __future__ import annotations

import pytest

from memtrain.config.loader import load_config
from memtrain.memory.estimator import estimate
from memtrain.memory.measure import trainer_forward_held_bytes

CASES = [
    ("weather_swin_tiny", "fp32", "none"),
    ("weather_swin_tiny", "bf16", "none"),
    ("weather_swin_tiny", "fp32", "full"),
    # was predicted at 1.59x the measured bytes: the block inputs counted in fp32 (the stream is the
    # embedding's bf16 output under autocast) and the outside terms in fp32
    ("weather_swin_tiny", "bf16", "full"),
    ("weather_swin_tiny", "fp32", "selective"),
    ("weather_fuxi_tiny", "fp32", "none"),
    ("weather_fuxi_tiny", "bf16", "none"),
    ("weather_fuxi_tiny", "bf16", "full"),
]


@pytest.mark.parametrize("recipe,precision,ckpt", CASES, ids=["-".join(c) for c in CASES])
def test_activation_model_matches_the_measured_forward(tmp_path, recipe, precision, ckpt, make_trainer):
    cfg = load_config([f"+recipe={recipe}", f"precision={precision}", f"activation_checkpoint={ckpt}", "trainer.device=cpu"])
    trainer = make_trainer(cfg, tmp_path)
    measured = trainer_forward_held_bytes(trainer)
    est = estimate(cfg)
    # Counted tensor by tensor, no constant fitted: observed equal to within a few bytes without
    # checkpointing, and within 1.5% with it (torch's checkpoint keeps each block's CPU RNG state,
    # host memory the model leaves out). 3% leaves room for a torch release changing a kernel's copies.
    assert est.activations - est.recompute_buffer == pytest.approx(measured, rel=0.03)
