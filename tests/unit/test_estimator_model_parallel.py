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


def test_dap_comm_bytes_are_the_familys_and_the_estimate_keeps_its_degrees():
    """AlphaFold's DAP volume (memtrain/models/alphafold/comm.py) is in `comm_bytes` like tp's and cp's:
    per Evoformer block and pass, the all-gathers send (n-1)/n of the pair bias of the row attention
    [N, N, H_msa], the triangle multiplication operands [N, N, 2 C_mul], both triangle attentions'
    biases [N, N, 2 H_pair] and the outer product's b [S, N, C_opm]; the all-to-alls (n-1)/n^2 of
    m [S, N, C_m] twice and z [N, N, C_z] four times. Passes: forward and backward, plus the
    recomputed forward of checkpointed blocks. Counted here from the config."""
    from memtrain.config.loader import load_config
    from memtrain.distributed.mesh import ParallelDims

    for ac, passes in (("none", 2), ("full", 3)):
        cfg = load_config(["+recipe=alphafold_tiny", "parallel=dap", "launcher.nproc_per_node=2",
                           f"activation_checkpoint={ac}", "trainer.grad_accum=3"])
        m, b, n, s = cfg.model, cfg.trainer.micro_batch_size, cfg.data.crop_size, cfg.data.max_msa
        c = 4 if cfg.precision.compute_dtype.name == "float32" else 2
        gathers = n * n * (m.n_heads_msa + 2 * m.c_hidden_mul + 2 * m.n_heads_pair) + s * n * m.c_hidden_opm
        all_to_all = 2 * s * n * m.c_m + 4 * n * n * m.c_z
        scale = 3 * m.n_blocks * passes * b * c
        est = estimate(cfg)
        assert est.comm_bytes["dap"] == {"all_gather_activations": int(scale * gathers / 2),
                                         "all_to_all_activations": int(scale * all_to_all / 4)}
        # the degrees are resolved once, kept for the cost model, and left out of the JSON
        assert est.dims == ParallelDims.from_config(cfg.parallel, 2) and "dims" not in est.as_dict()
