"""memtrain.memory.host_memory on a GPU run's config: start-up against steady state, per node."""

from __future__ import annotations

from memtrain.config.loader import load_config
from memtrain.memory.estimator import estimate
from memtrain.memory.host_memory import host_estimate

GPT_1B = ["model=gpt_1b", "parallel=zero2", "offload=optimizer_cpu", "launcher.nproc_per_node=8", "precision=bf16"]


def test_zero2_optimizer_offload_startup_has_no_optimizer_state_and_no_host_model():
    """trainer.device=auto counts as the GPU: the model is built on the device, so start-up holds
    DeepSpeed's init buffers only; the steady state adds the optimizer state (AdamW: 2 fp32
    moments of the partition, 8 B per element, plus the step scalar)."""
    cfg = load_config(GPT_1B)
    est = estimate(cfg)
    host = host_estimate(cfg, est)
    assert not host.device_is_host
    labels = {t["label"] for t in host.terms if t["phase"] == "startup"}
    assert not any("model built whole" in label or "optimizer state" in label for label in labels), labels
    part = -(-est.n_params // 8)
    state = next(t["nbytes"] for t in est.model_state_terms if t["label"] == "optimizer state")
    assert state == 8 * part + 4
    assert host.steady_per_rank - host.startup_per_rank == state
    assert host.steady_per_node == 8 * host.steady_per_rank == 8 * est.host


def test_cpu_run_counts_the_model_build_on_the_host():
    cfg = load_config([*GPT_1B, "trainer.device=cpu"])
    est = estimate(cfg)
    host = host_estimate(cfg, est)
    assert host.device_is_host
    build = next(t for t in host.terms if t["label"].startswith("model built whole"))
    assert build["nbytes"] == 4 * est.n_params and build["kind"] == "build"  # fp32 param_dtype
    assert host.startup_per_rank >= build["nbytes"]
