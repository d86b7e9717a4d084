"""`memtrain plan`: which combination of memory techniques fits the hardware and runs fastest.

    memtrain plan +recipe=alphafold hardware.gpu_mem_gb=80 hardware.gpus=8 hardware.host_mem_gb=512
    memtrain plan +recipe=protein_lm model=gpt_1b hardware=a100 hardware.gpus=1 --top 5 --json

The candidate space is the table AXES below: each Axis names the override key it sets, the values
it tries, and a predicate saying when it applies. Candidates are the product of the axes (an axis
the user already set on the command line is kept fixed). Each candidate's config is the recipe's
config composed once by Hydra, with every group option composed once and swapped in, and key
overrides applied with OmegaConf; the project's validator (memtrain.config.validate.validate) runs
on every candidate and those it refuses are dropped; the rows printed are composed again from their
override strings with load_config (the command line's own path) before they are shown. Each
survivor gets the estimator's per-device peak over the step's phases (MemoryEstimate.peak:
forward end, backward, optimizer step; memtrain.memory.phases) and the cost model's step time
(memtrain.memory.cost_model); those whose peak does not fit hardware.gpu_mem_gb x mem_usable (or
whose host bytes do not fit the host memory) are dropped, and the rest are ranked by predicted
step time, then peak memory.

The global batch stays fixed across candidates: the recipe's micro-batch x grad_accum per GPU times
the GPUs of the hardware (or --global-batch); the micro-batch axis splits each data-parallel rank's
share into micro_batch_size x grad_accum.

Adding an axis (another optimizer, a kernel backend, a parallel dimension) is one entry in AXES
(or one more Option from parallel_layouts), e.g.

    Axis("attention", "model.attention_backend", attention_backends,
         applies=lambda ctx, cfg: "chunk_size" in cfg.model and "attention_backend" in cfg.model)

placed before "micro_batch" (which reads the data-parallel degree the earlier axes leave). Values
are plain option names or values (`key=value`), or `Option`s setting several keys at once; a values
function leaves out what the validator would refuse, so the space stays small (power-of-two
degrees, optimizers only where memtrain.optim.compat lets them run), and every composed candidate
still goes through the validator. The estimator and the cost model must know the new technique's
memory and time (their docs say how).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from memtrain.config.errors import ConfigError, as_enum, from_hydra
from memtrain.config.loader import CONF_DIR, RECIPES_DIR, register_all, resolve_all
from memtrain.config.schema import DType
from memtrain.config.validate import check_values, validate, validate_hardware
from memtrain.distributed.mesh import DIMS, ParallelDims
from memtrain.distributed.options import PARALLEL_REGISTRY, DataParallel, offload_option, parallel_option
from memtrain.config.cfgview import ConfigView
from memtrain.memory.cost_model import STEPS_RELATIVE, GiB, StepCost, step_cost
from memtrain.memory.estimator import MemoryEstimate, estimate
from memtrain.models import get_spec
from memtrain.models.family import check_model_parallel, family

PLANNED_GROUPS = ("parallel", "precision", "optimizer", "offload", "activation_checkpoint")  # the axes that swap groups
GROUPS = ("model", "parallel", "precision", "optimizer", "offload", "activation_checkpoint", "data", "trainer", "launcher", "hardware")


@dataclass(frozen=True)
class Option:
    """One value of an axis: a label and the (key, value) overrides it sets. A key that is a config
    group (`precision`) selects that group's option; any other key is a dotted config key."""

    label: str
    overrides: tuple[tuple[str, Any], ...]

    def strings(self) -> list[str]:
        return [f"{k}={_fmt(v)}" for k, v in self.overrides]


@dataclass
class PlanContext:
    base: list[str]  # the user's overrides (recipe, model, hardware, ...)
    base_cfg: DictConfig
    gpus_per_node: int
    nodes: int
    global_batch: int

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes


Values = Union[Sequence[Any], Callable[[PlanContext, DictConfig], Sequence[Any]]]


def _always(ctx: PlanContext, cfg: DictConfig) -> bool:
    return True


@dataclass(frozen=True)
class Axis:
    name: str  # column label
    key: str  # the override key it sets (a group or a dotted key); the user setting it pins the axis
    values: Values  # option names / values, or (ctx, candidate so far) -> values
    applies: Callable[[PlanContext, DictConfig], bool] = _always

    def options(self, ctx: PlanContext, cfg: DictConfig) -> list[Option]:
        values = self.values(ctx, cfg) if callable(self.values) else self.values
        return [v if isinstance(v, Option) else Option(_fmt(v), ((self.key, v),)) for v in values]


