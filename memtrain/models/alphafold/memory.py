"""AlphaFold's activation-memory model: the bytes a training forward keeps for the backward pass,
per Evoformer block and outside the blocks, counted tensor by tensor (`activation_bytes`, read by
memtrain estimate and the planner through the ModelSpec)."""

from __future__ import annotations

import inspect

from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, enum_names
from memtrain.models.alphafold.model import AlphaFold

FP32, INT64 = 4, 8
RECYCLE_BINS = 15  # RecyclingEmbedder's distance bins (a constructor default, not a config key)
FRAME_FLOATS_PER_LAYER = 25  # per residue; counted in _structure_module_bytes
ANGLE_NORM_FLOATS = 28  # per residue and layer: the angles' normalisation (_structure_module_bytes)
# per residue, once: Algorithm 24 on the last layer (counted tensor by tensor in _structure_module_bytes)
ALL_ATOM_FLOATS = 128 + 5 * 72 + 18 + 2 * 24 + 42 + 14 + 9
TORSION_LOSS_FLOATS = 52  # per residue and layer: chi errors and their alternatives, angle norms
_MODEL_DEFAULTS = {name: p.default for name, p in inspect.signature(AlphaFold).parameters.items()}


def _dim(mcfg: DictConfig, key: str):
    """A model size from the config, or AlphaFold's constructor default for keys the schema leaves out
    (IPA points, feature widths, head sizes)."""
    value = mcfg.get(key, None)
    return _MODEL_DEFAULTS[key] if value is None else value


def _gated_attention_bytes(
    pos: int, hc: int, logits: int, lse: int, mask: int, biased: bool, sdpa: bool, c: int
) -> int:
    """Attention (primitives.Attention) over `pos` query positions of width hc = heads * c_hidden,
    after its q/k/v/g projections; `logits`, `lse`, `mask`: elements of [*, H, Q, K], [*, H, Q] and
    the column attention's [*, 1, 1, K].

    naive: the matmuls keep contiguous copies of q (scaled), k^T and v (3 c), the fp32 softmax output
      and, below fp32, its cast to the compute dtype (which the second matmul keeps).
    sdpa (as torch runs it on CPU): a bias that needs a gradient (pair bias, triangle bias) sends
      F.scaled_dot_product_attention to its math fallback, which upcasts q, k, v to fp32 (3 x 4 bytes)
      and keeps the fp32 probabilities (no low-precision copy); the column attention's mask needs no
      gradient and takes the fused CPU flash kernel, which keeps q, k, v, its output (c each), the fp32
      log-sum-exp [*, H, Q] and the mask [*, 1, 1, K] (c). No [Q, K] matrix is kept there. (On CUDA
      the memory-efficient kernel also takes the biased attentions, keeping q, k, v, out, the
      log-sum-exp and the expanded bias instead; not modelled: measured on CPU only.)
    Then the gate: sigmoid(g), the attention output o (a view of the flash output) and o * g (the
    output projection's input), c each."""
    gate = 3 * c * pos * hc  # sigmoid(g), o, o * g
    if not sdpa:
        return 3 * c * pos * hc + FP32 * logits + (c * logits if c < FP32 else 0) + gate
    if biased:
        return 3 * FP32 * pos * hc + FP32 * logits + gate
    return 3 * c * pos * hc + FP32 * lse + c * mask + gate  # o is the flash kernel's output


