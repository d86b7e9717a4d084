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


class SequenceParallelImpl(Enum):
    """How parallel.sp splits attention over the sequence shards."""

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


class GPTAttention(Enum):
    softmax = "softmax"  # exact causal softmax attention (SDPA)
    linformer = "linformer"  # learned sequence projections of K and V (Wang et al. 2020), causal prefix variant
    performer = "performer"  # FAVOR+ positive orthogonal random features (Choromanski et al. 2021), causal


class AttentionBackend(Enum):
    naive = "naive"  # explicit softmax(QK^T + bias)V, softmax in fp32
    sdpa = "sdpa"  # torch scaled_dot_product_attention with the biases as a float mask
    triton = "triton"  # fused Triton kernels (memtrain.kernels): pair-bias attention and layer norm


# ---------------------------------------------------------------------------------------------
# model


@dataclass
class ModelConfig:
    arch: str = MISSING  # key of the ModelSpec registry (memtrain.models)


@dataclass
class GPTConfig(ModelConfig):
    """Decoder-only transformer: RMSNorm, SwiGLU, RoPE, grouped-query attention through SDPA."""

    arch: str = "gpt"
    vocab_size: int = 64
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: as many as n_heads (multi-head attention)
    ffn_hidden: Optional[int] = None  # None: 8/3 * dim rounded up to `multiple_of`
    multiple_of: int = 64
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    attention: GPTAttention = GPTAttention.softmax  # the attention core of every block
    linformer_k: int = 64  # linformer: projected length k of K and V
    performer_features: int = 128  # performer: random features m per head
    performer_redraw: int = 1000  # performer: redraw the features every this many training forwards (0: never)
    attention_chunk: int = 64  # linformer/performer: block size of the causal prefix-sum scan
    # output projection fused with the cross entropy, computed over chunks of this many tokens so
    # the [B, S, V] logits never exist; -1: on, chunk chosen from the vocabulary (plain under
    # parallel=zero3, which frees the head's weight after its forward); 0: plain full logits
    loss_chunk: int = -1


@dataclass
class AlphaFoldConfig(ModelConfig):
    """AlphaFold 2 (Jumper et al. 2021, Supplement 1.5-1.8): templates, extra-MSA stack, Evoformer
    and structure module."""

    arch: str = "alphafold"
    c_m: int = 256
    c_z: int = 128
    c_s: int = 384
    n_blocks: int = 48
    n_heads_msa: int = 8
    n_heads_pair: int = 4
    c_hidden_msa_att: int = 32
    c_hidden_pair_att: int = 32
    c_hidden_opm: int = 32
    c_hidden_mul: int = 128
    transition_n: int = 4
    n_structure_layers: int = 8
    n_heads_ipa: int = 12
    c_hidden_ipa: int = 16
    num_recycles: int = 0  # extra no-grad iterations (the paper samples 0-3 during training)
    msa_dropout: float = 0.15
    pair_dropout: float = 0.25
    structure_dropout: float = 0.1
    # extra-MSA stack (Algorithm 18): 0 blocks switches it off
    n_extra_msa_blocks: int = 4
    c_e: int = 64
    c_hidden_extra_msa_att: int = 8
    # template stack (Algorithms 16, 17) and template torsion angles into the MSA
    templates: bool = True
    c_t: int = 64
    n_template_blocks: int = 2
    c_hidden_template_att: int = 16
    n_heads_template: int = 4
    c_hidden_template_mul: int = 64
    template_transition_n: int = 2
    c_hidden_template_pointwise: int = 16
    n_heads_template_pointwise: int = 4
    template_unit_vector: bool = False  # AlphaFold's monomer models zero the template unit vectors
    chunk_size: Optional[int] = None  # OpenFold-style chunking of attention, outer product mean, transitions
    attention_backend: AttentionBackend = AttentionBackend.naive


# ---------------------------------------------------------------------------------------------
# parallel, precision, offload, activation checkpointing


@dataclass
class ParallelConfig:
    """Degrees of every parallel dimension; their product must equal the world size. One degree
    may be -1: it takes whatever the others leave of the world size."""

    name: str = "single"  # single | ddp | fsdp | hsdp | zero1 | zero2 | zero3 | dap | tp | sp | pp | spatial
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    sp: int = 1
    dap: int = 1
    spatial: int = 1  # parallel=spatial: ranks sharing one sample, its latitude axis split over them
    reshard_after_forward: bool = True  # fsdp/hsdp: free gathered parameters after the forward
    backend: Optional[str] = None  # process-group backend; None: nccl on CUDA, gloo on CPU
    # pipeline parallelism (parallel.pp > 1): schedule, micro-batches a trainer micro-batch is
    # split into, and model stages held by each pipeline rank (interleaved, zero bubble, ZB-V)
    # gpipe | 1f1b | interleaved_1f1b | zero_bubble | zbv (a string: "1f1b" is no Python name)
    pp_schedule: str = "1f1b"
    pp_microbatches: int = 4
    pp_stages_per_rank: int = 1
    tp_sp: bool = False  # tp>1: Megatron sequence parallelism (norms and residuals sharded along the sequence)
    sp_impl: SequenceParallelImpl = SequenceParallelImpl.ulysses  # sp>1: how attention crosses the shards


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
    max_restarts: int = 0