def _fmt(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending (trial division up to sqrt(n))."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def powers_of_two(n: int) -> list[int]:
    """Model-parallel degrees tried: the powers of two above 1 that divide n (a node's GPUs)."""
    return [d for d in divisors(n) if d > 1 and d & (d - 1) == 0]


def parallel_layouts(ctx: PlanContext, cfg: DictConfig) -> list[Option]:
    """Every data-parallel option over the whole machine; DAP at each degree dividing a node; the
    model's tensor, sequence and pipeline parallelism (model_parallel_layouts)."""
    if ctx.world == 1:
        return [Option(o.name, (("parallel", o.name),)) for o in PARALLEL_REGISTRY if not o.needs_process_group]
    # the data-parallel options (replicated or sharded) over every rank; the hybrid ones over the nodes
    layouts = [Option(o.name, (("parallel", o.name),)) for o in PARALLEL_REGISTRY
               if o.data_parallel in (DataParallel.REPLICATE, DataParallel.SHARD)]
    if ctx.nodes > 1:
        layouts += [Option(f"{o.name}(r={ctx.nodes})", (("parallel", o.name), ("parallel.dp_replicate", ctx.nodes)))
                    for o in PARALLEL_REGISTRY if o.data_parallel is DataParallel.HYBRID]
    if "dap" in family(cfg.model.arch).model_parallel:  # DAP splits AlphaFold's representations
        for d in divisors(ctx.gpus_per_node)[1:]:
            layouts.append(Option(f"dap={d}", (("parallel", "dap"), ("parallel.dap", d), ("parallel.dp_replicate", -1))))
    return layouts + model_parallel_layouts(ctx, cfg)


PP_SCHEDULES = (("1f1b", 1), ("interleaved_1f1b", 2), ("zbv", 2))  # (schedule, stages per rank)


def model_parallel_layouts(ctx: PlanContext, cfg: DictConfig) -> list[Option]:
    """Tensor (tp), context (cp: Ulysses, Ring) and pipeline (pp) parallelism at power-of-two degrees
    dividing a node's GPUs, for the models that support them. A degree that takes the whole machine
    uses parallel=tp|ulysses|ring; a smaller one composes with FSDP over the remaining ranks
    (pipelines with DDP replicas). Degrees the model cannot split (heads for tp and Ulysses, blocks
    for pp stages, tied embeddings for pp) are left out before composing; the validator still judges
    every candidate."""
    spec = get_spec(cfg.model.arch)
    m, out = cfg.model, []
    degrees = powers_of_two(ctx.gpus_per_node)
    if "tp" in spec.model_parallel:
        kv = m.get("n_kv_heads") or m.n_heads
        for d in degrees:
            if m.n_heads % d == 0 and kv % d == 0:
                out.append(Option(f"tp={d}", (("parallel", "tp"), ("parallel.tp", d))) if d == ctx.world else
                           Option(f"fsdp+tp={d}", (("parallel", "fsdp"), ("parallel.tp", d), ("parallel.dp_shard", -1))))
    if "cp" in spec.model_parallel:
        for d in degrees:
            for impl in ("ulysses", "ring"):
                if impl == "ulysses" and m.n_heads % d:
                    continue
                out.append(Option(f"{impl}={d}", (("parallel", impl), ("parallel.cp", d))) if d == ctx.world else
                           Option(f"fsdp+{impl}={d}", (("parallel", "fsdp"), ("parallel.cp", d),
                                                       ("parallel.cp_impl", impl), ("parallel.dp_shard", -1))))
    if "pp" in spec.model_parallel and not m.get("tie_embeddings", False):
        n_blocks = spec.num_blocks(m)
        for d in degrees:
            for schedule, v in PP_SCHEDULES:
                if n_blocks % (d * v) == 0:
                    out.append(Option(f"pp={d}/{schedule}", (
                        ("parallel", "pp"), ("parallel.pp", d), ("parallel.dp_replicate", -1),
                        ("parallel.pp_schedule", schedule), ("parallel.pp_stages_per_rank", v),
                        ("parallel.pp_microbatches", d * v))))
    return out


def _model_parallel(cfg: DictConfig) -> bool:
    p = cfg.parallel
    return p.tp != 1 or p.cp != 1 or p.pp != 1


def offloads(ctx: PlanContext, cfg: DictConfig) -> list[str]:
    """The offloads the parallel option takes (memtrain.distributed.options); none with model
    parallelism, whose estimates and pipelines have no offload."""
    if _model_parallel(cfg):
        return ["none"]
    return [o for o in ("none", "optimizer_cpu", "params_cpu") if o in parallel_option(cfg).offloads]


def precisions(ctx: PlanContext, cfg: DictConfig) -> list[str]:
    """bf16, fp16 (not in pipelines: no loss scaling there), fp32; fp8 only on hardware with fp8
    tensor cores (hardware.fp8) and once a precision option named fp8 exists."""
    out = ["bf16", "fp32"] if cfg.parallel.pp != 1 else ["bf16", "fp16", "fp32"]
    if cfg.hardware.fp8 and fp8_option_exists():
        out.append("fp8")
    return out


def fp8_option_exists() -> bool:
    return (CONF_DIR / "precision" / "fp8.yaml").is_file()


SHAPE_AWARE = ("adafactor", "sm3", "came", "adam_mini")  # memtrain.optim.compat.SHAPE_AWARE, by option name
OPTIMIZERS = ("adamw", "adafactor", "lion", "came", "sm3", "adam_mini", "adamw_bf16", "adamw_8bit", "mezo")


def optimizers(ctx: PlanContext, cfg: DictConfig) -> list[str]:
    """The optimizers memtrain.optim.compat lets run with the parallel, precision and offload chosen:
    shape-aware ones not under DeepSpeed ZeRO, 8-bit AdamW where bitsandbytes is installed and not
    under FSDP2, MeZO with single or DDP, fp32 parameters, no loss scaling and no offload; Adam-mini
    not with pipeline stages (the estimator's blocks of one stage have no Adam-mini partition)."""
    par, prec = parallel_option(cfg), cfg.precision
    out = []
    for opt in OPTIMIZERS:
        if opt in SHAPE_AWARE and par.flat_partitions:
            continue
        if opt == "adam_mini" and cfg.parallel.pp != 1:  # the estimator has no per-stage Adam-mini model
            continue
        if opt == "adamw_8bit" and (importlib.util.find_spec("bitsandbytes") is None or par.fsdp):
            continue
        if opt == "mezo" and (not par.zeroth_order or _model_parallel(cfg) or prec.loss_scaling
                              or as_enum(prec.param_dtype, DType) is not DType.float32 or offload_option(cfg).moves_anything):
            continue
        out.append(opt)
    return out


def attention_backends(ctx: PlanContext, cfg: DictConfig) -> list[str]:
    """AlphaFold's attention as configured, and the fused Triton kernels where they can run."""
    from memtrain.config.kernel_runtime import unavailable_reason
    from memtrain.models.alphafold.family import AttentionBackend

    current = as_enum(cfg.model.attention_backend, AttentionBackend)
    fused = current is not AttentionBackend.triton and unavailable_reason("cuda") is None
    return [current.name] + ([AttentionBackend.triton.name] if fused else [])  # override values


def micro_batches(ctx: PlanContext, cfg: DictConfig) -> list[Option]:
    """Split this rank's share of the global batch into micro_batch_size x grad_accum (a micro-batch
    divisible by the pipeline's micro-batches under pp)."""
    dims = ParallelDims.from_config(cfg.parallel, ctx.world)
    n_dp = dims.dp
    if ctx.global_batch % n_dp:
        return []
    share = ctx.global_batch // n_dp
    step = cfg.parallel.pp_microbatches if dims.pp > 1 else 1
    return [Option(f"{m}x{share // m}", (("trainer.micro_batch_size", m), ("trainer.grad_accum", share // m)))
            for m in divisors(share) if m % step == 0]


AXES: list[Axis] = [
    Axis("parallel", "parallel", parallel_layouts),
    Axis("offload", "offload", offloads),
    Axis("precision", "precision", precisions),
    Axis("optimizer", "optimizer", optimizers),
    Axis("activation_checkpoint", "activation_checkpoint", ("none", "selective", "full")),
    Axis("chunk", "model.chunk_size", (None, 64), applies=lambda ctx, cfg: "chunk_size" in cfg.model),
    Axis("attention", "model.attention_backend", attention_backends,
         applies=lambda ctx, cfg: "chunk_size" in cfg.model and "attention_backend" in cfg.model),
    Axis("micro_batch", "trainer.micro_batch_size", micro_batches),
]


@dataclass
class PlanRow:
    overrides: list[str]  # runnable: memtrain train <overrides>
    choices: dict[str, str]
    estimate: MemoryEstimate
    cost: StepCost
    seq_len: int = 1  # tokens per sample (language models), for measured step times

    @property
    def peak_bytes(self) -> int:
        """The device bytes at the step's peak (MemoryEstimate.peak), what fitting and ranking read."""
        return self.estimate.peak

    def as_dict(self) -> dict:
        return {"overrides": self.overrides, "command": "memtrain train " + " ".join(self.overrides),
                "choices": self.choices, "step_s": self.cost.total_s, "progress_s": self.cost.progress_s,
                "steps_relative": self.cost.steps_relative, "cost": self.cost.as_dict(),
                "peak_bytes": self.peak_bytes, "host_bytes": self.estimate.host, "estimate": self.estimate.as_dict()}


@dataclass
class Plan:
    hardware: dict
    global_batch: int
    rows: list[PlanRow]  # fitting, ranked
    considered: int = 0
    invalid: int = 0
    pruned: int = 0  # larger micro-batches of a candidate that already did not fit, not estimated
    mismatched: int = 0  # verified rows whose estimate from the Hydra-composed config differed (a bug)
    too_big: list[PlanRow] = field(default_factory=list)
    # the first refusal met (a candidate's validation, or an axis whose options the pinned choices
    # cannot form), which the message gives when no candidate was valid
    first_refusal: str | None = None

    @property
    def smallest(self) -> PlanRow | None:
        return min(self.too_big, key=lambda r: r.peak_bytes, default=None)


def check_pinned_model_parallel(base_cfg: DictConfig, pinned: set[str], world: int) -> None:
    """A model-parallel degree the command line fixes (parallel=OPTION over the target world, or
    parallel.<dim>=N) on a dimension the model's family does not declare is refused at once
    (memtrain.models.family.check_model_parallel), not after every candidate has been refused."""
    p = base_cfg.parallel
    if "parallel" in pinned:
        try:
            degrees = vars(ParallelDims.from_config(p, world))
        except ConfigError:  # degrees that do not fit the target world: each candidate is judged later
            degrees = {d: world if p[d] == -1 else p[d] for d in DIMS}
    else:
        degrees = {d: p[d] for d in DIMS if f"parallel.{d}" in pinned}
    check_model_parallel(base_cfg.model.arch, degrees)


def _pinned(base: list[str]) -> set[str]:
    keys = set()
    for o in base:
        key = o.split("=", 1)[0].lstrip("+~")
        keys.add(key)
        if key in ("trainer.micro_batch_size", "trainer.grad_accum"):
            keys.add("trainer.micro_batch_size")
    return keys


class _Composer:
    """The recipe's config composed once by Hydra, as a ConfigView; each group option composed once.

    A group option is the option's YAML over its schema, with the recipe's and the command line's
    keys for that group applied after it, as Hydra composes it (conf/<group>/<option>.yaml list
    the schema and _self_ in their defaults). The fast path is checked against Hydra on the base
    config's own choice of every group: a group whose choice it does not reproduce exactly, and an
    option file with other defaults, are composed by Hydra instead."""

    def __init__(self, base: list[str]):
        self.base = base
        self._groups: dict[tuple[str, str], dict | None] = {}
        self._typed: dict[tuple[str, Any], Any] = {}
        register_all()
        self._ctx = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
        self._ctx.__enter__()
        cfg = self._compose([], hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        self.base_cfg = cfg
        try:
            self.view = ConfigView.of(cfg)
        except OmegaConfBaseException as exc:  # an interpolation that does not resolve
            raise from_hydra(exc) from exc
        self._group_updates = self._updates_by_group(choices.get("recipe"))
        self._hydra_only = set()
        for group in PLANNED_GROUPS:
            option = choices.get(group)
            if option is None or self._fast_group(group, option) != self.view.to_dict()[group]:
                self._hydra_only.add(group)

    def _compose(self, extra: list[str], hydra_config: bool = False) -> DictConfig:
        try:
            return compose(config_name="train", overrides=[*self.base, *extra], return_hydra_config=hydra_config)
        except (HydraException, OmegaConfBaseException) as exc:
            raise from_hydra(exc) from exc

    def _updates_by_group(self, recipe: str | None) -> dict[str, list[tuple[str, str, Any]]]:
        """Per planned group, the (kind, key, value) updates the recipe's body and the command line
        make to it, in Hydra's order (the recipe merged, then the overrides)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        out: dict[str, list[tuple[str, str, Any]]] = {g: [] for g in PLANNED_GROUPS}
        if recipe is not None:
            body = OmegaConf.load(RECIPES_DIR / f"{recipe}.yaml")
            for group in PLANNED_GROUPS:
                if group in body:
                    out[group].append(("merge", "", body[group]))
        for o in OverridesParser.create().parse_overrides(self.base):
            group, _, key = o.key_or_group.partition(".")
            if group in out and key:
                kind = "delete" if o.is_delete() else "add" if o.is_add() or o.is_force_add() else "set"
                out[group].append((kind, key, None if o.is_delete() else o.value()))
        return out

    def _fast_group(self, group: str, option: str) -> dict | None:
        path = CONF_DIR / group / f"{option}.yaml"
        if not path.is_file():
            return None
        raw = OmegaConf.load(path)
        defaults = [str(d) for d in raw.pop("defaults", ["_self_"])]
        schemas = [d for d in defaults if d != "_self_"]
        if defaults[-1:] != ["_self_"] or len(schemas) > 1 or any(
                not (d.startswith(f"/schema/{group}/") and d.endswith("@_here_")) for d in schemas):
            return _HYDRA
        node = raw
        if schemas:
            schema = ConfigStore.instance().load(schemas[0][1:].removesuffix("@_here_") + ".yaml").node
            node = OmegaConf.merge(schema, raw)
        try:
            for kind, key, value in self._group_updates[group]:
                if kind == "merge":
                    node = OmegaConf.merge(node, value)
                elif kind == "delete":
                    with open_dict(node):
                        node.pop(key)
                elif kind == "add":
                    with open_dict(node):
                        OmegaConf.update(node, key, value, merge=True, force_add=True)
                else:
                    OmegaConf.update(node, key, value, merge=True)
        except (OmegaConfBaseException, KeyError, ValueError):
            return None  # e.g. a recipe key this option's schema lacks: Hydra refuses it too
        return OmegaConf.to_container(node, resolve=True)

    def group(self, group: str, option: str) -> dict | None:
        """The group's node (a plain container) with `option` chosen; None where it cannot compose."""
        if (group, option) not in self._groups:
            node = None if group in self._hydra_only else self._fast_group(group, option)
            if group in self._hydra_only or node is _HYDRA:
                try:
                    node = OmegaConf.to_container(self._compose([f"{group}={option}"])[group], resolve=True)
                except ConfigError:
                    node = None  # e.g. a recipe key this option's schema lacks
            self._groups[group, option] = node
        return self._groups[group, option]

    def typed(self, key: str, value: Any) -> Any:
        """`value` as the schema types `key` in the base config (an enum member for an enum key);
        _INVALID where the schema refuses it."""
        if (key, value) not in self._typed:
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(self.base_cfg, parent_key) if parent_key else self.base_cfg
            if not isinstance(parent, DictConfig) or leaf not in parent:
                typed = value
            else:
                probe = parent.copy()
                try:
                    probe[leaf] = value
                    typed = OmegaConf.to_container(probe, resolve=True)[leaf]
                except (OmegaConfBaseException, ValueError):
                    typed = _INVALID
            self._typed[key, value] = typed
        return self._typed[key, value]

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)


_HYDRA = object()  # _fast_group: this option file needs Hydra's composition
_INVALID = object()  # _Composer.typed: the schema refuses the value


def _apply(composer: _Composer, cfg: ConfigView, option: Option) -> ConfigView | None:
    updates: dict[str, Any] = {}
    for key, value in option.overrides:
        if key in GROUPS:
            node = composer.group(key, str(value))
        else:
            node = composer.typed(key, value)
        if node is None and key in GROUPS or node is _INVALID:
            return None
        updates[key] = node
    try:
        return cfg.replace(updates)
    except KeyError:
        return None


def _launcher(ctx: PlanContext) -> list[Option]:
    if ctx.world == 1:
        return []
    pairs: list[tuple[str, Any]] = [("launcher.nproc_per_node", ctx.gpus_per_node)]
    if ctx.nodes > 1:
        pairs += [("launcher.nnodes", ctx.nodes), ("launcher.rdzv_endpoint", "head-node:29500")]
    return [Option("launcher", tuple(pairs))]


def _refusal(cfg, ctx: PlanContext, cpu=None) -> ConfigError | None:
    """The project's validator's refusal of the candidate, None when valid. Checks about the
    machine the plan is made on (visible CUDA devices) are left out: the plan is for the target
    hardware."""
    probe = cfg
    if cpu is not None and torch.cuda.device_count() < ctx.gpus_per_node:
        probe = cfg.replace({"trainer.device": cpu})
    try:
        validate(probe)
    except ConfigError as exc:
        return exc
    return None


MAX_GLOBAL_BATCH = 2**20  # samples per optimizer step (LLMs use a few thousand sequences, AlphaFold 128)


def check_plan_inputs(base_cfg: DictConfig, global_batch: int | None) -> None:
    """What the planner reads from the base config, checked before anything is enumerated: the
    hardware (a zero or absurd count would divide by zero or enumerate without end), every value
    against its schema check, and the global batch."""
    try:
        resolve_all(base_cfg)
    except OmegaConfBaseException as exc:
        raise from_hydra(exc) from exc
    check_values(base_cfg)
    validate_hardware(base_cfg.hardware)
    gb = global_batch or base_cfg.trainer.micro_batch_size * base_cfg.trainer.grad_accum * \
        base_cfg.hardware.gpus * base_cfg.hardware.nodes
    if gb > MAX_GLOBAL_BATCH:
        raise ConfigError("--global-batch" if global_batch else "trainer.micro_batch_size",
                          f"a global batch of {gb} samples is beyond what the planner enumerates "
                          f"(at most {MAX_GLOBAL_BATCH})")


# stop a candidate's micro-batch loop at the first micro-batch that does not fit, trying only the last
# (grad_accum=1) after it (exact: no phase's peak falls as the micro-batch grows while gradients are
# accumulated; at grad_accum=1 they no longer outlive the backward, which can lower the peak; tests/unit/test_plan_candidates.py checks a plan
# with and without it)
PRUNE_MICRO_BATCHES = True
Progress = Callable[[float, int], None]  # (fraction of the space walked, candidates considered)


def plan(base: list[str], global_batch: int | None = None, verify_top: int | None = None,
         progress: Progress | None = None) -> Plan:
    """Enumerate, validate, estimate and rank; `verify_top` rows (all when None) are composed
    again from their override strings with load_config, estimated from that config, and any that
    fails is dropped.

    The micro-batch axis runs last, from the smallest micro-batch up: the estimator's peak and host
    bytes never fall as the micro-batch grows while grad_accum stays above 1 (activations scale with
    it, model states do not depend on it), so the first micro-batch that does not fit ends that
    candidate's loop but for its last option, micro_batch_size x 1, whose gradients no longer live
    through the forward (memtrain.memory.phases) and so may fit (`Plan.pruned` counts the ones left
    out)."""
    composer = _Composer(base)
    try:
        base_cfg = composer.base_cfg
        check_plan_inputs(base_cfg, global_batch)
        hw = base_cfg.hardware
        gb = global_batch or base_cfg.trainer.micro_batch_size * base_cfg.trainer.grad_accum * hw.gpus * hw.nodes
        ctx = PlanContext(base, base_cfg, hw.gpus, hw.nodes, gb)
        pinned = _pinned(base)
        check_pinned_model_parallel(base_cfg, pinned, ctx.world)
        axes = [a for a in AXES if a.key not in pinned]
        user = [o for o in base if not o.split("=", 1)[0].lstrip("+").startswith("hardware")]
        launcher = _launcher(ctx)
        result = Plan(hardware=OmegaConf.to_container(hw), global_batch=gb, rows=[])
        start = composer.view
        for opt in launcher:
            start = _apply(composer, start, opt)
        cpu = composer.typed("trainer.device", "cpu")
        usable_dev = hw.gpu_mem_gb * GiB * hw.mem_usable
        usable_host = hw.host_mem_gb * GiB * hw.mem_usable
        launch_strings = [s for o in launcher for s in o.strings()]

        position: list[tuple[int, int]] = []  # (option index, options) per axis level walked

        def evaluate(cfg: ConfigView, chosen: list[tuple[Axis, Option]]) -> bool:
            """Validate, estimate and file one candidate; False when it does not fit."""
            result.considered += 1
            if progress is not None and result.considered % 50 == 0:
                done, scale = 0.0, 1.0
                for k, n in position:
                    scale /= n
                    done += k * scale
                progress(done, result.considered)
            refusal = _refusal(cfg, ctx, cpu)
            if refusal is None:
                try:
                    est = estimate(cfg)
                except ConfigError as exc:
                    refusal = exc
            if refusal is not None:
                result.invalid += 1
                result.first_refusal = result.first_refusal or str(refusal)
                return True
            overrides = [*user, *launch_strings, *(s for _, o in chosen for s in o.strings())]
            row = PlanRow(overrides, {a.name: o.label for a, o in chosen}, est, step_cost(cfg, est), cfg.data.seq_len)
            fits = est.peak <= usable_dev and est.host * min(ctx.world, hw.gpus) <= usable_host
            (result.rows if fits else result.too_big).append(row)
            return fits

        def walk(i: int, cfg: ConfigView, chosen: list[tuple[Axis, Option]]) -> None:
            if i == len(axes):
                evaluate(cfg, chosen)
                return
            axis = axes[i]
            if not axis.applies(ctx, cfg):
                walk(i + 1, cfg, chosen)
                return
            try:
                options = axis.options(ctx, cfg)
            except ConfigError as exc:  # no candidate can be formed from these choices
                result.first_refusal = result.first_refusal or str(exc)
                return
            last = i == len(axes) - 1 and axis.name == "micro_batch"
            level = len(position)
            position.append((0, len(options)))
            skip_to = 0
            for k, opt in enumerate(options):
                if k < skip_to:
                    continue
                position[level] = (k, len(options))
                nxt = _apply(composer, cfg, opt)
                if nxt is None:
                    continue
                if not last:
                    walk(i + 1, nxt, [*chosen, (axis, opt)])
                elif not evaluate(nxt, [*chosen, (axis, opt)]) and PRUNE_MICRO_BATCHES and not skip_to:
                    # larger micro-batches with gradient accumulation need more memory; the last
                    # (grad_accum=1) is still tried
                    skip_to = len(options) - 1
                    result.pruned += max(0, skip_to - k - 1)
            position.pop()

        walk(0, start, [])
        if progress is not None:
            progress(1.0, result.considered)
        result.rows = rank(result.rows)
        result.rows = _verified(composer, result, verify_top, ctx)
    finally:
        composer.close()
    return result


# Rows whose predicted time per unit of progress is within NEAR_TIE of the fastest remaining row
# are ranked by simplicity: the cost model is one mfu for every shape and counts no optimizer
# arithmetic, so differences this small are below what it can resolve, and a simpler configuration
# (fewer moving parts to debug, no loss scaling, no offload) is the better advice.
NEAR_TIE = 0.03
SIMPLICITY = {  # per axis, option labels from simplest; anything unlisted comes after
    "parallel": ("single", "ddp", "fsdp", "zero1", "zero2", "zero3"),
    "offload": ("none", "activations_cpu", "optimizer_cpu", "params_cpu", "nvme"),
    "optimizer": ("adamw", "adamw_bf16", "lion", "adafactor", "came", "sm3", "adam_mini", "adamw_8bit", "mezo"),
    "precision": ("bf16", "fp32", "fp16", "fp8"),
    "activation_checkpoint": ("none", "selective", "full"),
    "chunk": ("null",),
}


def simplicity(row: PlanRow) -> tuple:
    key = []
    for axis, order in SIMPLICITY.items():
        label = row.choices.get(axis)
        key.append(order.index(label) if label in order else len(order))
    return tuple(key)


def rank(rows: list[PlanRow]) -> list[PlanRow]:
    """Rows by predicted time per unit of training progress (StepCost.progress_s); within each run
    of near-ties (within NEAR_TIE of the run's fastest row) the simplest first (SIMPLICITY, axis
    by axis), then the faster, then the smaller."""
    rows = sorted(rows, key=lambda r: (r.cost.progress_s, r.peak_bytes))
    out, i = [], 0
    while i < len(rows):
        bound = rows[i].cost.progress_s * (1 + NEAR_TIE)
        j = i
        while j < len(rows) and rows[j].cost.progress_s <= bound:
            j += 1
        out += sorted(rows[i:j], key=lambda r: (simplicity(r), r.cost.progress_s, r.peak_bytes))
        i = j
    return out


def _verified(composer: _Composer, result: Plan, verify_top: int | None, ctx: PlanContext) -> list[PlanRow]:
    """The first `verify_top` rows (all when None) composed by Hydra from their override strings
    and validated, as `memtrain train <overrides>` does, and estimated from that config; a row
    that fails is dropped (counted as refused by validation)."""
    on_cpu = [] if torch.cuda.device_count() >= ctx.gpus_per_node else ["trainer.device=cpu"]
    checked, kept = 0, []
    for row in result.rows:
        if verify_top is not None and checked >= verify_top:
            kept.append(row)
            continue
        checked += 1
        try:
            cfg = compose(config_name="train", overrides=[*row.overrides, *on_cpu])
            validate(cfg)
        except (HydraException, OmegaConfBaseException, ConfigError):
            result.invalid += 1
            continue
        if on_cpu:  # validated as on this machine; estimated for the target hardware, as the rows were
            cfg = compose(config_name="train", overrides=list(row.overrides))
        composed = estimate(cfg)  # from the config the row composes to, as `memtrain estimate` gives it
        if composed != row.estimate:
            result.mismatched += 1
        row.estimate, row.cost = composed, step_cost(cfg, composed)
        kept.append(row)
    return kept


def no_fit_message(p: Plan) -> str:
    hw = p.hardware
    usable = hw["gpu_mem_gb"] * hw["mem_usable"]
    if p.smallest is None:
        where = f"hardware.gpus={hw['gpus']}, hardware.nodes={hw['nodes']}"
        which = (f"all {p.considered} candidates were refused by validation" if p.considered
                 else "no candidate could be formed from the choices given")
        why = f"; the first refusal: {p.first_refusal}" if p.first_refusal else ""
        return f"no valid configuration to plan on {where}: {which}{why}"
    from memtrain.memory.report import human  # GiB, or MiB / KiB below one GiB

    s = p.smallest
    return (f"nothing fits: of {p.considered} candidates ({p.invalid} refused by validation), the smallest needs "
            f"{human(s.peak_bytes)} per device ({' '.join(s.overrides)}), but hardware.gpu_mem_gb="
            f"{hw['gpu_mem_gb']} leaves {human(usable * GiB)} usable (mem_usable={hw['mem_usable']}). "
            f"Use more or larger GPUs, a smaller model, crop or sequence, or a smaller global batch (--global-batch).")


def render_plan(p: Plan, top: int):
    """The ranked rows for a terminal of any width (80 columns included): a table of the numbers,
    then each row's full `memtrain train` command on lines of its own (wrapped, never cut)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    hw = p.hardware
    title = (f"memtrain plan: {hw['name']} x {hw['gpus']} GPU(s) x {hw['nodes']} node(s), {hw['gpu_mem_gb']} GiB "
             f"per GPU, {hw['host_mem_gb']} GiB host per node; global batch {p.global_batch}; "
             f"{len(p.rows)} of {p.considered} candidates fit ({p.invalid} refused by validation"
             + (f", {p.pruned} larger micro-batches of candidates that did not fit skipped" if p.pruned else "") + ")")
    table = Table(title=title, title_justify="left", box=None, padding=(0, 1), pad_edge=False,
                  header_style="bold underline")
    for col in ("#", "s/step", "steps", "x best", "GiB dev", "GiB host", "compute", "recomp", "comm", "offload"):
        table.add_column(col, justify="right", no_wrap=True)
    rows = p.rows[:top]
    best = rows[0].cost.progress_s if rows else 1.0
    for i, r in enumerate(rows, 1):
        c = r.cost
        table.add_row(str(i), f"{c.total_s:.3g}", f"{c.steps_relative:g}", f"{c.progress_s / best:.3f}",
                      f"{r.peak_bytes / GiB:.2f}", f"{r.estimate.host / GiB:.2f}", f"{c.compute_s:.3g}",
                      f"{c.recompute_s:.3g}", f"{c.dp_comm_s + c.axial_comm_s:.3g}", f"{c.offload_s:.3g}")
    notes = Text(
        f"Ranked by s/step x steps (steps: optimizer steps for one first-order step's progress; MeZO "
        f"{STEPS_RELATIVE['MeZO']:g}, Malladi et al. 2023); rows within {NEAR_TIE:.0%} of each other go simplest "
        f"first. Times from the cost model at mfu={hw['mfu']} (docs/planner.md), per step, in seconds.")
    commands = Table.grid(padding=(0, 1))
    commands.add_column(justify="right", no_wrap=True)
    commands.add_column(overflow="fold")
    for i, r in enumerate(rows, 1):
        commands.add_row(str(i), "memtrain train " + " ".join(r.overrides))
    return Group(table, notes, Text("Commands (copy a row's to run it):"), commands)


def cpu_count() -> int:
    return os.cpu_count() or 1