def _evoformer_block_terms(mcfg: DictConfig, b: int, n: int, s: int, c: int, st: int) -> dict[str, int]:
    """Bytes one Evoformer block keeps for the backward pass, by sub-module (see activation_bytes)."""
    cm, cz, tn = mcfg.c_m, mcfg.c_z, mcfg.transition_n
    h_m, h_z = mcfg.n_heads_msa, mcfg.n_heads_pair
    hc_m, hc_z = h_m * mcfg.c_hidden_msa_att, h_z * mcfg.c_hidden_pair_att
    c_opm, c_mul = mcfg.c_hidden_opm, mcfg.c_hidden_mul
    sdpa = enum_names(mcfg.attention_backend) == "sdpa"
    autocast = c != st
    ms, pr = b * s * n, b * n * n  # MSA and pair positions

    def ln(elems: int, rows: int) -> int:  # LayerNorm: its input in fp32 (a copy if not fp32), mean, rstd
        return FP32 * elems + 2 * FP32 * rows

    def lin(k: int, elems: int) -> int:  # k Linear layers reading one contiguous LayerNorm output
        return (k * c if autocast else st) * elems  # autocast casts it once per layer (uncached)

    def mask_cast(elems: int, src: int, dst: int) -> int:  # a fp32 mask cast to another dtype; a view if fp32
        return dst * elems if dst != src else 0

    terms = {
        "msa_row_attention": ln(pr * cz, pr) + lin(1, pr * cz) + ln(ms * cm, ms) + lin(4, ms * cm)
        + _gated_attention_bytes(ms, hc_m, b * s * h_m * n * n, 0, 0, True, sdpa, c),
        # the LayerNorm reads the transposed MSA, so its output is laid out as the projections read it
        "msa_column_attention": ln(ms * cm, ms) + lin(4, ms * cm)
        + _gated_attention_bytes(ms, hc_m, b * n * h_m * s * s, b * n * h_m * s, b * n * s, False, sdpa, c),
        "msa_transition": ln(ms * cm, ms) + lin(1, ms * cm) + c * ms * tn * cm + mask_cast(ms, FP32, st),
        # a and b (masked projections, kept by the einsum in the compute dtype, cast once whether
        # chunked or not), the outer product [*, I, J, c^2] (the output Linear's input) and the
        # divisor [*, I, J, 1]
        # its LayerNorm's input is the block's output m: counted as the next block's input (or outside)
        # unless the stream is below fp32, where the LayerNorm keeps its own fp32 copy
        "outer_product_mean": ln(ms * cm, ms) - (FP32 * ms * cm if st == FP32 else 0) + lin(2, ms * cm)
        + mask_cast(ms, FP32, st)
        + 2 * c * ms * c_opm + c * pr * c_opm**2 + c * pr,
        # x2 (outgoing, incoming): per gated projection sigmoid(g), mask * sigmoid(g) (promoted to the
        # mask's dtype) and the projection; the gate; the einsum's permuted copies of a and b; the
        # LayerNorm of the product; its output (linear_z's input) and linear_z's output
        "triangle_multiplication": 2 * (
            ln(pr * cz, pr) + lin(5, pr * cz) + mask_cast(pr, FP32, st)
            + 2 * (2 * c + max(c, st)) * pr * c_mul + c * pr * cz
            + 2 * c * pr * c_mul + ln(pr * c_mul, pr) + c * pr * c_mul + c * pr * cz
        ),
        # x2 (starting, ending node): LayerNorm read by the bias Linear and q, k, v, g
        "triangle_attention": 2 * (
            ln(pr * cz, pr) + lin(5, pr * cz)
            + _gated_attention_bytes(pr, hc_z, b * n * h_z * n * n, 0, 0, True, sdpa, c)
        ),
        "pair_transition": ln(pr * cz, pr) + lin(1, pr * cz) + c * pr * tn * cz + mask_cast(pr, FP32, st),
        # SharedDropout keeps its mask [*, 1, N_res, C] ([*, N_res, 1, C] column-wise) in the update's dtype
        "dropout_masks": (c * b * n * cm if mcfg.msa_dropout > 0 else 0)
        + (4 * c * b * n * cz if mcfg.pair_dropout > 0 else 0),
    }
    if autocast:  # the low-precision copy of every Linear weight, kept by its matmul
        weights = (
            cz * h_m + 5 * cm * hc_m + 5 * cm * hc_m  # row (+ pair bias) and column attention
            + 2 * tn * cm * cm + 2 * cm * c_opm + c_opm**2 * cz  # MSA transition, outer product mean
            + 2 * (4 * cz * c_mul + cz * cz + c_mul * cz)  # triangle multiplications
            + 2 * (cz * h_z + 5 * cz * hc_z) + 2 * tn * cz * cz  # triangle attentions, pair transition
        )
        terms["weight_casts"] = c * weights
    return terms