@dataclass
class PrecisionConfig:
    name: str = "fp32"
    param_dtype: DType = DType.float32  # dtype the parameters (and optimizer master copy) live in
    compute_dtype: DType = DType.float32  # autocast dtype; float32 means no autocast
    loss_scaling: bool = False  # dynamic loss scaling (torch.amp.GradScaler), needed for fp16
    init_scale: float = 65536.0
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    qat: QATScheme = QATScheme.none  # quantization-aware training of the blocks' linear layers
    qat_activations: QATActivations = QATActivations.int8  # int8/int4 QAT: per-token input quantization
    fp8: bool = False  # FP8 (e4m3/e5m2) GEMMs for the blocks' linear layers, CUDA capability >= 8.9
    fp8_scaling: FP8Scaling = FP8Scaling.dynamic
    fp8_amax_history: int = 16  # fp8_scaling=delayed: steps of amax history per tensor


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
    lr: float = 3e-4
    weight_decay: float = 0.0


@dataclass
class AdamWConfig(OptimizerConfig):
    _target_: str = "torch.optim.AdamW"
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    fused: Optional[bool] = None  # None: torch's fused kernel where it has one for the device (CUDA, CPU, ...)


@dataclass
class AdafactorConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adafactor"
    lr: float = 1e-2
    beta2_decay: float = -0.8
    eps: list[Optional[float]] = field(default_factory=lambda: [None, 1e-3])
    d: float = 1.0
    weight_decay: float = 0.0
    foreach: Optional[bool] = None  # None: torch's default (foreach on CUDA); no fused Adafactor in torch


@dataclass
class LionConfig(OptimizerConfig):
    """Lion (Chen et al. 2023): sign of an interpolated momentum; one moment per parameter."""

    _target_: str = "memtrain.optim.lion.Lion"
    lr: float = 1e-4  # the paper: 3-10x smaller than AdamW's
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.1
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class SM3Config(OptimizerConfig):
    """SM3-II (Anil et al. 2019): one accumulator per row and per column (per dim)."""

    _target_: str = "memtrain.optim.sm3.SM3"
    lr: float = 1e-2
    momentum: float = 0.0  # > 0 adds a full-size momentum buffer
    weight_decay: float = 0.0
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class CAMEConfig(OptimizerConfig):
    """CAME (Luo et al. 2023): factored second moment and factored confidence, with momentum."""

    _target_: str = "memtrain.optim.came.CAME"
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999, 0.9999])
    eps: list[float] = field(default_factory=lambda: [1e-30, 1e-16])
    d: float = 1.0  # update clipping threshold
    weight_decay: float = 0.0
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class AdamMiniConfig(OptimizerConfig):
    """Adam-mini (Zhang et al. 2024): one second moment per head (Q, K), per output neuron
    (other matrices), per tensor (vectors); AdamW for the modules named in adamw_names."""

    _target_: str = "memtrain.optim.adam_mini.AdamMini"
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    adamw_names: list[str] = field(default_factory=lambda: ["tok_embeddings", "output"])
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class AdamWBF16Config(OptimizerConfig):
    """AdamW with both moments stored in bfloat16 (stochastically rounded)."""

    _target_: str = "memtrain.optim.adamw_bf16.AdamWBF16"
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    stochastic_rounding: bool = True
    seed: int = 0
    foreach: Optional[bool] = None  # None: multi-tensor steps (memtrain.optim._foreach); False: per parameter


@dataclass
class AdamW8bitConfig(OptimizerConfig):
    """bitsandbytes' 8-bit AdamW (Dettmers et al. 2022): block-wise quantized moments."""

    _target_: str = "bitsandbytes.optim.AdamW8bit"
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    min_8bit_size: int = 4096  # smaller tensors keep 32-bit moments


@dataclass
class MeZOConfig(OptimizerConfig):
    """MeZO (Malladi et al. 2023): zeroth-order SPSA, forward passes only, no state."""

    _target_: str = "memtrain.optim.mezo.MeZO"
    lr: float = 1e-6
    eps: float = 1e-3  # perturbation scale
    weight_decay: float = 0.0


# ---------------------------------------------------------------------------------------------
# data and trainer


