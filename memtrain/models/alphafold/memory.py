"""AlphaFold's activation-memory model: the bytes a training forward keeps for the backward pass,
per Evoformer block and outside the blocks, counted tensor by tensor (`activation_bytes`, read by
memtrain estimate and the planner through the ModelSpec)."""

from __future__ import annotations

import inspect

from omegaconf import DictConfig

from memtrain.config.errors import ConfigError, as_enum
from memtrain.models.alphafold.family import AttentionBackend
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
    pos: int, hc: int, logits: int, lse: int, mask: int, biased: bool, backend: AttentionBackend, c: int,
    pair_bias: int = 0, key_bias: int = 0,
) -> int:
    """Attention (primitives.Attention) over `pos` query positions of width hc = heads * c_hidden,
    after its q/k/v/g projections; `logits`, `lse`, `mask`: elements of [*, H, Q, K], [*, H, Q] and
    the column attention's [*, 1, 1, K]; `pair_bias`, `key_bias`: elements of the pair bias as the
    module forms it ([*, H, Q, K] once for all rows) and of the per-key mask bias ([*, K] per row).

    naive: the matmuls keep contiguous copies of q (scaled), k^T and v (3 c), the fp32 softmax output
      and, below fp32, its cast to the compute dtype (which the second matmul keeps).
    sdpa (as torch runs it on CPU): a bias that needs a gradient (pair bias, triangle bias) sends
      F.scaled_dot_product_attention to its math fallback, which upcasts q, k, v to fp32 (3 x 4 bytes)
      and keeps the fp32 probabilities (no low-precision copy); the column attention's mask needs no
      gradient and takes the fused CPU flash kernel, which keeps q, k, v, its output (c each), the fp32
      log-sum-exp [*, H, Q] and the mask [*, 1, 1, K] (c). No [Q, K] matrix is kept there. (On CUDA
      the memory-efficient kernel also takes the biased attentions, keeping q, k, v, out, the
      log-sum-exp and the expanded bias instead; not modelled: measured on CPU only.)
    triton (memtrain.kernels.evoformer_attention, _EvoformerAttention.forward's save_for_backward):
      q, k, v as the projections return them (views, c each), the pair bias (the bias Linear's
      output, c, not expanded over the rows), the per-key mask bias in fp32 [Z S, K], the output o
      (c, the same storage the gate's product keeps) and the fp32 log-sum-exp [Z S H, Q]; no
      [*, H, Q, K] matrix at all. Same on CUDA: the tensors are the kernel's own.
    Then the gate: sigmoid(g), the attention output o (a view of the flash output) and o * g (the
    output projection's input), c each."""
    gate = 3 * c * pos * hc  # sigmoid(g), o, o * g
    if backend is AttentionBackend.triton:
        return 3 * c * pos * hc + c * pair_bias + FP32 * key_bias + FP32 * lse + gate
    if backend is not AttentionBackend.sdpa:
        return 3 * c * pos * hc + FP32 * logits + (c * logits if c < FP32 else 0) + gate
    if biased:
        return 3 * FP32 * pos * hc + FP32 * logits + gate
    return 3 * c * pos * hc + FP32 * lse + c * mask + gate  # o is the flash kernel's output


def _ln_bytes(elems: int, rows: int, dtype: int, backend: AttentionBackend) -> int:
    """What a LayerNorm over `rows` rows (`elems` elements, input `dtype` bytes each) keeps:
    primitives.LayerNorm its input in fp32 (a copy when the input is below fp32) and the fp32 mean
    and rstd; the fused kernel (FusedLayerNorm, attention_backend=triton; _LayerNorm.forward's
    save_for_backward) its input as it is (a contiguous copy of a transposed input) and the same
    statistics."""
    return (dtype if backend is AttentionBackend.triton else FP32) * elems + 2 * FP32 * rows