def _structure_module_bytes(mcfg: DictConfig, b: int, n: int, sm: int) -> int:
    """The structure module runs with autocast off in the parameters' dtype `sm`. Per layer:
    IPA keeps the frames' rotations expanded to every point (the matmul's copy, 9 per point) for
    the query/key/value points and the inverse of the value points, copies of q, k, v and the
    points for the einsums, the squared point distances and the softmax [*, H, N, N], the attended
    points and their norms, and the concatenated output features; then the dropout noise (CPU
    dropout keeps a noise tensor of the input's dtype), the LayerNorms, the transition's ReLU
    outputs and the layer's output s. Frame bookkeeping, per residue and layer
    (FRAME_FLOATS_PER_LAYER = 25 values): the backbone update's quaternion normalisation (quaternion,
    norm, clamped norm: 6), the same for the composed quaternion (6), the previous rotation applied
    to the translation update (9), the new quaternion read by quat_to_rot (4); once: the identity
    quaternion (4) and the atoms' local coordinates expanded for the final frames (9)."""
    cs, cz, layers = mcfg.c_s, mcfg.c_z, mcfg.n_structure_layers
    h, ch = mcfg.n_heads_ipa, mcfg.c_hidden_ipa
    pq, pv = _dim(mcfg, "n_ipa_qk_points"), _dim(mcfg, "n_ipa_v_points")
    sn = b * n
    drop = sm * sn * cs if mcfg.structure_dropout > 0 else 0
    ipa = sm * sn * h * (
        9 * (2 * pq + 2 * pv)  # expanded rotations: q, k, v points, inverse for the output points
        + 3 * ch  # q, k, v copies
        + 3 * 3 * pq  # q and k points (kept by square) and one copy for their matmul
        + 3 * pv + 3 * pv + pv  # v points copy, output points, their norms
        + cz + ch + 4 * pv  # concatenated features (linear_out's input)
    ) + 2 * sm * b * h * n * n  # squared point distances, softmax
    if b > 1:  # batched einsums that cannot view their operands: the k points, the softmax for the pair values
        ipa += sm * sn * h * 3 * pq + sm * b * h * n * n
    cr = _dim(mcfg, "c_resnet")
    # the angle ResNet: ReLUs of s and s_initial (2 C_s), of its 5 hidden activations (C_r each), the
    # unnormalised angles read by the norm (14), the norm's clamp input and root (7 each)
    resnet = sm * sn * (2 * cs + 5 * cr + ANGLE_NORM_FLOATS)
    layer = (ipa + 2 * drop + 2 * (FP32 * sn * cs + 2 * FP32 * sn) + 4 * sm * sn * cs + FRAME_FLOATS_PER_LAYER * sm * sn
             + resnet)
    # LayerNorm of s (input in fp32, stats), linear_in's input, its output (the first IPA's input), z's LayerNorm output;
    # once: the all-atom frames and atoms of the last layer (Algorithm 24)
    all_atom = sm * sn * ALL_ATOM_FLOATS + INT64 * sn * 14
    return (FP32 * sn * cs + 2 * FP32 * sn) + 2 * sm * sn * cs + sm * b * n * n * cz + layers * layer + 13 * sm * sn + all_atom


