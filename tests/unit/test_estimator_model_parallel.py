"""`memtrain estimate` under tensor and context parallelism: per-device parameters and
activations, and the analytic communication volume (`comm_bytes`), against counts made here."""

from __future__ import annotations


import pytest

from memtrain.memory.estimator import estimate
from memtrain.models.gpt.model import ffn_hidden_size


def shapes(cfg):
    m = cfg.model
    d, kv_dim, f = m.dim, (m.n_kv_heads or m.n_heads) * (m.dim // m.n_heads), ffn_hidden_size(m.dim, m.ffn_hidden, m.multiple_of)
    block_mats = [d * d, kv_dim * d, kv_dim * d, d * d, f * d, f * d, d * f]
    mats = m.n_layers * block_mats + [m.vocab_size * d, m.vocab_size * d]
    vecs = (2 * m.n_layers + 1) * [d]
    return mats, vecs


def test_tp_splits_the_matrices_and_replicates_the_norms(compose):
    cfg = compose("parallel=tp", "launcher.nproc_per_node=2", "optimizer=adamw")
    mats, vecs = shapes(cfg)
    est = estimate(cfg)
    assert est.params == 4 * (sum(mats) // 2 + sum(vecs))  # fp32 parameters
    assert est.n_params == sum(mats) // 2 + sum(vecs)


def test_tp_sp_and_sp_split_the_activations(compose):
    single = estimate(compose())
    tp = estimate(compose("parallel=tp", "launcher.nproc_per_node=2"))
    tp_sp = estimate(compose("parallel=tp_sp", "launcher.nproc_per_node=2"))
    ring = estimate(compose("parallel=ring", "launcher.nproc_per_node=2"))
    block = single.activations_per_block[0]
    # tp_sp splits every saved tensor of a block; tp alone keeps the norms' tensors whole
    assert tp_sp.activations_per_block[0] == pytest.approx(block / 2, abs=1)
    assert block / 2 < tp.activations_per_block[0] < block
    assert ring.activations_per_block[0] == pytest.approx(block / 2, abs=1)
    assert ring.activations_outside_blocks == pytest.approx(single.activations_outside_blocks / 2, abs=1)
    # the fused loss's weight gradient [V, D] (fp32) is split over the vocabulary-parallel tp ranks
    m = compose().model
    assert m.loss_chunk == -1  # the default: the fused loss
    assert single.activations_outside_blocks - tp.activations_outside_blocks == 4 * m.vocab_size * m.dim // 2


def test_comm_bytes(compose):
    cfg = compose("parallel=ddp", "launcher.nproc_per_node=4")
    est = estimate(cfg)
    # ring all-reduce of the fp32 gradients: 2 (n-1)/n of them sent per device
    assert est.comm_bytes == {"dp_replicate": {"all_reduce_grads": int(2 * 3 / 4 * est.n_params * 4)}}

    cfg = compose("parallel=tp", "launcher.nproc_per_node=2", "trainer.grad_accum=3", "model.loss_chunk=0")
    m, t = cfg.model, cfg.trainer
    bsd = t.micro_batch_size * cfg.data.seq_len * m.dim * 4
    tp = estimate(cfg).comm_bytes["tp"]
    # per micro-batch: 4 all-reduces per layer, the embedding's and the output's; each sends (n-1)/n x 2
    assert tp["all_reduce_activations"] == int(3 * (4 * m.n_layers + 2) * bsd)
    assert tp["all_gather_logits"] == int(3 * 0.5 * t.micro_batch_size * cfg.data.seq_len * m.vocab_size * 4)
    # the fused vocabulary-parallel loss: no logits gathered, three fp32 statistics per token all-reduced
    fused = estimate(compose("parallel=tp", "launcher.nproc_per_node=2", "trainer.grad_accum=3")).comm_bytes["tp"]
    assert fused["all_reduce_activations"] == tp["all_reduce_activations"] and "all_gather_logits" not in fused
    assert fused["all_reduce_loss_statistics"] == int(3 * 2 * 0.5 * t.micro_batch_size * cfg.data.seq_len * 3 * 4)

    cfg = compose("parallel=ring", "launcher.nproc_per_node=2")
    ring = estimate(cfg).comm_bytes["cp"]
    local_kv = 2 * t.micro_batch_size * cfg.data.seq_len // 2 * m.n_kv_heads * (m.dim // m.n_heads)
    assert ring["p2p_kv"] == m.n_layers * 2 * 1 * local_kv * 4  # cp-1 = 1 pass, forward and backward
    assert ring["p2p_dkv"] == m.n_layers * 2 * local_kv * 4  # cp passes of the fp32 dK/dV
