"""Bad tensor/context-parallel degrees and combinations are refused with the keys at fault."""

from __future__ import annotations

import pytest
import torch

from memtrain.config.errors import ConfigError
from memtrain.config.loader import load_config
from memtrain.distributed.context_parallel import shard_positions
from tests.conftest import TINY

CASES = {
    "kv-heads-by-tp": (["parallel=tp", "launcher.nproc_per_node=4"], "parallel.tp", "n_kv_heads=2 must be divisible by parallel.tp=4"),
    "heads-by-tp": (["parallel=tp", "launcher.nproc_per_node=3"], "parallel.tp", "n_heads=4 must be divisible by parallel.tp=3"),
    "vocab-by-tp": (["parallel=tp", "launcher.nproc_per_node=2", "model.vocab_size=63"], "parallel.tp", "vocab_size=63"),
    "seq-by-tp-sp": (["parallel=tp_sp", "launcher.nproc_per_node=2", "data.seq_len=31"], "data.seq_len", "divisible by parallel.tp=2"),
    "tp-sp-without-tp": (["parallel.tp_sp=true"], "parallel.tp_sp", "needs parallel.tp > 1"),
    "heads-by-ulysses": (["parallel=ulysses", "launcher.nproc_per_node=8"], "parallel.cp", "n_heads=4 must be divisible by parallel.cp=8"),
    "seq-by-ulysses": (["parallel=ulysses", "launcher.nproc_per_node=2", "data.seq_len=31"], "data.seq_len", "divisible by parallel.cp=2"),
    "seq-by-2sp-ring": (["parallel=ring", "launcher.nproc_per_node=2", "data.seq_len=30"], "data.seq_len", "2 x parallel.cp=4"),
    # the -1 degree is named as the one that fills the world, apart from the fixed ones that do not divide it
    "product": (["parallel=fsdp_tp", "launcher.nproc_per_node=3"], "parallel.dp_shard",
                "the other degrees (parallel.tp=2) multiply to 2, which does not divide the world size 3"),
    "tp-with-ddp": (["parallel=ddp", "parallel.tp=2", "launcher.nproc_per_node=4"], "parallel.tp", "not parallel=ddp"),
    "tp-with-zero": (["parallel=zero2", "parallel.tp=2", "launcher.nproc_per_node=4"], "parallel.tp", "not parallel=zero2"),
    "tp-and-cp": (["parallel=fsdp", "parallel.tp=2", "parallel.cp=2", "launcher.nproc_per_node=4"], "parallel.cp", "not supported"),
    "tp-name-with-dp": (["parallel=tp", "parallel.tp=2", "parallel.dp_shard=2", "launcher.nproc_per_node=4"], "parallel.dp_shard",
                        "parallel=tp has no data parallelism"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_degrees_are_refused(case):
    overrides, key, message = CASES[case]
    with pytest.raises(ConfigError) as err:
        load_config([*TINY, *overrides])
    assert err.value.key == key, err.value
    assert message in str(err.value)


def test_model_without_tensor_parallelism_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(["+recipe=alphafold_tiny", "trainer.device=cpu", "parallel=tp", "launcher.nproc_per_node=2"])
    assert err.value.key == "parallel.tp" and "does not support parallel.tp" in str(err.value)


@pytest.mark.parametrize("ok", [["parallel=tp_sp"], ["parallel=ring"], ["parallel=ulysses"], ["parallel=fsdp", "parallel.cp=2"]])
def test_good_combinations_pass(ok):
    load_config([*TINY, "launcher.nproc_per_node=2" if ok[0] != "parallel=fsdp" else "launcher.nproc_per_node=4", *ok])


def test_shard_positions_cover_the_sequence_once():
    for impl in ("ulysses", "ring"):
        pos = torch.cat([shard_positions(24, 3, r, impl) for r in range(3)])
        assert sorted(pos.tolist()) == list(range(24))
    assert shard_positions(16, 2, 0, "ring").tolist() == [0, 1, 2, 3, 12, 13, 14, 15]  # chunks 0 and 3 of 4