def _outside_terms(mcfg: DictConfig, b: int, n: int, s: int, c: int, st: int) -> dict[str, int]:
    cm, cz, cs = mcfg.c_m, mcfg.c_z, mcfg.c_s
    tf, msa_dim = _dim(mcfg, "target_feat_dim"), _dim(mcfg, "msa_feat_dim")
    relpos = 2 * _dim(mcfg, "max_relative_position") + 1
    bins, classes = _dim(mcfg, "n_distogram_bins"), _dim(mcfg, "n_msa_classes")
    autocast = c != st
    ms, pr, sn = b * s * n, b * n * n, b * n
    # recycling: LayerNorm of the previous pair (fp32) and first MSA row; after a no-grad iteration
    # the row is a view of the previous MSA representation, which it then keeps whole
    m1_prev = st * ms * cm if mcfg.num_recycles > 0 and st == FP32 else FP32 * sn * cm
    layers = mcfg.n_structure_layers
    # FAPE (fp32, autocast off): per frame-position pair the position relative to the frame's origin
    # (3, kept by the einsum with the rotation), the error vector (3) and the distance (1); backbone
    # FAPE over N x N pairs per layer, all-atom FAPE over 8 N frames x 14 N atoms
    fape_pairs = layers * sn * n + 8 * 14 * sn * n
    plddt_bins, c_plddt = _dim(mcfg, "n_plddt_bins"), _dim(mcfg, "c_hidden_plddt")
    terms = {
        "input_embedder": (c * (3 * sn * tf + ms * msa_dim) if autocast else 0) + c * pr * relpos,
        "recycling_embedder": c * pr * RECYCLE_BINS + FP32 * pr * cz + 2 * FP32 * pr + m1_prev + 2 * FP32 * sn,
        "pair_mask": FP32 * pr if st == FP32 else 0,  # [*, N, N] fp32, kept by the triangle multiplications
        # the last block's outputs: m read by the single projection (first row) and the masked-MSA
        # head, z by the structure module's LayerNorm (fp32) and the distogram head
        "evoformer_output": (c * (sn * cm + ms * cm) if autocast else st * ms * cm + (st * sn * cm if b > 1 else 0))
        + FP32 * pr * cz + 2 * FP32 * pr + (c * pr * cz if autocast or st != FP32 else 0),
        "structure_module": _structure_module_bytes(mcfg, b, n, st),
        # pLDDT head: LayerNorm statistics, its output (linear_1's input, cast under autocast), two
        # ReLU outputs; the experimentally-resolved head's input (the Evoformer's single
        # representation, a copy of its own only under autocast: else the structure module keeps it)
        "heads": 2 * FP32 * sn + c * sn * cs + 2 * c * sn * c_plddt + (c * sn * cs if autocast else 0),
        "losses": 7 * FP32 * fape_pairs + FP32 * layers * 9 * sn  # FAPE pairs; the stacked rotations
        + FP32 * pr * bins + INT64 * pr + FP32 * pr  # distogram: log-softmax, bin targets, pair mask
        + FP32 * ms * classes  # masked MSA: log-softmax
        + FP32 * layers * sn * TORSION_LOSS_FLOATS  # torsion and angle-norm errors
        + FP32 * sn * plddt_bins + INT64 * sn  # pLDDT: log-softmax, bin targets
        + 3 * FP32 * sn * 37,  # experimentally resolved: logits, targets, weights
    }
    if autocast:
        # the single projection's and the heads' weights; the embedders' Linears read inputs that need
        # no gradient, so their matmuls keep no weight
        terms["weight_casts"] = c * (cm * cs + cz * bins + cm * classes
                                     + cs * c_plddt + c_plddt * c_plddt + c_plddt * plddt_bins + cs * 37)
    return terms


def activation_terms(
    mcfg: DictConfig, batch: int, n_res: int, n_seq: int, compute_bytes: int, residual_bytes: int
) -> tuple[dict[str, int], dict[str, int]]:
    """(one Evoformer block's saved bytes, the saved bytes outside the blocks), by part."""
    return (
        _evoformer_block_terms(mcfg, batch, n_res, n_seq, compute_bytes, residual_bytes),
        _outside_terms(mcfg, batch, n_res, n_seq, compute_bytes, residual_bytes),
    )