def _pair_bias_elems(b: int, rows: int, bias: int, chunked: bool) -> int:
    """Elements of the pair bias the triton backend keeps: `bias` (one [H, Q, K] per pair
    representation, b of them, shared by the `rows` rows), or, when the attention is chunked
    (model.chunk_size set) over batch dims that are not all 1 (b > 1), the copy chunk_layer expands
    it to over every row before slicing it (each chunk's kernel keeps its slice: all rows)."""
    return bias * rows if chunked and b > 1 else bias


def _pair_terms(
    b: int, n: int, cz: int, c_mul: int, h_z: int, hc_z: int, tn: int, backend: AttentionBackend, c: int, st: int,
    amp: bool | None = None, chunked: bool = False,
) -> dict[str, int]:
    """Bytes the pair modules of one block keep (both triangle multiplications and attentions and
    the pair transition) for b pair representations [b, N, N, C_z] (b = B, or B T for the
    templates). st: the pair stream's bytes per element; amp: whether autocast is on (default
    c != st; the template stream is in the compute dtype under autocast); chunked: model.chunk_size
    is set."""
    autocast = c != st
    amp = autocast if amp is None else amp
    pr = b * n * n

    def ln(elems: int, rows: int, dtype: int = st) -> int:  # LayerNorm of a `dtype` input (_ln_bytes)
        return _ln_bytes(elems, rows, dtype, backend)

    def lin(k: int, elems: int) -> int:  # k Linear layers reading one contiguous LayerNorm output
        return (k * c if autocast else st) * elems  # autocast casts it once per layer (uncached)

    def mask_cast(elems: int, src: int, dst: int) -> int:  # a fp32 mask cast to another dtype; a view if fp32
        return dst * elems if dst != src else 0

    return {
        # x2 (outgoing, incoming): per gated projection sigmoid(g), mask * sigmoid(g) (promoted to the
        # mask's dtype) and the projection; the gate; the einsum's permuted copies of a and b; the
        # LayerNorm of the product; its output (linear_z's input) and linear_z's output
        "triangle_multiplication": 2 * (
            ln(pr * cz, pr) + lin(5, pr * cz) + mask_cast(pr, FP32, st)
            + 2 * (2 * c + max(c, st)) * pr * c_mul + c * pr * cz
            + 2 * c * pr * c_mul + ln(pr * c_mul, pr, c) + c * pr * c_mul + c * pr * cz
        ),
        # x2 (starting, ending node): LayerNorm read by the bias Linear and q, k, v, g
        "triangle_attention": 2 * (
            ln(pr * cz, pr) + lin(5, pr * cz)
            + _gated_attention_bytes(pr, hc_z, b * n * h_z * n * n, pr * h_z, 0, True, backend, c,
                                     pair_bias=_pair_bias_elems(b, n, pr * h_z, chunked), key_bias=pr)
        ),
        # under autocast the transition multiplies by the fp32 mask as it is; otherwise by its cast
        "pair_transition": ln(pr * cz, pr) + lin(1, pr * cz) + c * pr * tn * cz + (0 if amp else mask_cast(pr, FP32, st)),
    }


def _pair_weights(cz: int, c_mul: int, h_z: int, hc_z: int, tn: int) -> int:
    """Elements of the pair modules' Linear weights (their c-byte copies under autocast)."""
    return 2 * (4 * cz * c_mul + cz * cz + c_mul * cz) + 2 * (cz * h_z + 5 * cz * hc_z) + 2 * tn * cz * cz


