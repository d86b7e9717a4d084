"""Triton kernels of Evoformer attention with a pair bias (flash-attention style, online softmax).

Per (batch z, broadcast row s, head h), with L = log2(e) and scale = 1/sqrt(D):

    t_ij = scale * q_i . k_j + bias[z, h, i, j] + key_bias[z, s, j]     logits, never stored
    o_i  = sum_j softmax_j(t_ij) v_j
    lse_i = log2 sum_j 2^(L t_ij)                                       saved for the backward

The bias is shared by every s (MSA rows, or the rows i of triangle attention); its gradient
dbias[z, h] = sum_s dt[z, s, h] is formed by `_bwd_dbias_kernel`, which loops over s for one
[BLOCK_M, BLOCK_N] tile of dbias and keeps the sum in registers, so no [Z, S, H, N_q, N_k] tensor
exists at any point. Every kernel stores its outputs (no atomics, no accumulation into its
outputs), so results are deterministic and the autotuner may rerun a kernel freely.

Each kernel is self-contained (no @triton.jit helpers): the launcher builds a compiled and an
interpreted (TRITON_INTERPRET) variant from the same Python source, and an interpreted function
cannot call a compiled helper.

Layouts: q [Z, S, N_q, H, D], k and v [Z, S, N_k, H, D], o like q, bias [Z, H, N_q, N_k] (any
strides, stride 0 for a broadcast head or query dim), key_bias [Z * S, N_k] fp32,
lse and delta [Z * S * H, N_q] fp32. Program axis 0 runs over Z * S * H (Z * H for dbias), so the
1-D grid limit of 2^31 applies to it, not the 65535 of axes 1 and 2.
"""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): softmax is computed with exp2


