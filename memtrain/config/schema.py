"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option under conf/<group>/ starts its defaults list with the schema of its group
(`- /schema/<group>/<name>@_here_`), so a typo in a key or a value of the wrong type is refused by
OmegaConf while the config is composed, before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class DType(Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class InitDevice(Enum):
    auto = "auto"  # meta when sharded parameters' full fp32 states exceed the budget, else eager
    eager = "eager"  # built whole on trainer.device on every rank
    meta = "meta"  # built on the meta device, sharded, then each rank's shards materialised


class ACMode(Enum):
    """Activation checkpointing: none, every block, or a chosen subset (Megatron's selective)."""

    none = "none"
    full = "full"
    selective = "selective"


class SelectivePolicy(Enum):
    every_k = "every_k"  # checkpoint every k-th block
    attention = "attention"  # recompute only the attention core (softmax(QK^T)V) of every block


class LRSchedule(Enum):
    constant = "constant"
    cosine = "cosine"
    linear = "linear"


class DataSource(Enum):
    protein = "protein"  # sequences (FASTA, A3M, mmCIF) for language models
    synthetic = "synthetic"  # random tokens for language models
    structure = "structure"  # mmCIF structures + A3M alignments as AlphaFold features
    era5 = "era5"  # ERA5-format gridded weather fields (NetCDF or Zarr) as lead-time pairs


class TemplateSource(Enum):
    """Where data=structure takes AlphaFold's templates from (memtrain.data.templates)."""

    homologues = "homologues"  # other entries' chains that align to the target
    self = "self"  # the target's own structure with its sequence masked (tests, ablations)


class ContextParallelImpl(Enum):
    """How parallel.cp splits attention over the sequence shards."""

    ulysses = "ulysses"  # DeepSpeed-Ulysses: all-to-all from sequence to heads and back
    ring = "ring"  # Ring Attention: K/V blocks passed around the ring, online-softmax merge


class QATScheme(Enum):
    none = "none"
    int8 = "int8"  # LLM-QAT: int8 weights per output channel
    int4 = "int4"  # LLM-QAT: int4 weights per output channel
    bitnet = "bitnet"  # BitNet b1.58 BitLinear: ternary weights, absmean scale


class QATActivations(Enum):
    none = "none"
    int8 = "int8"  # symmetric per-token absmax


class FP8Scaling(Enum):
    dynamic = "dynamic"  # scale from the current tensor's amax
    delayed = "delayed"  # scale from the max over an amax history of past steps


# ---------------------------------------------------------------------------------------------
# value checks, declared with the field they check (memtrain.config.validate.check_values reads
# them): a number's bounds, a list's length and its items' bounds, the choices of a string. Every
# float of every config must also be finite.


@dataclass(frozen=True)
class Check:
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    length: Optional[int] = None  # a list: exactly this many items (each item is checked against the bounds)
    choices: Optional[tuple] = None  # a string, or each string of a list: one of these

    def describe(self) -> str:
        parts = [f"{op} {v}" for op, v in (("at least", self.ge), ("more than", self.gt), ("at most", self.le),
                                            ("less than", self.lt)) if v is not None]
        return " and ".join(parts)


_NO_DEFAULT = object()


def checked(default: Any = _NO_DEFAULT, *, factory: Any = None, **check: Any) -> Any:
    """A dataclass field with a value check: `lr: float = checked(3e-4, gt=0)`."""
    metadata = {"check": Check(**check)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


SEED_MAX = 2**32 - 1  # numpy's RandomState (data pipelines) takes seeds in [0, 2^32)


# ---------------------------------------------------------------------------------------------
# model


@dataclass
class ModelConfig:
    """The base of every model family's config schema. Each family declares its own subclass in
    memtrain/models/<family>/family.py (GPTConfig, AlphaFoldConfig, PanguConfig, FuXiConfig), found
    and registered as /schema/model/<arch> by register_schemas."""

    arch: str = MISSING  # key of the ModelSpec registry (memtrain.models)


# ---------------------------------------------------------------------------------------------
# parallel, precision, offload, activation checkpointing


@dataclass
class ParallelConfig:
    """Degrees of every parallel dimension; their product must equal the world size. One degree
    may be -1: it takes whatever the others leave of the world size."""

    name: str = "single"  # single | ddp | fsdp | hsdp | zero1 | zero2 | zero3 | dap | tp | cp | pp | spatial
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dap: int = 1
    spatial: int = 1  # parallel=spatial: ranks sharing one sample, its latitude axis split over them
    reshard_after_forward: bool = True  # fsdp/hsdp: free gathered parameters after the forward
    backend: Optional[str] = None  # process-group backend; None: nccl on CUDA, gloo on CPU
    # pipeline parallelism (parallel.pp > 1): schedule, micro-batches a trainer micro-batch is
    # split into, and model stages held by each pipeline rank (interleaved, zero bubble, ZB-V)
    # gpipe | 1f1b | interleaved_1f1b | zero_bubble | zbv (a string: "1f1b" is no Python name)
    pp_schedule: str = "1f1b"
    pp_microbatches: int = checked(4, ge=1)
    pp_stages_per_rank: int = checked(1, ge=1)
    tp_sp: bool = False  # tp>1: Megatron sequence parallelism (norms and residuals sharded along the sequence)
    cp_impl: ContextParallelImpl = ContextParallelImpl.ulysses  # cp>1: how attention crosses the shards


@dataclass
class LauncherConfig:
    """How many processes, on how many nodes (torchrun semantics). A process started by torchrun
    or srun joins the job from its environment instead of launching."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str = "localhost:0"  # host:port of the rendezvous; port 0 picks a free one (single node)
    rdzv_id: str = "memtrain"
    max_restarts: int = checked(0, ge=0, le=100)  # a worker that refuses bad input fails the same way each time


@dataclass
class PrecisionConfig:
    name: str = "fp32"
    param_dtype: DType = DType.float32  # dtype the parameters (and optimizer master copy) live in
    compute_dtype: DType = DType.float32  # autocast dtype; float32 means no autocast
    loss_scaling: bool = False  # dynamic loss scaling (torch.amp.GradScaler), needed for fp16
    init_scale: float = checked(65536.0, gt=0, le=2.0**64)  # float32 holds it, and 64 halvings reach 1
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    qat: QATScheme = QATScheme.none  # quantization-aware training of the blocks' linear layers
    qat_activations: QATActivations = QATActivations.int8  # int8/int4 QAT: per-token input quantization
    fp8: bool = False  # FP8 (e4m3/e5m2) GEMMs for the blocks' linear layers, CUDA capability >= 8.9
    fp8_scaling: FP8Scaling = FP8Scaling.dynamic
    fp8_amax_history: int = checked(16, ge=1)  # fp8_scaling=delayed: steps of amax history per tensor


@dataclass
class OffloadConfig:
    name: str = "none"  # none | optimizer_cpu | params_cpu | nvme | activations_cpu
    nvme_path: str = "/tmp/memtrain_nvme"  # nvme: folder on a fast local disk
    pin_memory: bool = True  # page-locked host buffers (CUDA only)


@dataclass
class ActivationCheckpointConfig:
    mode: ACMode = ACMode.none
    policy: SelectivePolicy = SelectivePolicy.every_k  # used when mode=selective
    every_k: int = 2  # used when policy=every_k


# ---------------------------------------------------------------------------------------------
# optimizer: instantiated with hydra.utils.instantiate(cfg)(param_groups)


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = checked(3e-4, gt=0)
    weight_decay: float = checked(0.0, ge=0)


@dataclass
class AdamWConfig(OptimizerConfig):
    _target_: str = "torch.optim.AdamW"
    lr: float = checked(3e-4, gt=0)
    betas: list[float] = checked(factory=lambda: [0.9, 0.95], length=2, ge=0, lt=1)
    eps: float = checked(1e-8, ge=0)
    weight_decay: float = checked(0.1, ge=0)
    fused: Optional[bool] = None  # None: torch's fused kernel where it has one for the device (CUDA, CPU, ...)


@dataclass
class AdafactorConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adafactor"
    lr: float = checked(1e-2, gt=0)
    beta2_decay: float = checked(-0.8, le=0)
    eps: list[Optional[float]] = checked(factory=lambda: [None, 1e-3], length=2, ge=0)
    d: float = checked(1.0, ge=0)
    weight_decay: float = checked(0.0, ge=0)
    foreach: Optional[bool] = None  # None: torch's default (foreach on CUDA); no fused Adafactor in torch


@dataclass
class LionConfig(OptimizerConfig):
    """Lion (Chen et al. 2023): sign of an interpolated momentum; one moment per parameter."""

    _target_: str = "memtrain.optim.lion.Lion"
    lr: float = checked(1e-4, gt=0)  # the paper: 3-10x smaller than AdamW's
    betas: list[float] = checked(factory=lambda: [0.9, 0.99], length=2, ge=0, lt=1)
    weight_decay: float = checked(0.1, ge=0)
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class SM3Config(OptimizerConfig):
    """SM3-II (Anil et al. 2019): one accumulator per row and per column (per dim)."""

    _target_: str = "memtrain.optim.sm3.SM3"
    lr: float = checked(1e-2, gt=0)
    momentum: float = checked(0.0, ge=0, lt=1)  # > 0 adds a full-size momentum buffer
    weight_decay: float = checked(0.0, ge=0)
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class CAMEConfig(OptimizerConfig):
    """CAME (Luo et al. 2023): factored second moment and factored confidence, with momentum."""

    _target_: str = "memtrain.optim.came.CAME"
    lr: float = checked(2e-4, gt=0)
    betas: list[float] = checked(factory=lambda: [0.9, 0.999, 0.9999], length=3, ge=0, lt=1)
    eps: list[float] = checked(factory=lambda: [1e-30, 1e-16], length=2, ge=0)
    d: float = checked(1.0, gt=0)  # update clipping threshold
    weight_decay: float = checked(0.0, ge=0)
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class AdamMiniConfig(OptimizerConfig):
    """Adam-mini (Zhang et al. 2024): one second moment per head (Q, K), per output neuron
    (other matrices), per tensor (vectors); AdamW for the modules named in adamw_names."""

    _target_: str = "memtrain.optim.adam_mini.AdamMini"
    lr: float = checked(3e-4, gt=0)
    betas: list[float] = checked(factory=lambda: [0.9, 0.95], length=2, ge=0, lt=1)
    eps: float = checked(1e-8, ge=0)
    weight_decay: float = checked(0.1, ge=0)
    adamw_names: list[str] = field(default_factory=lambda: ["tok_embeddings", "output"])
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class AdamWBF16Config(OptimizerConfig):
    """AdamW with both moments stored in bfloat16 (stochastically rounded)."""

    _target_: str = "memtrain.optim.adamw_bf16.AdamWBF16"
    lr: float = checked(3e-4, gt=0)
    betas: list[float] = checked(factory=lambda: [0.9, 0.95], length=2, ge=0, lt=1)
    eps: float = checked(1e-8, ge=0)
    weight_decay: float = checked(0.1, ge=0)
    stochastic_rounding: bool = True
    seed: int = checked(0, ge=0, le=SEED_MAX)
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class AdamW8bitConfig(OptimizerConfig):
    """bitsandbytes' 8-bit AdamW (Dettmers et al. 2022): block-wise quantized moments."""

    _target_: str = "bitsandbytes.optim.AdamW8bit"
    lr: float = checked(3e-4, gt=0)
    betas: list[float] = checked(factory=lambda: [0.9, 0.95], length=2, ge=0, lt=1)
    eps: float = checked(1e-8, ge=0)
    weight_decay: float = checked(0.1, ge=0)
    min_8bit_size: int = checked(4096, ge=0)  # smaller tensors keep 32-bit moments


@dataclass
class MeZOConfig(OptimizerConfig):
    """MeZO (Malladi et al. 2023): zeroth-order SPSA, forward passes only, no state."""

    _target_: str = "memtrain.optim.mezo.MeZO"
    lr: float = checked(1e-6, gt=0)
    eps: float = checked(1e-3, gt=0)  # perturbation scale
    weight_decay: float = checked(0.0, ge=0)


# ---------------------------------------------------------------------------------------------
# data and trainer


@dataclass
class DataConfig:
    source: DataSource = DataSource.protein
    root: Optional[str] = None  # protein: a folder; None means $MEMTRAIN_DATA_DIR/proteins or ../shared/data/proteins
    formats: list[str] = checked(factory=lambda: ["fasta", "a3m", "mmcif"], choices=("fasta", "a3m", "mmcif"))
    seq_len: int = checked(128, ge=1)
    num_synthetic_tokens: int = checked(1_000_000, ge=1, le=2**31)  # synthetic: length of the generated stream (int64: 16 GiB at most)
    crop_size: int = checked(256, ge=1)  # structure: residues per cropped sample (shorter chains are padded)
    max_msa: int = checked(128, ge=1)  # structure: MSA rows sampled per sample (the query first)
    eval_chains: list[str] = field(default_factory=list)  # structure: chains held out of training for trainer.eval_every, e.g. [4zey_A]
    max_extra_msa: int = checked(1024, ge=0)  # structure: extra-MSA rows (the alignment rows not sampled), for the extra-MSA stack
    max_templates: int = checked(4, ge=0)  # structure: templates per sample, for the template stack
    template_source: TemplateSource = TemplateSource.homologues


@dataclass
class TrainerConfig:
    max_steps: int = 40
    micro_batch_size: int = 8
    grad_accum: int = checked(1, ge=1, le=2**20)  # micro-batches per step (the planner's global batch bound)
    seed: int = checked(0, ge=0, le=SEED_MAX)
    log_every: int = 5
    save_every: int = 0  # 0: no periodic saves
    keep_last: int = 2  # checkpoints kept on disk
    resume: str = "none"  # none | auto (latest in this run directory) | a checkpoint path
    resume_cast: bool = False  # resume a checkpoint whose parameter dtype differs, casting weights and optimizer states
    device: Device = Device.auto
    grad_clip: float = 1.0  # 0 disables clipping
    warmup_steps: int = 5
    lr_schedule: LRSchedule = LRSchedule.cosine
    min_lr_ratio: float = 0.1
    tensorboard: bool = False
    run_dir: Optional[str] = None  # None: Hydra's output directory of the job
    compile: bool = False  # regional torch.compile of every block (memtrain.engine.fast_path)
    eval_every: int = 0  # evaluate held-out data every N steps (ModelSpec.build_evaluator); 0: never
    # where parameters are first made (memtrain.engine.init_device): eager | meta | auto
    init_device: InitDevice = InitDevice.auto
    # GiB the full fp32 model states are compared with by init_device=auto; None: the device's memory
    init_budget_gb: Optional[float] = checked(None, gt=0)


@dataclass
class HardwareConfig:
    """The machine `memtrain plan` plans for (training itself does not read it). Memory in GiB,
    bandwidths in GB/s (1e9 bytes) per GPU and direction, peaks in dense TFLOP/s. The presets
    (conf/hardware/) give their sources; docs/planner.md explains every constant."""

    name: str = "h100"
    gpus: int = checked(8, ge=1, le=1024)  # GPUs per node
    nodes: int = checked(1, ge=1, le=65536)
    gpu_mem_gb: float = 80.0  # device memory per GPU, GiB
    host_mem_gb: float = 2048.0  # host memory per node, GiB
    peak_tflops_bf16: float = 989.0
    peak_tflops_fp16: float = 989.0
    peak_tflops_fp32: float = 67.0  # without TF32 (torch's default for float32 matmuls)
    hbm_gbps: float = 3350.0
    intra_node_gbps: float = 450.0  # NVLink, per GPU and direction
    inter_node_gbps: float = 50.0  # network, per GPU and direction
    pcie_gbps: float = 64.0  # host <-> device, per GPU and direction
    mfu: float = 0.4  # the fraction of peak the model's matmuls reach (stated, to calibrate)
    block_latency_us: float = 50.0  # fixed cost per block and micro-batch (kernel launches)
    cpu_optimizer_gparams_per_s: float = 2.0  # host optimizer step, parameters per second per node
    mem_usable: float = 0.9  # fraction of device and host memory a plan may fill
    fp8: bool = True  # fp8 tensor cores (Hopper and later); the planner offers precision=fp8 only here


@dataclass
class TrainConfig:
    model: Any = MISSING
    parallel: ParallelConfig = MISSING
    precision: PrecisionConfig = MISSING
    optimizer: Any = MISSING
    offload: OffloadConfig = MISSING
    activation_checkpoint: ActivationCheckpointConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    launcher: LauncherConfig = MISSING
    hardware: HardwareConfig = MISSING


# ---------------------------------------------------------------------------------------------
# weather: ERA5-format data and the Pangu-Weather / FuXi models (memtrain.models.weather)

PRESSURE_LEVELS = [1000, 925, 850, 700, 600, 500, 400, 300, 250, 200, 150, 100, 50]  # hPa, ERA5's 13


@dataclass
class ERA5DataConfig(DataConfig):
    """Gridded fields in ERA5's layout (time, level, latitude, longitude), read with xarray from
    NetCDF (*.nc) or Zarr (*.zarr) under `root`; each sample is (fields at t, fields at t + lead_time).
    root=None: a small synthetic dataset on the model's grid is generated in the run directory."""

    source: DataSource = DataSource.era5
    upper_variables: list[str] = field(default_factory=lambda: ["z", "q", "t", "u", "v"])
    surface_variables: list[str] = field(default_factory=lambda: ["msl", "u10", "v10", "t2m"])
    levels: list[int] = checked(factory=lambda: list(PRESSURE_LEVELS), gt=0)  # hPa, selected from the files
    lead_time: int = checked(1, ge=1)  # target = input time step + lead_time (in the files' time steps)
    time_steps: Optional[int] = checked(None, ge=1)  # use the first N time steps of the files; None: all
    stats: Optional[str] = None  # normalization file (<var>_mean, <var>_std per level); None: computed from the data
    format: str = checked("netcdf", choices=("netcdf", "zarr"))  # netcdf | zarr: what the synthetic generator writes when root is None
    synthetic_time_steps: int = checked(24, ge=2)  # time steps the generator writes (6-hourly)


def model_schema(arch: str) -> type:
    """The schema of model.arch `arch`: the config dataclass its family declares (memtrain/models/
    <family>/family.py). KeyError for an unknown arch."""
    from memtrain.config.families import families

    return families()[arch].schema


def type_sections(cfg, schemas: dict[str, type], drop_unknown: tuple[str, ...] = ()) -> None:
    """Type, in place, the sections of a stored config (`cfg`, a DictConfig of meta.json's plain
    values) named in `schemas` by their dataclasses: enum names become members, keys an older
    release did not write take their defaults. The keys of a `drop_unknown` section that its schema
    does not hold (ones this release no longer reads) are left out; elsewhere they are refused.
    ConfigError naming the whole key (e.g. precision.qat) for a value the schema refuses."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from memtrain.config.errors import from_hydra

    typed = OmegaConf.create({name: OmegaConf.structured(schema) for name, schema in schemas.items()})
    stored = {name: cfg.get(name) or {} for name in schemas}
    for name in drop_unknown:
        stored[name] = {k: v for k, v in stored[name].items() if k in typed[name]}
    try:  # merged under their section names, so an error names the whole key
        typed = OmegaConf.merge(typed, stored)
    except OmegaConfBaseException as exc:
        raise from_hydra(exc) from exc
    for name in schemas:
        cfg[name] = typed[name]


def register_schemas() -> None:
    """Register every schema under /schema/<group>/<name> (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, name, node in [
        ("parallel", "parallel", ParallelConfig),
        ("precision", "precision", PrecisionConfig),
        ("offload", "offload", OffloadConfig),
        ("activation_checkpoint", "activation_checkpoint", ActivationCheckpointConfig),
        ("optimizer", "adamw", AdamWConfig),
        ("optimizer", "adafactor", AdafactorConfig),
        ("optimizer", "lion", LionConfig),
        ("optimizer", "sm3", SM3Config),
        ("optimizer", "came", CAMEConfig),
        ("optimizer", "adam_mini", AdamMiniConfig),
        ("optimizer", "adamw_bf16", AdamWBF16Config),
        ("optimizer", "adamw_8bit", AdamW8bitConfig),
        ("optimizer", "mezo", MeZOConfig),
        ("data", "data", DataConfig),
        ("trainer", "trainer", TrainerConfig),
        ("launcher", "launcher", LauncherConfig),
        ("data", "era5", ERA5DataConfig),
        ("hardware", "hardware", HardwareConfig),
    ]:
        cs.store(group=f"schema/{group}", name=name, node=node)
    from memtrain.config.families import families

    for arch, fam in families().items():  # each model family's own schema (its family.py)
        cs.store(group="schema/model", name=arch, node=fam.schema)