def _evoformer_block_terms(mcfg: DictConfig, b: int, n: int, s: int, c: int, st: int) -> dict[str, int]:
    """Bytes one Evoformer block keeps for the backward pass, by sub-module (see activation_bytes)."""
    cm, cz, tn = mcfg.c_m, mcfg.c_z, mcfg.transition_n
    h_m, h_z = mcfg.n_heads_msa, mcfg.n_heads_pair
    hc_m, hc_z = h_m * mcfg.c_hidden_msa_att, h_z * mcfg.c_hidden_pair_att
    c_opm, c_mul = mcfg.c_hidden_opm, mcfg.c_hidden_mul
    backend = as_enum(mcfg.attention_backend, AttentionBackend)
    chunked = mcfg.chunk_size is not None
    autocast = c != st
    ms, pr = b * s * n, b * n * n  # MSA and pair positions

    def ln(elems: int, rows: int) -> int:  # LayerNorm of the stream (_ln_bytes)
        return _ln_bytes(elems, rows, st, backend)

    def lin(k: int, elems: int) -> int:  # k Linear layers reading one contiguous LayerNorm output
        return (k * c if autocast else st) * elems  # autocast casts it once per layer (uncached)

    def mask_cast(elems: int, src: int, dst: int) -> int:  # a fp32 mask cast to another dtype; a view if fp32
        return dst * elems if dst != src else 0

    terms = {
        "msa_row_attention": ln(pr * cz, pr) + lin(1, pr * cz) + ln(ms * cm, ms) + lin(4, ms * cm)
        + _gated_attention_bytes(ms, hc_m, b * s * h_m * n * n, ms * h_m, 0, True, backend, c,
                                 pair_bias=_pair_bias_elems(b, s, pr * h_m, chunked), key_bias=ms),
        # the LayerNorm reads the transposed MSA, so its output is laid out as the projections read it
        "msa_column_attention": ln(ms * cm, ms) + lin(4, ms * cm)
        + _gated_attention_bytes(ms, hc_m, b * n * h_m * s * s, b * n * h_m * s, b * n * s, False, backend, c,
                                 key_bias=ms),
        "msa_transition": ln(ms * cm, ms) + lin(1, ms * cm) + c * ms * tn * cm + mask_cast(ms, FP32, st),
        # a and b (masked projections, kept by the einsum in the compute dtype, cast once whether
        # chunked or not), the outer product [*, I, J, c^2] (the output Linear's input) and the
        # divisor [*, I, J, 1]
        # its LayerNorm's input is the block's output m: counted as the next block's input (or outside)
        # unless the stream is below fp32, where primitives.LayerNorm keeps its own fp32 copy (the fused
        # one keeps m itself)
        "outer_product_mean": ln(ms * cm, ms) - (st * ms * cm if st == FP32 or backend is AttentionBackend.triton else 0)
        + lin(2, ms * cm)
        + mask_cast(ms, FP32, st)
        + 2 * c * ms * c_opm + c * pr * c_opm**2 + c * pr,
        **_pair_terms(b, n, cz, c_mul, h_z, hc_z, tn, backend, c, st, chunked=chunked),
        # SharedDropout keeps its mask [*, 1, N_res, C] ([*, N_res, 1, C] column-wise) in the update's dtype
        "dropout_masks": (c * b * n * cm if mcfg.msa_dropout > 0 else 0)
        + (4 * c * b * n * cz if mcfg.pair_dropout > 0 else 0),
    }
    if autocast:  # the low-precision copy of every Linear weight, kept by its matmul
        weights = (
            cz * h_m + 5 * cm * hc_m + 5 * cm * hc_m  # row (+ pair bias) and column attention
            + 2 * tn * cm * cm + 2 * cm * c_opm + c_opm**2 * cz  # MSA transition, outer product mean
            + _pair_weights(cz, c_mul, h_z, hc_z, tn)  # triangle modules, pair transition
        )
        terms["weight_casts"] = c * weights
    return terms


class _Sizes:
    """A model config with some keys replaced (the extra-MSA block is an Evoformer block at C_e)."""

    def __init__(self, mcfg: DictConfig, **replace):
        self._mcfg, self._replace = mcfg, replace

    def __getattr__(self, key: str):
        return self._replace[key] if key in self._replace else getattr(self._mcfg, key)