@triton.jit
def _fwd_kernel(
    Q, K, V, B, KB, O, LSE,
    s_qz, s_qs, s_qm, s_qh, s_qd,
    s_kz, s_ks, s_kn, s_kh, s_kd,
    s_vz, s_vs, s_vn, s_vh, s_vd,
    s_bz, s_bh, s_bm, s_bn,
    s_oz, s_os, s_om, s_oh, s_od,
    S, H, N_Q, N_K, D, sm_scale,
    HAS_BIAS: tl.constexpr, HAS_KEY_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_m = tl.program_id(1)
    h = pid_b % H
    zs = pid_b // H
    s = zs % S
    z = zs // S
    z64, s64, h64, zs64 = z.to(tl.int64), s.to(tl.int64), h.to(tl.int64), zs.to(tl.int64)
    q_ptr = Q + z64 * s_qz + s64 * s_qs + h64 * s_qh
    k_ptr = K + z64 * s_kz + s64 * s_ks + h64 * s_kh
    v_ptr = V + z64 * s_vz + s64 * s_vs + h64 * s_vh
    o_ptr = O + z64 * s_oz + s64 * s_os + h64 * s_oh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N_Q
    d_ok = offs_d < D
    q = tl.load(q_ptr + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        n_ok = cols < N_K
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + cols[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_mask, other=0.0)
        t = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if HAS_BIAS:
            b_ptr = B + z64 * s_bz + h64 * s_bh
            bias = tl.load(b_ptr + offs_m[:, None] * s_bm + cols[None, :] * s_bn,
                           mask=m_ok[:, None] & n_ok[None, :], other=0.0)
            t += bias.to(tl.float32) * 1.4426950408889634
        if HAS_KEY_BIAS:
            kb = tl.load(KB + zs64 * N_K + cols, mask=n_ok, other=0.0)
            t += kb[None, :] * 1.4426950408889634
        t = tl.where(n_ok[None, :], t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(t, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(t - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + cols[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(o_ptr + offs_m[:, None] * s_om + offs_d[None, :] * s_od, acc.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_b.to(tl.int64) * N_Q + offs_m, m_i + tl.log2(l_i), mask=m_ok)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, B, KB, DO, LSE, DELTA, DK, DV,
    s_qz, s_qs, s_qm, s_qh, s_qd,
    s_kz, s_ks, s_kn, s_kh, s_kd,
    s_vz, s_vs, s_vn, s_vh, s_vd,
    s_bz, s_bh, s_bm, s_bn,
    s_oz, s_os, s_om, s_oh, s_od,
    S, H, N_Q, N_K, D, sm_scale,
    HAS_BIAS: tl.constexpr, HAS_KEY_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dk, dv for one block of keys, looping over the queries. DO, DK, DV have the strides of
    O (s_o*), K and V; DK and DV are contiguous like K and V (the launcher allocates them so)."""
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    h = pid_b % H
    zs = pid_b // H
    s = zs % S
    z = zs // S
    z64, s64, h64, zs64 = z.to(tl.int64), s.to(tl.int64), h.to(tl.int64), zs.to(tl.int64)
    q_ptr = Q + z64 * s_qz + s64 * s_qs + h64 * s_qh
    k_off = z64 * s_kz + s64 * s_ks + h64 * s_kh
    v_off = z64 * s_vz + s64 * s_vs + h64 * s_vh
    do_ptr = DO + z64 * s_oz + s64 * s_os + h64 * s_oh
    row_ptr = pid_b.to(tl.int64) * N_Q

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N_K
    d_ok = offs_d < D
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + k_off + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_mask, other=0.0)
    v = tl.load(V + v_off + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_mask, other=0.0)
    if HAS_KEY_BIAS:
        kb = tl.load(KB + zs64 * N_K + offs_n, mask=n_ok, other=0.0)

    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, N_Q, BLOCK_M):
        rows = start_m + offs_m
        m_ok = rows < N_Q
        qd_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + rows[:, None] * s_qm + offs_d[None, :] * s_qd, mask=qd_mask, other=0.0)
        do = tl.load(do_ptr + rows[:, None] * s_om + offs_d[None, :] * s_od, mask=qd_mask, other=0.0)
        lse = tl.load(LSE + row_ptr + rows, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + row_ptr + rows, mask=m_ok, other=0.0)
        t = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if HAS_BIAS:
            b_ptr = B + z64 * s_bz + h64 * s_bh
            bias = tl.load(b_ptr + rows[:, None] * s_bm + offs_n[None, :] * s_bn,
                           mask=m_ok[:, None] & n_ok[None, :], other=0.0)
            t += bias.to(tl.float32) * 1.4426950408889634
        if HAS_KEY_BIAS:
            t += kb[None, :] * 1.4426950408889634
        p = tl.where(m_ok[:, None] & n_ok[None, :], tl.exp2(t - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])  # d loss / d logits
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(DK + k_off + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + v_off + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, B, KB, DO, LSE, DELTA, DQ,
    s_qz, s_qs, s_qm, s_qh, s_qd,
    s_kz, s_ks, s_kn, s_kh, s_kd,
    s_vz, s_vs, s_vn, s_vh, s_vd,
    s_bz, s_bh, s_bm, s_bn,
    s_oz, s_os, s_om, s_oh, s_od,
    S, H, N_Q, N_K, D, sm_scale,
    HAS_BIAS: tl.constexpr, HAS_KEY_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dq for one block of queries, looping over the keys. DQ has the strides of Q."""
    pid_b = tl.program_id(0)
    pid_m = tl.program_id(1)
    h = pid_b % H
    zs = pid_b // H
    s = zs % S
    z = zs // S
    z64, s64, h64, zs64 = z.to(tl.int64), s.to(tl.int64), h.to(tl.int64), zs.to(tl.int64)
    q_off = z64 * s_qz + s64 * s_qs + h64 * s_qh
    k_ptr = K + z64 * s_kz + s64 * s_ks + h64 * s_kh
    v_ptr = V + z64 * s_vz + s64 * s_vs + h64 * s_vh
    do_ptr = DO + z64 * s_oz + s64 * s_os + h64 * s_oh
    row_ptr = pid_b.to(tl.int64) * N_Q

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N_Q
    d_ok = offs_d < D
    qd_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + q_off + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd, mask=qd_mask, other=0.0)
    do = tl.load(do_ptr + offs_m[:, None] * s_om + offs_d[None, :] * s_od, mask=qd_mask, other=0.0)
    lse = tl.load(LSE + row_ptr + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + row_ptr + offs_m, mask=m_ok, other=0.0)

    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        n_ok = cols < N_K
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + cols[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + cols[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_mask, other=0.0)
        t = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if HAS_BIAS:
            b_ptr = B + z64 * s_bz + h64 * s_bh
            bias = tl.load(b_ptr + offs_m[:, None] * s_bm + cols[None, :] * s_bn,
                           mask=m_ok[:, None] & n_ok[None, :], other=0.0)
            t += bias.to(tl.float32) * 1.4426950408889634
        if HAS_KEY_BIAS:
            kb = tl.load(KB + zs64 * N_K + cols, mask=n_ok, other=0.0)
            t += kb[None, :] * 1.4426950408889634
        p = tl.where(m_ok[:, None] & n_ok[None, :], tl.exp2(t - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + q_off + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd, dq.to(DQ.dtype.element_ty), mask=qd_mask)


@triton.jit
def _bwd_dbias_kernel(
    Q, K, V, B, KB, DO, LSE, DELTA, DB,
    s_qz, s_qs, s_qm, s_qh, s_qd,
    s_kz, s_ks, s_kn, s_kh, s_kd,
    s_vz, s_vs, s_vn, s_vh, s_vd,
    s_bz, s_bh, s_bm, s_bn,
    s_oz, s_os, s_om, s_oh, s_od,
    S, H, N_Q, N_K, D, sm_scale,
    HAS_KEY_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dbias[z, h, tile] = sum over s of d loss / d logits[z, s, h, tile], for one
    [BLOCK_M, BLOCK_N] tile; the sum over the broadcast axis S stays in registers. DB is a
    contiguous [Z, H, N_Q, N_K] tensor; B (the bias, with its own strides) is read for the logits."""
    pid_zh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    h = pid_zh % H
    z = pid_zh // H
    z64, h64 = z.to(tl.int64), h.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N_Q
    n_ok = offs_n < N_K
    d_ok = offs_d < D
    mn_ok = m_ok[:, None] & n_ok[None, :]
    qd_mask = m_ok[:, None] & d_ok[None, :]
    kv_mask = n_ok[:, None] & d_ok[None, :]
    b_ptr = B + z64 * s_bz + h64 * s_bh
    bias = tl.load(b_ptr + offs_m[:, None] * s_bm + offs_n[None, :] * s_bn, mask=mn_ok, other=0.0)
    bias = bias.to(tl.float32) * 1.4426950408889634

    qk_scale = sm_scale * 1.4426950408889634
    db = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for s in range(0, S):
        zs64 = z64 * S + s  # int64, as z64 is
        s64 = zs64 - z64 * S
        q_ptr = Q + z64 * s_qz + s64 * s_qs + h64 * s_qh
        k_ptr = K + z64 * s_kz + s64 * s_ks + h64 * s_kh
        v_ptr = V + z64 * s_vz + s64 * s_vs + h64 * s_vh
        do_ptr = DO + z64 * s_oz + s64 * s_os + h64 * s_oh
        row_ptr = (zs64 * H + h64) * N_Q
        q = tl.load(q_ptr + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd, mask=qd_mask, other=0.0)
        do = tl.load(do_ptr + offs_m[:, None] * s_om + offs_d[None, :] * s_od, mask=qd_mask, other=0.0)
        k = tl.load(k_ptr + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_mask, other=0.0)
        lse = tl.load(LSE + row_ptr + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + row_ptr + offs_m, mask=m_ok, other=0.0)
        t = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale + bias
        if HAS_KEY_BIAS:
            kb = tl.load(KB + zs64 * N_K + offs_n, mask=n_ok, other=0.0)
            t += kb[None, :] * 1.4426950408889634
        p = tl.where(mn_ok, tl.exp2(t - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        db += p * (dp - delta[:, None])
    tl.store(DB + (pid_zh.to(tl.int64) * N_Q + offs_m[:, None]) * N_K + offs_n[None, :], db, mask=mn_ok)