@dataclass
class DataConfig:
    source: DataSource = DataSource.protein
    root: Optional[str] = None  # protein: a folder; None means $MEMTRAIN_DATA_DIR/proteins or ../shared/data/proteins
    formats: list[str] = field(default_factory=lambda: ["fasta", "a3m", "mmcif"])
    seq_len: int = 128
    num_synthetic_tokens: int = 1_000_000  # synthetic: length of the generated token stream
    crop_size: int = 256  # structure: residues per cropped sample (shorter chains are padded)
    max_msa: int = 128  # structure: MSA rows sampled per sample (the query first)
    max_extra_msa: int = 1024  # structure: extra-MSA rows (the alignment rows not sampled), for the extra-MSA stack
    max_templates: int = 4  # structure: templates per sample, for the template stack
    template_source: TemplateSource = TemplateSource.homologues


@dataclass
class TrainerConfig:
    max_steps: int = 40
    micro_batch_size: int = 8
    grad_accum: int = 1
    seed: int = 0
    log_every: int = 5
    save_every: int = 0  # 0: no periodic saves
    keep_last: int = 2  # checkpoints kept on disk
    resume: str = "none"  # none | auto (latest in this run directory) | a checkpoint path
    device: Device = Device.auto
    grad_clip: float = 1.0  # 0 disables clipping
    warmup_steps: int = 5
    lr_schedule: LRSchedule = LRSchedule.cosine
    min_lr_ratio: float = 0.1
    tensorboard: bool = False
    run_dir: Optional[str] = None  # None: Hydra's output directory of the job
    compile: bool = False  # regional torch.compile of every block (memtrain.engine.fast_path)


@dataclass
class HardwareConfig:
    """The machine `memtrain plan` plans for (training itself does not read it). Memory in GiB,
    bandwidths in GB/s (1e9 bytes) per GPU and direction, peaks in dense TFLOP/s. The presets
    (conf/hardware/) give their sources; docs/planner.md explains every constant."""

    name: str = "h100"
    gpus: int = 8  # GPUs per node
    nodes: int = 1
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
    checkpoint: ActivationCheckpointConfig = MISSING
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
    levels: list[int] = field(default_factory=lambda: list(PRESSURE_LEVELS))  # hPa, selected from the files
    lead_time: int = 1  # target = input time step + lead_time (in the files' time steps)
    time_steps: Optional[int] = None  # use the first N time steps of the files; None: all
    stats: Optional[str] = None  # normalization file (<var>_mean, <var>_std per level); None: computed from the data
    format: str = "netcdf"  # netcdf | zarr: what the synthetic generator writes when root is None
    synthetic_time_steps: int = 24  # time steps the generator writes (6-hourly)


@dataclass
class PanguConfig(ModelConfig):
    """Pangu-Weather's 3D Earth-specific transformer (Bi et al. 2023, Nature 619; Methods and its
    pseudocode). Defaults are the published model at 0.25 degrees."""

    arch: str = "pangu"
    n_levels: int = 13  # pressure levels of the upper-air variables
    n_lat: int = 721
    n_lon: int = 1440
    n_upper: int = 5  # z, q, t, u, v
    n_surface: int = 4  # msl, u10, v10, t2m
    patch_size: list[int] = field(default_factory=lambda: [2, 4, 4])  # (level, lat, lon); surface uses (lat, lon)
    window_size: list[int] = field(default_factory=lambda: [2, 6, 12])  # (level, lat, lon) tokens per window
    dim: int = 192  # C of the first stage; the second stage has 2C
    depths: list[int] = field(default_factory=lambda: [2, 6, 6, 2])
    heads: list[int] = field(default_factory=lambda: [6, 12, 12, 6])
    mlp_ratio: float = 4.0
    drop_path: float = 0.2  # stochastic depth, linearly increasing to this rate


@dataclass
class FuXiConfig(ModelConfig):
    """FuXi's Swin V2 U-transformer (Chen et al. 2023, npj Clim. Atmos. Sci. 6:190). Defaults are
    the published width and depth at 0.25 degrees."""

    arch: str = "fuxi"
    n_levels: int = 13
    n_lat: int = 721
    n_lon: int = 1440
    n_upper: int = 5
    n_surface: int = 4
    patch_size: int = 4  # cube embedding's spatial patch (lat, lon)
    window_size: list[int] = field(default_factory=lambda: [9, 9])  # (lat, lon) tokens per window
    dim: int = 1536
    depth: int = 48
    heads: int = 24
    mlp_ratio: float = 4.0
    drop_path: float = 0.2


def register_schemas() -> None:
    """Register every schema under /schema/<group>/<name> (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, name, node in [
        ("model", "gpt", GPTConfig),
        ("model", "alphafold", AlphaFoldConfig),
        ("parallel", "parallel", ParallelConfig),
        ("precision", "precision", PrecisionConfig),
        ("offload", "offload", OffloadConfig),
        ("checkpoint", "checkpoint", ActivationCheckpointConfig),
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
        ("model", "pangu", PanguConfig),
        ("model", "fuxi", FuXiConfig),
        ("data", "era5", ERA5DataConfig),
        ("hardware", "hardware", HardwareConfig),
    ]:
        cs.store(group=f"schema/{group}", name=name, node=node)