def _global_attention_bytes(b: int, n: int, s: int, cm: int, h: int, ch: int, c: int, st: int,
                            backend: AttentionBackend = AttentionBackend.naive) -> int:
    """MSAColumnGlobalAttention (Algorithm 19) on [b, s, n, cm], its LayerNorm on the transposed
    input: the input (the stream, fp32) and statistics, the masked mean's divisor [b, n, 1], the
    averaged query's input [b, n, cm], the LayerNorm output read by k, v and the gate (one fp32
    tensor, or one cast per Linear under autocast), k and v [b, n, s, c_h], the scaled q
    [b, n, H, c_h], the fp32 softmax [b, n, H, s] (+ its cast below fp32), sigmoid(g) and o * g
    [b, n, s, H c_h], o [b, n, H, c_h]. It has no backend of its own: attention_backend=triton
    changes only its LayerNorm (the fused one)."""
    autocast = c != st
    ms, bn, hc = b * s * n, b * n, h * ch
    return (
        _ln_bytes(ms * cm, ms, st, backend) + FP32 * bn + (c if autocast else st) * bn * cm
        + (3 * c if autocast else st) * ms * cm + 2 * c * ms * ch + c * bn * hc
        + FP32 * bn * h * s + (c * bn * h * s if c < FP32 else 0) + 2 * c * ms * hc + c * bn * hc
    )


def _extra_msa_block_terms(mcfg: DictConfig, b: int, n: int, e: int, c: int, st: int) -> dict[str, int]:
    """Bytes one extra-MSA block keeps (Algorithm 18): an Evoformer block at C_e over the E extra
    rows with the row attention's head width c_hidden_extra_msa_att, and global column attention."""
    ce, h, ch = mcfg.c_e, mcfg.n_heads_msa, mcfg.c_hidden_extra_msa_att
    sizes = _Sizes(mcfg, c_m=ce, c_hidden_msa_att=ch)
    terms = _evoformer_block_terms(sizes, b, n, e, c, st)
    terms["msa_column_attention"] = _global_attention_bytes(b, n, e, ce, h, ch, c, st,
                                                            as_enum(mcfg.attention_backend, AttentionBackend))
    if c != st:  # global attention weights (q, k, v, gate, out) instead of the column attention's 5 ce x H c_h
        terms["weight_casts"] += c * (3 * ce * h * ch + 2 * ce * ch - 5 * ce * h * ch)
    return terms


def _template_block_terms(mcfg: DictConfig, b: int, t: int, n: int, c: int, st: int) -> dict[str, int]:
    """Bytes one template pair block keeps (Algorithm 16): the pair modules at C_t on B T pair
    representations, and its four dropout masks ([B T, 1, N, C_t] or [B T, N, 1, C_t]). The
    template stream t is the embedding Linear's output, so it is in the compute dtype (bf16 under
    autocast, unlike m and z); the weights are cast as in the Evoformer."""
    ct, c_mul, h = mcfg.c_t, mcfg.c_hidden_template_mul, mcfg.n_heads_template
    hc, tn = h * mcfg.c_hidden_template_att, mcfg.template_transition_n
    terms = _pair_terms(b * t, n, ct, c_mul, h, hc, tn, as_enum(mcfg.attention_backend, AttentionBackend), c, c, amp=c != st,
                        chunked=mcfg.chunk_size is not None)
    terms["dropout_masks"] = 4 * c * b * t * n * ct if mcfg.pair_dropout > 0 else 0
    if c != st:
        terms["weight_casts"] = c * _pair_weights(ct, c_mul, h, hc, tn)
    return terms


