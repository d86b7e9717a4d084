"""Triton layer norm over the last dim, statistics in fp32.

Forward: one program per row; y = (x - mean) * rstd * w + b, mean and rstd saved ([R] fp32).
Backward: each program takes ROWS consecutive rows, writes dx for them and its partial sums of
dw = sum_r dy * x_hat and db = sum_r dy into row `pid` of [P, C] fp32 buffers, which the launcher
sums (a deterministic two-stage reduction; no atomics).
"""

import triton
import triton.language as tl


@triton.jit
def _ln_fwd_kernel(X, W, B, Y, MEAN, RSTD, stride_x, stride_y, C, eps,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < C
    x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / C
    xc = tl.where(ok, x - mean, 0.0)
    var = tl.sum(xc * xc, 0) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=ok)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _ln_bwd_kernel(X, W, DY, DX, MEAN, RSTD, DW_PART, DB_PART, stride_x, stride_dy, stride_dx, R, C,
                   HAS_W: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < C
    if HAS_W:
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_C], tl.float32)
    db = tl.zeros([BLOCK_C], tl.float32)
    for i in range(0, ROWS):
        row = pid.to(tl.int64) * ROWS + i
        if row < R:
            x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=ok, other=0.0).to(tl.float32)
            mean = tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            xhat = tl.where(ok, (x - mean) * rstd, 0.0)
            dw += dy * xhat
            db += dy
            g = dy * w if HAS_W else dy
            # dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
            c1 = tl.sum(g * xhat, 0) / C
            c2 = tl.sum(g, 0) / C
            dx = (g - c2 - xhat * c1) * rstd
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=ok)
    tl.store(DW_PART + pid.to(tl.int64) * C + cols, dw, mask=ok)
    tl.store(DB_PART + pid.to(tl.int64) * C + cols, db, mask=ok)
