"""The parallel and offload registry (memtrain.config.parallel_options): one record per YAML option,
lookups that name the key of an unknown option, and no branch on an option's name elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from memtrain.config.errors import ConfigError
from memtrain.config.loader import CONF_DIR, load_config
from memtrain.config.parallel_options import (
    OFFLOAD_REGISTRY, PARALLEL_REGISTRY, Backend, DataParallel, Place, offload_option, parallel_option,
)
from tests.conftest import TINY

SRC = Path(__file__).resolve().parents[2] / "memtrain"


def _yaml_names(group: str) -> set[str]:
    return {OmegaConf.load(f).name for f in (CONF_DIR / group).glob("*.yaml")}


def test_every_yaml_option_has_one_record_and_every_record_a_yaml():
    assert {o.name for o in PARALLEL_REGISTRY} == _yaml_names("parallel")
    assert {o.name for o in OFFLOAD_REGISTRY} == _yaml_names("offload")
    assert len({o.name for o in PARALLEL_REGISTRY}) == len(PARALLEL_REGISTRY)


def test_every_record_takes_only_registered_offloads_and_dims():
    offloads = {o.name for o in OFFLOAD_REGISTRY}
    for opt in PARALLEL_REGISTRY:
        assert set(opt.offloads) <= offloads, opt.name
        assert {"none", "activations_cpu"} <= set(opt.offloads), opt.name
        assert set(opt.dp_dims) <= {"dp_replicate", "dp_shard"}, opt.name
        assert 0 <= opt.zero_stage <= 3, opt.name
        # sharding is what the data-parallel kind says it is
        assert (opt.zero_stage > 0) == (opt.data_parallel in (DataParallel.SHARD, DataParallel.HYBRID)), opt.name


def test_records_answer_what_the_branches_ask():
    assert parallel_option("zero2").shards_grads and not parallel_option("zero2").shards_params
    assert parallel_option("zero3").backend is Backend.DEEPSPEED and parallel_option("zero3").params_released_after_module_forward
    assert parallel_option("fsdp").fsdp and not parallel_option("fsdp").params_released_after_module_forward
    assert parallel_option("hsdp").data_parallel is DataParallel.HYBRID
    assert not parallel_option("single").needs_process_group
    assert not parallel_option("zero1").compiles and parallel_option("ddp").compiles
    assert offload_option("nvme").uses_nvme and offload_option("nvme").optimizer is Place.NVME
    assert offload_option("activations_cpu").moves_anything and not offload_option("activations_cpu").model_states_offloaded
    assert not offload_option("none").moves_anything


def test_lookup_takes_a_name_a_whole_config_or_its_node():
    cfg = load_config([*TINY, "parallel=zero2", "offload=optimizer_cpu", "launcher.nproc_per_node=2"])
    assert parallel_option(cfg) is parallel_option(cfg.parallel) is parallel_option("zero2")
    assert offload_option(cfg) is offload_option(cfg.offload) is offload_option("optimizer_cpu")


@pytest.mark.parametrize("lookup,key", [(parallel_option, "parallel.name"), (offload_option, "offload.name")])
def test_an_unknown_option_is_a_config_error_naming_its_key(lookup, key):
    with pytest.raises(ConfigError) as err:
        lookup("zero4")
    assert err.value.key == key and "'zero4'" in err.value.message and err.value.allowed


@pytest.mark.parametrize("overrides,key,message", [
    (["parallel=dap", "parallel.dap=1", "parallel.dp_shard=2", "launcher.nproc_per_node=2"], "parallel.dp_shard",
     "parallel=dap composes with data parallelism over parallel.dp_replicate only"),
    (["parallel=spatial", "parallel.spatial=1", "parallel.dp_replicate=2", "launcher.nproc_per_node=2"],
     "parallel.dp_replicate", "parallel=spatial has no data parallelism"),
    (["parallel=ulysses", "parallel.cp=1", "parallel.dp_replicate=2", "launcher.nproc_per_node=2"],
     "parallel.dp_replicate", "use parallel=ddp or fsdp or hsdp with parallel.cp"),
])
def test_data_parallel_dims_an_option_does_not_take_are_refused(overrides, key, message):
    with pytest.raises(ConfigError) as err:
        load_config([*TINY, *overrides])
    assert err.value.key == key, err.value
    assert message in str(err.value)


# a comparison of parallel.name / offload.name (or a local holding it) with an option's name
_NAMES = "single|ddp|fsdp|hsdp|zero[123]?|dap|pp|tp|cp|spatial|none|activations_cpu|optimizer_cpu|params_cpu|nvme"
_BRANCH = re.compile(
    rf"(parallel|offload|\bp|\boff)\.name( *(==|!=|not in|in)\b|\.startswith)"
    rf"|\b(name|parallel|offload) *(==|!=) *\"({_NAMES})\""
    rf"|\b(name|parallel|offload)\.startswith\(\"zero"
    rf"|\b(name|parallel|offload) +(not )?in \(\"({_NAMES})\"")


def test_no_code_branches_on_a_parallel_or_offload_name():
    hits = [f"{path.relative_to(SRC.parent)}:{i}: {line.strip()}"
            for path in SRC.rglob("*.py") if "data" not in path.relative_to(SRC).parts[:1]
            for i, line in enumerate(path.read_text().splitlines(), 1) if _BRANCH.search(line)]
    assert not hits, "ask memtrain.config.parallel_options' records instead:\n" + "\n".join(hits)