def _stack_outside_terms(
    mcfg: DictConfig, b: int, n: int, s: int, e: int, t: int, c: int, st: int, extra_last_checkpointed: bool
) -> dict[str, int]:
    """What the template and extra-MSA stacks keep outside their blocks. Templates: the pair
    features [B, T, N, N, 88] (the embedding Linear's input), the final LayerNorm (input and
    statistics), the point-wise attention (its input z, or its cast; the LayerNorm output
    permuted to [B, N, N, T, C_t] and copied once (cast once under autocast) for both k and v; q, k, v; the fp32 softmax
    over the templates, + its cast; the output projection's input), the angle features
    [B, T, N, 57] and the ReLU output [B, T, N, C_m], the MSA mask grown by the template rows
    [B, S + T, N] (fp32). Extra MSA: the features [B, E, N, 25] and the last block's output e,
    which its outer product mean keeps (unless that block is checkpointed).
    attention_backend=triton: the point-wise attention keeps q, k, v, o, the fp32 log-sum-exp
    [B N N, H] and the template mask bias expanded to every pair [B N N, T] (fp32) instead of the
    softmax and the matmuls' copies; the final LayerNorm keeps t in its own dtype (_ln_bytes)."""
    autocast = c != st
    lin_in = c if autocast else st
    backend = as_enum(mcfg.attention_backend, AttentionBackend)
    terms: dict[str, int] = {}
    if mcfg.templates and t > 0:
        ct, cz, cm = mcfg.c_t, mcfg.c_z, mcfg.c_m
        h, hc = mcfg.n_heads_template_pointwise, mcfg.n_heads_template_pointwise * mcfg.c_hidden_template_pointwise
        pr, tpr = b * n * n, b * t * n * n
        terms["template_pair_stack_io"] = lin_in * tpr * 88 + _ln_bytes(tpr * ct, tpr, c, backend)
        if backend is AttentionBackend.triton:  # q (c), k and v (the projections' outputs), key bias, log-sum-exp, o
            core = c * pr * hc + 2 * c * tpr * hc + FP32 * tpr + FP32 * pr * h
        else:  # the scaled q, k^T and v copies; the fp32 softmax (+ its cast)
            core = c * pr * hc + 2 * c * tpr * hc + FP32 * pr * h * t + (c * pr * h * t if c < FP32 else 0)
        terms["template_pointwise_attention"] = (
            (c * pr * cz if autocast else 0) + lin_in * tpr * ct + core + c * pr * hc  # + the output projection's input
        )
        terms["template_angle_embedder"] = lin_in * b * t * n * 57 + c * b * t * n * cm
        terms["msa_mask"] = FP32 * b * (s + t) * n
        if autocast:
            terms["template_weight_casts"] = c * (cz * hc + 2 * ct * hc + hc * cz + cm * cm)
    if mcfg.n_extra_msa_blocks > 0 and e > 0:
        terms["extra_msa_embedder"] = lin_in * b * e * n * 25
        if not extra_last_checkpointed:
            terms["extra_msa_output"] = st * b * e * n * mcfg.c_e
    return terms


def _structure_module_bytes(mcfg: DictConfig, b: int, n: int, sm: int, backend: AttentionBackend = AttentionBackend.naive) -> int:
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
    layer = (ipa + 2 * drop + 2 * _ln_bytes(sn * cs, sn, sm, backend) + 4 * sm * sn * cs
             + FRAME_FLOATS_PER_LAYER * sm * sn + resnet)
    # LayerNorm of s (input in fp32, stats), linear_in's input, its output (the first IPA's input), z's LayerNorm output;
    # once: the all-atom frames and atoms of the last layer (Algorithm 24)
    all_atom = sm * sn * ALL_ATOM_FLOATS + INT64 * sn * 14
    return (_ln_bytes(sn * cs, sn, sm, backend) + 2 * sm * sn * cs + sm * b * n * n * cz + layers * layer
            + 13 * sm * sn + all_atom)