def activation_bytes(
    mcfg: DictConfig,
    batch: int,
    seq_len: int,
    compute_bytes: int,
    residual_bytes: int,
    *,
    n_res: int | None = None,
    n_seq: int | None = None,
    cfg: DictConfig | None = None,
) -> dict[str, float]:
    """Bytes saved for the backward pass, per Evoformer block and outside the blocks, for one
    micro-batch of `batch` crops of N = n_res residues (data.crop_size) with S = n_seq MSA rows
    (data.max_msa). `seq_len` does not apply to AlphaFold: the sizes come from the keywords n_res
    and n_seq, or from `cfg` (the whole config) when given.

    Counted tensor by tensor for this implementation, as torch keeps them, and checked against the
    measured forward (tests/unit/alphafold/test_activation_model.py). c = compute_bytes; r =
    residual_bytes, the dtype of the residual streams m [B, S, N, C_m] and z [B, N, N, C_z] (fp32
    under autocast, so autocast = c != r); LayerNorm inputs and statistics and softmax outputs are
    fp32 (4) whatever the precision. Per block (`_evoformer_block_terms`):
      MSA row attention: fp32 softmax [B, S, H_m, N, N] (+ its c-byte cast below fp32, naive),
        q, k, v copies, gate, o, o * g (6 c B S N H_m c_h), LayerNorms of m and z and their outputs
        (read once per projection under autocast);
      MSA column attention: the same with softmax [B, N, H_m, S, S]; its LayerNorm reads the
        transposed MSA, so the projections read its output without copies;
      MSA transition: LayerNorm, ReLU output [B, S, N, n C_m];
      outer product mean: a, b [B, S, N, c_opm] (c) and the outer product [B, N, N, c_opm^2] (c);
      triangle multiplication x2: per projection sigmoid, masked gate (max(c, r)) and value
        [B, N, N, c_mul], the einsum's copies of a and b, the fp32 LayerNorm of the product, the
        gate and output [B, N, N, C_z];
      triangle attention x2: softmax [B, N, H_z, N, N] (+ cast), q, k, v, gate, o, o * g;
      pair transition: ReLU output [B, N, N, n C_z];
      SharedDropout masks ([B, 1, N, C], when the rate is > 0) and, under autocast, the c-byte
        copy of every Linear weight.
    attention_backend=sdpa is modelled as torch runs it on CPU (see _gated_attention_bytes): the
    biased attentions fall back to the math kernel (fp32 probabilities and q, k, v), the column
    attention uses the flash kernel (no S x S matrix).
    model.chunk_size does not change what is saved (each chunk's tensors are kept for the backward
    pass; chunking only lowers the transient peak).

    block_input: what a checkpointed block keeps, its inputs m and z in the stream dtype. A
    block's output m is counted as the next block's input (the last one's outside); under autocast
    the last block's fp32 output m, which its outer product mean keeps when it is not
    checkpointed, is left out (one [B, S, N, C_m] tensor). The CPU RNG state that a checkpoint
    keeps in host memory (5 KB per block) is not counted. attention_core_freed is 0: selective
    attention recomputation is refused for AlphaFold (validate).

    outside_blocks (`_outside_terms`): the embedders (relative-position one-hot [B, N, N, 65],
    recycling distance bins and LayerNorms), the pair mask, the last block's outputs as read by the
    single projection, the heads and the structure module, the structure module (fp32, autocast
    off; `_structure_module_bytes`, with the angle ResNet per layer and the all-atom frames and
    atoms once), the pLDDT and experimentally-resolved heads, and the losses (fp32, autocast off:
    7 values per FAPE frame-position pair, [B, N, N] per layer for the backbone and [B, 8N, 14N]
    all-atom; distogram, masked-MSA and pLDDT log-softmax; torsion errors; the resolved-atom
    logits). Input features are not counted.
    """
    if cfg is not None:
        n_res, n_seq = cfg.data.crop_size, cfg.data.max_msa
    if n_res is None or n_seq is None:
        raise ConfigError(
            "data.crop_size",
            "the AlphaFold activation model needs the crop size and the MSA depth: pass "
            "n_res=cfg.data.crop_size, n_seq=cfg.data.max_msa (or cfg=cfg); seq_len does not apply",
        )
    block, outside = activation_terms(mcfg, batch, n_res, n_seq, compute_bytes, residual_bytes)
    return {
        "block": sum(block.values()),
        "block_input": residual_bytes * batch * (n_seq * n_res * mcfg.c_m + n_res * n_res * mcfg.c_z),
        "attention_core_freed": 0,
        "outside_blocks": sum(outside.values()),
    }
