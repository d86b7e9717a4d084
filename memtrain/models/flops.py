"""Forward FLOPs of one micro-batch of any model family: (one block, outside the blocks, one block's
attention core), from the family's ModelSpec: flops_per_token for decoders, else forward_flops
(memtrain/models/alphafold/flops.py, memtrain/models/weather/flops.py). Read by the cost model of
`memtrain plan` and by memtrain.prereq."""

from __future__ import annotations

from omegaconf import DictConfig

from memtrain.config.cfgview import node_key
from memtrain.models.spec import get_spec


_FLOPS: dict[tuple, tuple[float, float, float]] = {}


def _flops(cfg: DictConfig) -> tuple[float, float, float]:
    spec = get_spec(cfg.model.arch)
    micro_batch, seq_len = cfg.trainer.micro_batch_size, cfg.data.seq_len
    n_blocks = spec.num_blocks(cfg.model)
    per_token = spec.flops_per_token(cfg.model, seq_len)
    if per_token is not None:
        # a decoder: training FLOPs per token (6N + 12 L D S) -> forward per micro-batch; the
        # output projection (V x D) outside the blocks, the attention core 4 D S per layer and token
        tokens = micro_batch * seq_len
        forward = per_token * tokens / 3
        outside = 2 * cfg.model.vocab_size * cfg.model.dim * tokens
        core = 4 * cfg.model.dim * seq_len * tokens
        return (forward - outside) / n_blocks, outside, core
    if spec.forward_flops is None:
        raise NotImplementedError(f"model.arch={cfg.model.arch}: its ModelSpec declares neither flops_per_token "
                                  "nor forward_flops, which the cost model needs")
    return spec.forward_flops(cfg)


def forward_flops(cfg: DictConfig) -> tuple[float, float, float]:
    """(one block, outside the blocks, one block's attention core) forward FLOPs per micro-batch;
    cached per model and the data and batch sizes they depend on."""
    d = cfg.data
    key = (node_key(cfg.model), cfg.trainer.micro_batch_size, d.seq_len, d.crop_size, d.max_msa,
           d.get("max_extra_msa", 0), d.get("max_templates", 0))
    if key not in _FLOPS:
        if len(_FLOPS) >= 1024:
            _FLOPS.clear()
        _FLOPS[key] = _flops(cfg)
    return _FLOPS[key]