def _outside_terms(mcfg: DictConfig, b: int, n: int, s: int, c: int, st: int, s_evo: int | None = None) -> dict[str, int]:
    """s: the MSA rows (the masked-MSA head's); s_evo: the Evoformer's, template rows included."""
    cm, cz, cs = mcfg.c_m, mcfg.c_z, mcfg.c_s
    s_evo = s if s_evo is None else s_evo
    tf, msa_dim = _dim(mcfg, "target_feat_dim"), _dim(mcfg, "msa_feat_dim")
    relpos = 2 * _dim(mcfg, "max_relative_position") + 1
    bins, classes = _dim(mcfg, "n_distogram_bins"), _dim(mcfg, "n_msa_classes")
    autocast = c != st
    ms, pr, sn = b * s * n, b * n * n, b * n
    # recycling: LayerNorm of the previous pair (fp32) and first MSA row; after a no-grad iteration
    # the row is a view of the previous MSA representation, which it then keeps whole
    backend = as_enum(mcfg.attention_backend, AttentionBackend)
    # the fused LayerNorm keeps its input as it is: the whole previous MSA when the row is a view it can
    # read as rows (B = 1), else a contiguous copy of the row in the stream dtype
    if backend is AttentionBackend.triton:
        m1_prev = st * b * s_evo * n * cm if mcfg.num_recycles > 0 and b == 1 else st * sn * cm
    else:
        m1_prev = st * b * s_evo * n * cm if mcfg.num_recycles > 0 and st == FP32 else FP32 * sn * cm
    layers = mcfg.n_structure_layers
    # FAPE (fp32, autocast off): per frame-position pair the position relative to the frame's origin
    # (3, kept by the einsum with the rotation), the error vector (3) and the distance (1); backbone
    # FAPE over N x N pairs per layer, all-atom FAPE over 8 N frames x 14 N atoms
    fape_pairs = layers * sn * n + 8 * 14 * sn * n
    plddt_bins, c_plddt = _dim(mcfg, "n_plddt_bins"), _dim(mcfg, "c_hidden_plddt")
    terms = {
        "input_embedder": (c * (3 * sn * tf + ms * msa_dim) if autocast else 0) + c * pr * relpos,
        "recycling_embedder": c * pr * RECYCLE_BINS + _ln_bytes(pr * cz, pr, st, backend) + m1_prev + 2 * FP32 * sn,
        "pair_mask": FP32 * pr if st == FP32 else 0,  # [*, N, N] fp32, kept by the triangle multiplications
        # the last block's outputs: m read by the single projection (first row) and the masked-MSA
        # head, z by the structure module's LayerNorm (fp32) and the distogram head
        # (with template rows, the head reads the first s rows: a copy when B > 1 makes the slice strided)
        "evoformer_output": (c * (sn * cm + ms * cm) if autocast
                             else st * b * s_evo * n * cm + (st * sn * cm if b > 1 else 0)
                             + (st * ms * cm if b > 1 and s_evo > s else 0))
        + _ln_bytes(pr * cz, pr, st, backend) + (c * pr * cz if autocast or st != FP32 else 0),
        "structure_module": _structure_module_bytes(mcfg, b, n, st, backend),
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


def _stack_sizes(mcfg: DictConfig, n_extra: int, n_templ: int) -> tuple[int, int]:
    """(extra-MSA rows, templates) the model reads: 0 for a stack it does not have."""
    extra = n_extra if _dim(mcfg, "n_extra_msa_blocks") > 0 else 0
    return extra, (n_templ if _dim(mcfg, "templates") else 0)


def activation_terms(
    mcfg: DictConfig, batch: int, n_res: int, n_seq: int, compute_bytes: int, residual_bytes: int,
    n_extra: int = 0, n_templ: int = 0, extra_last_checkpointed: bool = False,
) -> tuple[dict[str, int], dict[str, int]]:
    """(one Evoformer block's saved bytes, the saved bytes outside the blocks), by part. The
    Evoformer runs on the n_seq MSA rows and the n_templ template rows."""
    n_extra, n_templ = _stack_sizes(mcfg, n_extra, n_templ)
    b, c, st = batch, compute_bytes, residual_bytes
    return (
        _evoformer_block_terms(mcfg, b, n_res, n_seq + n_templ, c, st),
        {**_outside_terms(mcfg, b, n_res, n_seq, c, st, s_evo=n_seq + n_templ),
         **_stack_outside_terms(mcfg, b, n_res, n_seq, n_extra, n_templ, c, st, extra_last_checkpointed)},
    )


def stack_terms(
    mcfg: DictConfig, batch: int, n_res: int, n_extra: int, n_templ: int, compute_bytes: int, residual_bytes: int
) -> list[dict]:
    """One entry per further stack of blocks (memtrain.memory.estimator's "stacks"): the extra-MSA
    stack and the template pair stack, each {"name", "n_blocks", "block": bytes one block keeps,
    "block_input": what a checkpointed block keeps, "terms": the block's bytes by part}."""
    n_extra, n_templ = _stack_sizes(mcfg, n_extra, n_templ)
    b, n, c, st = batch, n_res, compute_bytes, residual_bytes
    stacks = []
    if n_extra > 0:
        terms = _extra_msa_block_terms(mcfg, b, n, n_extra, c, st)
        stacks.append({"name": "extra_msa", "n_blocks": mcfg.n_extra_msa_blocks, "block": sum(terms.values()),
                       "block_input": st * b * (n_extra * n * mcfg.c_e + n * n * mcfg.c_z), "terms": terms})
    if n_templ > 0 and mcfg.n_template_blocks > 0:
        terms = _template_block_terms(mcfg, b, n_templ, n, c, st)
        stacks.append({"name": "template_pair", "n_blocks": mcfg.n_template_blocks, "block": sum(terms.values()),
                       "block_input": c * b * n_templ * n * n * mcfg.c_t, "terms": terms})
    return stacks


def activation_bytes(
    mcfg: DictConfig,
    batch: int,
    seq_len: int,
    compute_bytes: int,
    residual_bytes: int,
    *,
    n_res: int | None = None,
    n_seq: int | None = None,
    n_extra: int = 0,
    n_templ: int = 0,
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
    attention_backend=triton (memtrain.kernels; _gated_attention_bytes, _ln_bytes): each attention
    keeps q, k, v, its output, the pair bias [B, N, N, H] (not expanded over the rows), the fp32
    per-key mask bias and the fp32 log-sum-exp [*, H, Q] instead of any [*, H, Q, K] matrix; every
    LayerNorm is the fused one, which keeps its input in its own dtype (no fp32 copy). Checked at
    fp32 under Triton's interpreter on CPU; the bf16 terms follow the same tensors' dtypes.
    model.chunk_size does not change what is saved (each chunk's tensors are kept for the backward
    pass; chunking only lowers the transient peak), except with attention_backend=triton over more
    than one pair representation (B > 1, or the template stack's B T): chunk_layer expands the pair
    bias over the rows before slicing it, and the kernels keep every slice (_pair_bias_elems).

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
    extra_last_checkpointed = False
    if cfg is not None:
        n_res, n_seq = cfg.data.crop_size, cfg.data.max_msa
        n_extra, n_templ = cfg.data.get("max_extra_msa", 0), cfg.data.get("max_templates", 0)
        from memtrain.models.activation_checkpoint import (
            checkpointed_block_ids,  # (imports the model registry)
        )

        ac = cfg.activation_checkpoint
        blocks = _dim(mcfg, "n_extra_msa_blocks")
        extra_last_checkpointed = blocks - 1 in checkpointed_block_ids(
            blocks, ac.mode, ac.policy, ac.every_k)
    if n_res is None or n_seq is None:
        raise ConfigError(
            "data.crop_size",
            "the AlphaFold activation model needs the crop size and the MSA depth: pass "
            "n_res=cfg.data.crop_size, n_seq=cfg.data.max_msa (or cfg=cfg); seq_len does not apply",
        )
    block, outside = activation_terms(mcfg, batch, n_res, n_seq, compute_bytes, residual_bytes, n_extra, n_templ,
                                      extra_last_checkpointed)
    s_evo = n_seq + _stack_sizes(mcfg, n_extra, n_templ)[1]
    return {
        "block": sum(block.values()),
        "block_input": residual_bytes * batch * (s_evo * n_res * mcfg.c_m + n_res * n_res * mcfg.c_z),
        "attention_core_freed": 0,
        "outside_blocks": sum(outside.values()),
        # the all-atom FAPE's [B, 8N, 14N, 3] fp32 vectors: three live at once at the loss's peak, in the
        # forward (difference, square, sum) and at its backward (pow's gradient and its factors)
        "loss_forward_transient": 3 * FP32 * batch * 8 * n_res * 14 * n_res * 3,
        "loss_backward_transient": 3 * FP32 * batch * 8 * n_res * 14 * n_res * 3,
        "stacks": [{k: v for k, v in stack.items() if k != "terms"}
                   for stack in stack_terms(mcfg, batch, n_res, n_extra, n_templ, compute_bytes, residual_bytes)],
    }
