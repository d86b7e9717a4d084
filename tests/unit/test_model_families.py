"""Model families declare the model-parallel dimensions they implement (memtrain/models/<family>/
family.py); validation, the estimator and the planner refuse any other dimension with a degree
above 1, naming parallel.<dim> and model.arch, and the family registry imports nothing it is not
asked for."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from memtrain.config.errors import ConfigError
from memtrain.config.loader import compose_config, load_config
from memtrain.config.validate import OFFLOAD_SUPPORT
from memtrain.distributed.options import PARALLEL_REGISTRY
from memtrain.memory.estimator import estimate
from memtrain.memory.planner import plan
from memtrain.models import get_spec, register_spec
from memtrain.models.family import MODEL_PARALLEL_DIMS, families
from tests.conftest import REPO, TINY

# (overrides, the dimension refused, arch, the archs that declare it)
UNDECLARED = {
    "gpt-dap": ([*TINY, "parallel=dap", "launcher.nproc_per_node=2"], "dap", "gpt", ["alphafold"]),
    "alphafold-tp": (["+recipe=alphafold_tiny", "trainer.device=cpu", "parallel=tp", "launcher.nproc_per_node=2"],
                     "tp", "alphafold", ["gpt"]),
    "alphafold-pp": (["+recipe=alphafold_tiny", "trainer.device=cpu", "parallel=pp", "launcher.nproc_per_node=2",
                      "trainer.micro_batch_size=4", "parallel.pp_microbatches=2"], "pp", "alphafold", ["gpt"]),
    "fuxi-spatial": (["+recipe=weather_fuxi_tiny", "trainer.device=cpu", "parallel=spatial", "launcher.nproc_per_node=2"],
                     "spatial", "fuxi", ["pangu"]),
    "pangu-cp": (["+recipe=weather_swin_tiny", "trainer.device=cpu", "parallel=ddp", "parallel.cp=2",
                  "launcher.nproc_per_node=2"], "cp", "pangu", ["gpt"]),
}


def test_every_family_declares_what_its_spec_implements():
    archs = families()
    assert set(archs) == {"alphafold", "gpt", "pangu", "fuxi"}
    for arch, fam in archs.items():
        spec = get_spec(arch)
        assert spec.arch == arch and spec.model_parallel == fam.model_parallel
        assert set(fam.model_parallel) <= set(MODEL_PARALLEL_DIMS)
        assert ("pp" in fam.model_parallel) == (spec.pipeline_fn is not None), arch
        assert not (set(fam.model_parallel) - {"pp"}) or spec.parallelize is not None, arch


def test_a_spec_that_contradicts_its_declaration_is_not_registered():
    gpt = get_spec("gpt")
    with pytest.raises(ValueError, match="pipeline_fn"):
        register_spec(dataclasses.replace(gpt, pipeline_fn=None))
    with pytest.raises(ValueError, match="parallelize"):
        register_spec(dataclasses.replace(get_spec("pangu"), parallelize=None))
    assert get_spec("gpt") is gpt


@pytest.mark.parametrize("case", UNDECLARED, ids=list(UNDECLARED))
def test_an_undeclared_dimension_is_refused_naming_both_keys(case):
    overrides, dim, arch, supporting = UNDECLARED[case]
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    text = str(err.value)
    assert err.value.key == f"parallel.{dim}", text
    assert f"model.arch={arch} does not support parallel.{dim}" in text
    assert err.value.allowed == supporting
    assert "\n" not in text


def test_a_declared_dimension_of_degree_one_is_accepted():
    load_config([*TINY, "parallel=dap"])  # one process: a dap degree of 1 splits nothing


def test_the_estimator_reads_the_declaration():
    """Composed without validation (as `estimate(cfg)` may be called): before the declaration,
    a GPT under parallel=dap was estimated with half its activations."""
    cfg = compose_config([*TINY, "parallel=dap", "launcher.nproc_per_node=2"])
    with pytest.raises(ConfigError) as err:
        estimate(cfg)
    assert err.value.key == "parallel.dap" and "model.arch=gpt" in str(err.value)


def test_the_planner_refuses_a_pinned_undeclared_dimension_before_enumerating():
    progress = []
    with pytest.raises(ConfigError) as err:
        plan([*TINY, "parallel=dap", "hardware.gpus=2"], progress=lambda done, n: progress.append(n))
    assert err.value.key == "parallel.dap" and err.value.allowed == ["alphafold"]
    assert progress == []


def test_the_offload_table_is_one_table():
    pairs = {(p.name, o) for p in PARALLEL_REGISTRY for o in p.offloads}
    assert pairs == {(p, o) for o, parallels in OFFLOAD_SUPPORT.items() for p in parallels}


# -- imports: what the config-error and estimate paths load ---------------------------------------------

HEAVY = ("deepspeed", "triton", "xarray", "transformers", "torch._dynamo", "torch.distributed.pipelining",
         "torch.distributed.tensor")
SPECS = {"alphafold": "memtrain.models.alphafold.spec", "gpt": "memtrain.models.gpt.spec",
         "weather": "memtrain.models.weather.spec"}

PROBE = """
import json, sys
from memtrain import cli
codes = [cli.main(args) for args in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""


def loaded(*commands: list[str]) -> tuple[list[int], set[str]]:
    """Run memtrain's commands in one fresh interpreter: their exit codes and the modules loaded."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["codes"], set(out["modules"])


def test_config_errors_import_no_heavy_module_and_no_family():
    codes, modules = loaded(
        ["train", *TINY, "trainer.max_stepz=1"],  # unknown key
        ["train", *TINY, "parallel=dap", "launcher.nproc_per_node=2", "trainer.max_steps=1"],  # undeclared dimension
        ["train", *TINY, "parallel=fsdp", "parallel.tp=3", "launcher.nproc_per_node=2"],  # degrees' product
        ["estimate", *TINY, "optimizer.lr=-1"],
    )
    assert codes == [2, 2, 2, 2]
    assert not modules & {*HEAVY, *SPECS.values()}, modules & {*HEAVY, *SPECS.values()}


@pytest.mark.parametrize("recipe,family", [("alphafold_tiny", "alphafold"), ("protein_lm", "gpt"),
                                           ("weather_fuxi_tiny", "weather")])
def test_estimate_imports_only_its_family_and_no_heavy_module(recipe, family):
    codes, modules = loaded(["estimate", f"+recipe={recipe}", "--json"])
    assert codes == [0]
    assert SPECS[family] in modules
    unexpected = modules & {*HEAVY, *(m for f, m in SPECS.items() if f != family)}
    assert not unexpected, unexpected


REGISTRY_PROBE = """
import json, sys
from memtrain.models.family import families, supporting
listed = {"families": sorted(families()), "dap": supporting("dap")}
before = sorted(m for m in sys.modules if m.startswith("memtrain.models.") and m.endswith(".spec")) + ["torch"] * ("torch" in sys.modules)
from memtrain.models import get_spec
get_spec("pangu")
after = sorted(m for m in sys.modules if m.startswith("memtrain.models.") and m.endswith(".spec"))
print(json.dumps({**listed, "before": before, "after": after}))
"""


def test_the_registry_lists_families_without_importing_them():
    proc = subprocess.run([sys.executable, "-c", REGISTRY_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["families"] == ["alphafold", "fuxi", "gpt", "pangu"] and out["dap"] == ["alphafold"]
    assert out["before"] == []  # listing the families imported no spec, nor torch
    assert out["after"] == ["memtrain.models.spec", "memtrain.models.weather.spec"]
