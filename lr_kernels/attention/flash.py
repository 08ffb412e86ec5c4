"""Varlen FlashAttention-2 with RoPE fused into the tile loads (Triton), forward and backward.

Layout: q [T, H, D], k/v [T, Hkv, D] packed, sequences delimited by int32 cu_seqlens [B+1].
Every kernel grid is (tiles of the longest sequence, heads, sequences); tiles past the end of their
sequence exit at once, so no host sync is needed to build the grid.

RoPE (rotate-half) is applied to the q and k tiles in registers after loading. The two halves of the
head dim are loaded as separate [rows, BH] blocks, rotated, and q @ k^T is computed as
q1 @ k1^T + q2 @ k2^T; the rotated tensors never exist in memory. Backward recomputes the rotation,
accumulates dq/dk in the rotated frame and applies the inverse rotation before storing, so the
gradients are with respect to the un-rotated inputs. ``attention_scaling`` multiplies cos and sin,
i.e. scales q and k each, as Hugging Face applies it.

Half head dims are padded to a power of two >= 16 (masked), which is how D = 80 or 96 work.
Row offsets are int64, so T * H * D may exceed 2**31. float32 inputs use IEEE dots (no TF32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from lr_kernels._compile import KernelSpec
from lr_kernels.rope.angles import rope_angle

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _rope_cos_sin(POS, INV_FREQ, rows, m_rows, offs_h, HALF: tl.constexpr, rope_scaling):
    # cos/sin of the rows' angles, fp32 [R, BH]; scaled by attention_scaling (HF folds it into cos/sin).
    b_pos = tl.load(POS + rows, mask=m_rows, other=0)
    b_freq = tl.load(INV_FREQ + offs_h, mask=offs_h < HALF, other=0.0)
    b_ang = rope_angle(b_pos[:, None], b_freq[None, :])
    b_sin, b_cos = _sincos(b_ang)
    return b_cos * rope_scaling, b_sin * rope_scaling


@triton.jit
def _sincos(x):
    # sin and cos of a float32 |x| <~ 4*pi (rope_angle's range) to ~1e-7, with FMAs only. tl.sin/tl.cos
    # lower to libdevice, whose huge-argument fallback keeps a local-memory array (stack, spills).
    q = tl.floor(x * 0.6366197723675814 + 0.5)  # nearest multiple of pi/2
    r = tl.fma(-q, 1.5707963705062866, x)  # pi/2 = 1.5707963705062866 - 4.371139000186243e-08
    r = tl.fma(q, 4.371139000186243e-08, r)
    r2 = r * r
    # Taylor series on |r| <= pi/4: truncation error < 3e-9.
    s = r + r * r2 * (
        -1.6666666666666666e-01
        + r2
        * (
            8.3333333333333333e-03
            + r2 * (-1.9841269841269841e-04 + r2 * (2.7557319223985891e-06 + r2 * -2.5052108385441720e-08))
        )
    )
    c = 1.0 + r2 * (
        -0.5
        + r2
        * (
            4.1666666666666666e-02
            + r2
            * (
                -1.3888888888888889e-03
                + r2 * (2.4801587301587302e-05 + r2 * (-2.7557319223985891e-07 + r2 * 2.0876756987868099e-09))
            )
        )
    )
    quadrant = q.to(tl.int32) & 3
    odd = (quadrant & 1) != 0
    b_sin = tl.where(odd, c, s)
    b_cos = tl.where(odd, s, c)
    b_sin = tl.where(quadrant >= 2, -b_sin, b_sin)
    b_cos = tl.where(((quadrant + 1) & 2) != 0, -b_cos, b_cos)
    return b_sin, b_cos


@triton.jit
def _tile_mask(m_rows, offs_cols, N_COLS: tl.constexpr, BC: tl.constexpr):
    # Column predicates only when the head dim is padded; unpadded tiles get a per-row mask.
    if N_COLS == BC:
        return m_rows[:, None]
    else:
        return m_rows[:, None] & (offs_cols < N_COLS)[None, :]


@triton.jit
def _rotate(b_x1, b_x2, b_cos, b_sin):
    # Rotate in fp32, return in the input dtype so the following dots run on tensor cores.
    x1 = b_x1.to(tl.float32)
    x2 = b_x2.to(tl.float32)
    return (x1 * b_cos - x2 * b_sin).to(b_x1.dtype), (x2 * b_cos + x1 * b_sin).to(b_x1.dtype)


@triton.jit
def _unrotate(b_g1, b_g2, b_cos, b_sin):
    # Transpose of _rotate: maps a gradient in the rotated frame back to the input frame.
    return b_g1 * b_cos + b_g2 * b_sin, b_g2 * b_cos - b_g1 * b_sin


@triton.jit
def attention_fwd_kernel(
    Q,
    K,
    V,
    OUT,
    LSE,
    CU,
    POS,
    INV_FREQ,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    T,
    qk_scale,
    rope_scaling,
    HALF: tl.constexpr,
    D: tl.constexpr,
    GROUP: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BH: tl.constexpr,
    BDV: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # Longest-first: with causal masking the last query tiles of a sequence carry the most work.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_h = tl.program_id(1)
    i_b = tl.program_id(2)
    seq_start = tl.load(CU + i_b)
    L = tl.load(CU + i_b + 1) - seq_start
    start_m = pid_m * BM
    if start_m >= L:
        return
    i_hk = i_h // GROUP

    offs_m = start_m + tl.arange(0, BM)
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BDV)
    m_m = offs_m < L
    rows_m = (seq_start + offs_m).to(tl.int64)

    p_q = Q + rows_m[:, None] * stride_qt + i_h * stride_qh + offs_h[None, :]
    m_q = _tile_mask(m_m, offs_h, HALF, BH)
    b_q1 = tl.load(p_q, mask=m_q, other=0.0)
    b_q2 = tl.load(p_q + HALF, mask=m_q, other=0.0)
    if HAS_ROPE:
        b_cq, b_sq = _rope_cos_sin(POS, INV_FREQ, rows_m, m_m, offs_h, HALF, rope_scaling)
        b_q1, b_q2 = _rotate(b_q1, b_q2, b_cq, b_sq)

    b_m = tl.full([BM], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BDV], dtype=tl.float32)
    end_n = tl.minimum(L, start_m + BM) if CAUSAL else L
    for start_n in range(0, end_n, BN):
        offs_n = start_n + tl.arange(0, BN)
        m_n = offs_n < L
        rows_n = (seq_start + offs_n).to(tl.int64)
        p_k = K + rows_n[:, None] * stride_kt + i_hk * stride_kh + offs_h[None, :]
        m_k = _tile_mask(m_n, offs_h, HALF, BH)
        b_k1 = tl.load(p_k, mask=m_k, other=0.0)
        b_k2 = tl.load(p_k + HALF, mask=m_k, other=0.0)
        if HAS_ROPE:
            b_ck, b_sk = _rope_cos_sin(POS, INV_FREQ, rows_n, m_n, offs_h, HALF, rope_scaling)
            b_k1, b_k2 = _rotate(b_k1, b_k2, b_ck, b_sk)
        # [BM, BH] @ [BH, BN] twice -> [BM, BN]
        b_s = tl.dot(b_q1, tl.trans(b_k1), input_precision=DOT_PREC)
        b_s = tl.dot(b_q2, tl.trans(b_k2), b_s, input_precision=DOT_PREC)
        b_s = b_s * qk_scale
        m_s = m_n[None, :]
        if CAUSAL:
            m_s = m_s & (offs_m[:, None] >= offs_n[None, :])
        b_s = tl.where(m_s, b_s, float("-inf"))
        # Key 0 of the sequence is visible to every row, so b_m_new is finite from the first tile on.
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_p = tl.exp2(b_s - b_m_new[:, None])
        b_alpha = tl.exp2(b_m - b_m_new)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        p_v = V + rows_n[:, None] * stride_vt + i_hk * stride_vh + offs_d[None, :]
        b_v = tl.load(p_v, mask=_tile_mask(m_n, offs_d, D, BDV), other=0.0)
        # [BM, BN] @ [BN, BDV] -> [BM, BDV]
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None], input_precision=DOT_PREC)
        b_m = b_m_new

    b_acc = b_acc / b_l[:, None]
    p_o = OUT + rows_m[:, None] * stride_ot + i_h * stride_oh + offs_d[None, :]
    tl.store(p_o, b_acc.to(OUT.dtype.element_ty), mask=_tile_mask(m_m, offs_d, D, BDV))
    # Natural-log logsumexp of the scaled scores; b_m is in log2 units.
    b_lse = (b_m + tl.log2(b_l)) * LN2
    tl.store(LSE + i_h.to(tl.int64) * T + rows_m, b_lse, mask=m_m)


@triton.jit
def attention_bwd_preprocess_kernel(
    OUT,
    DO,
    DELTA,
    stride_ot,
    stride_oh,
    stride_dot,
    stride_doh,
    T,
    D: tl.constexpr,
    BM: tl.constexpr,
    BDV: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_h = tl.program_id(1)
    rows = (i_t * BM + tl.arange(0, BM)).to(tl.int64)
    offs_d = tl.arange(0, BDV)
    m_t = rows < T
    m = _tile_mask(m_t, offs_d, D, BDV)
    b_o = tl.load(OUT + rows[:, None] * stride_ot + i_h * stride_oh + offs_d[None, :], mask=m, other=0.0)
    b_do = tl.load(DO + rows[:, None] * stride_dot + i_h * stride_doh + offs_d[None, :], mask=m, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    tl.store(DELTA + i_h.to(tl.int64) * T + rows, b_delta, mask=m_t)


@triton.jit
def attention_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    CU,
    POS,
    INV_FREQ,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dkt,
    stride_dkh,
    stride_dvt,
    stride_dvh,
    T,
    sm_scale,
    qk_scale,
    rope_scaling,
    HALF: tl.constexpr,
    D: tl.constexpr,
    GROUP: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BH: tl.constexpr,
    BDV: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # One program owns a key/value tile of one kv head and accumulates over every query head of its
    # GQA group in registers: no atomics, no per-head partial buffers, deterministic sums.
    pid_n = tl.num_programs(0) - 1 - tl.program_id(0)
    i_hk = tl.program_id(1)
    i_b = tl.program_id(2)
    seq_start = tl.load(CU + i_b)
    L = tl.load(CU + i_b + 1) - seq_start
    start_n = pid_n * BN
    if start_n >= L:
        return

    offs_n = start_n + tl.arange(0, BN)
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BDV)
    m_n = offs_n < L
    rows_n = (seq_start + offs_n).to(tl.int64)

    p_k = K + rows_n[:, None] * stride_kt + i_hk * stride_kh + offs_h[None, :]
    m_k = _tile_mask(m_n, offs_h, HALF, BH)
    b_k1 = tl.load(p_k, mask=m_k, other=0.0)
    b_k2 = tl.load(p_k + HALF, mask=m_k, other=0.0)
    if HAS_ROPE:
        b_ck, b_sk = _rope_cos_sin(POS, INV_FREQ, rows_n, m_n, offs_h, HALF, rope_scaling)
        b_k1, b_k2 = _rotate(b_k1, b_k2, b_ck, b_sk)
    m_nd = _tile_mask(m_n, offs_d, D, BDV)
    b_v = tl.load(V + rows_n[:, None] * stride_vt + i_hk * stride_vh + offs_d[None, :], mask=m_nd, other=0.0)

    b_dk1 = tl.zeros([BN, BH], dtype=tl.float32)
    b_dk2 = tl.zeros([BN, BH], dtype=tl.float32)
    b_dv = tl.zeros([BN, BDV], dtype=tl.float32)
    # Causal: the first query tile that can see any key of this tile.
    lo = (start_n // BM) * BM if CAUSAL else 0
    n_tiles = tl.cdiv(L - lo, BM)
    # One flat loop over (query tile, head of the group): a nested head loop made ptxas's register
    # allocation collapse (32 registers, kilobytes of spills); the angles are recomputed per head.
    for it in range(0, n_tiles * GROUP):
        start_m = lo + (it // GROUP) * BM
        i_h = i_hk * GROUP + it % GROUP
        offs_m = start_m + tl.arange(0, BM)
        m_m = offs_m < L
        rows_m = (seq_start + offs_m).to(tl.int64)
        m_q = _tile_mask(m_m, offs_h, HALF, BH)
        m_s = m_m[None, :]
        if CAUSAL:
            m_s = m_s & (offs_m[None, :] >= offs_n[:, None])
        p_q = Q + rows_m[:, None] * stride_qt + i_h * stride_qh + offs_h[None, :]
        b_q1 = tl.load(p_q, mask=m_q, other=0.0)
        b_q2 = tl.load(p_q + HALF, mask=m_q, other=0.0)
        if HAS_ROPE:
            b_cq, b_sq = _rope_cos_sin(POS, INV_FREQ, rows_m, m_m, offs_h, HALF, rope_scaling)
            b_q1, b_q2 = _rotate(b_q1, b_q2, b_cq, b_sq)
        p_do = DO + rows_m[:, None] * stride_dot + i_h * stride_doh + offs_d[None, :]
        b_do = tl.load(p_do, mask=_tile_mask(m_m, offs_d, D, BDV), other=0.0)
        b_lse = tl.load(LSE + i_h.to(tl.int64) * T + rows_m, mask=m_m, other=0.0) * 1.4426950408889634
        b_delta = tl.load(DELTA + i_h.to(tl.int64) * T + rows_m, mask=m_m, other=0.0)
        # [BN, BH] @ [BH, BM] twice -> scores transposed, [BN, BM]
        b_st = tl.dot(b_k1, tl.trans(b_q1), input_precision=DOT_PREC)
        b_st = tl.dot(b_k2, tl.trans(b_q2), b_st, input_precision=DOT_PREC)
        b_pt = tl.where(m_s, tl.exp2(b_st * qk_scale - b_lse[None, :]), 0.0)
        # [BN, BM] @ [BM, BDV] -> [BN, BDV]
        b_dv = tl.dot(b_pt.to(b_do.dtype), b_do, b_dv, input_precision=DOT_PREC)
        # [BN, BDV] @ [BDV, BM] -> [BN, BM]
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PREC)
        b_dst = (b_pt * (b_dpt - b_delta[None, :])).to(b_q1.dtype)
        # [BN, BM] @ [BM, BH] -> [BN, BH]
        b_dk1 = tl.dot(b_dst, b_q1, b_dk1, input_precision=DOT_PREC)
        b_dk2 = tl.dot(b_dst, b_q2, b_dk2, input_precision=DOT_PREC)

    b_dk1 = b_dk1 * sm_scale
    b_dk2 = b_dk2 * sm_scale
    if HAS_ROPE:
        # Recomputed instead of kept live across the loop: registers, not ALU, are the scarce resource.
        b_ck, b_sk = _rope_cos_sin(POS, INV_FREQ, rows_n, m_n, offs_h, HALF, rope_scaling)
        b_dk1, b_dk2 = _unrotate(b_dk1, b_dk2, b_ck, b_sk)
    p_dk = DK + rows_n[:, None] * stride_dkt + i_hk * stride_dkh + offs_h[None, :]
    tl.store(p_dk, b_dk1.to(DK.dtype.element_ty), mask=m_k)
    tl.store(p_dk + HALF, b_dk2.to(DK.dtype.element_ty), mask=m_k)
    p_dv = DV + rows_n[:, None] * stride_dvt + i_hk * stride_dvh + offs_d[None, :]
    tl.store(p_dv, b_dv.to(DV.dtype.element_ty), mask=m_nd)


@triton.jit
def attention_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    CU,
    POS,
    INV_FREQ,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dqt,
    stride_dqh,
    T,
    sm_scale,
    qk_scale,
    rope_scaling,
    HALF: tl.constexpr,
    D: tl.constexpr,
    GROUP: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BH: tl.constexpr,
    BDV: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_h = tl.program_id(1)
    i_b = tl.program_id(2)
    seq_start = tl.load(CU + i_b)
    L = tl.load(CU + i_b + 1) - seq_start
    start_m = pid_m * BM
    if start_m >= L:
        return
    i_hk = i_h // GROUP

    offs_m = start_m + tl.arange(0, BM)
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BDV)
    m_m = offs_m < L
    rows_m = (seq_start + offs_m).to(tl.int64)

    p_q = Q + rows_m[:, None] * stride_qt + i_h * stride_qh + offs_h[None, :]
    m_q = _tile_mask(m_m, offs_h, HALF, BH)
    b_q1 = tl.load(p_q, mask=m_q, other=0.0)
    b_q2 = tl.load(p_q + HALF, mask=m_q, other=0.0)
    if HAS_ROPE:
        b_cq, b_sq = _rope_cos_sin(POS, INV_FREQ, rows_m, m_m, offs_h, HALF, rope_scaling)
        b_q1, b_q2 = _rotate(b_q1, b_q2, b_cq, b_sq)
    p_do = DO + rows_m[:, None] * stride_dot + i_h * stride_doh + offs_d[None, :]
    b_do = tl.load(p_do, mask=_tile_mask(m_m, offs_d, D, BDV), other=0.0)
    b_lse = tl.load(LSE + i_h.to(tl.int64) * T + rows_m, mask=m_m, other=0.0) * 1.4426950408889634
    b_delta = tl.load(DELTA + i_h.to(tl.int64) * T + rows_m, mask=m_m, other=0.0)

    b_dq1 = tl.zeros([BM, BH], dtype=tl.float32)
    b_dq2 = tl.zeros([BM, BH], dtype=tl.float32)
    end_n = tl.minimum(L, start_m + BM) if CAUSAL else L
    for start_n in range(0, end_n, BN):
        offs_n = start_n + tl.arange(0, BN)
        m_n = offs_n < L
        rows_n = (seq_start + offs_n).to(tl.int64)
        p_k = K + rows_n[:, None] * stride_kt + i_hk * stride_kh + offs_h[None, :]
        m_k = _tile_mask(m_n, offs_h, HALF, BH)
        b_k1 = tl.load(p_k, mask=m_k, other=0.0)
        b_k2 = tl.load(p_k + HALF, mask=m_k, other=0.0)
        if HAS_ROPE:
            b_ck, b_sk = _rope_cos_sin(POS, INV_FREQ, rows_n, m_n, offs_h, HALF, rope_scaling)
            b_k1, b_k2 = _rotate(b_k1, b_k2, b_ck, b_sk)
        p_v = V + rows_n[:, None] * stride_vt + i_hk * stride_vh + offs_d[None, :]
        b_v = tl.load(p_v, mask=_tile_mask(m_n, offs_d, D, BDV), other=0.0)
        # [BM, BH] @ [BH, BN] twice -> [BM, BN]
        b_s = tl.dot(b_q1, tl.trans(b_k1), input_precision=DOT_PREC)
        b_s = tl.dot(b_q2, tl.trans(b_k2), b_s, input_precision=DOT_PREC)
        m_s = m_m[:, None] & m_n[None, :]
        if CAUSAL:
            m_s = m_s & (offs_m[:, None] >= offs_n[None, :])
        b_p = tl.where(m_s, tl.exp2(b_s * qk_scale - b_lse[:, None]), 0.0)
        # [BM, BDV] @ [BDV, BN] -> [BM, BN]
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)
        b_ds = (b_p * (b_dp - b_delta[:, None])).to(b_k1.dtype)
        # [BM, BN] @ [BN, BH] -> [BM, BH]
        b_dq1 = tl.dot(b_ds, b_k1, b_dq1, input_precision=DOT_PREC)
        b_dq2 = tl.dot(b_ds, b_k2, b_dq2, input_precision=DOT_PREC)

    b_dq1 = b_dq1 * sm_scale
    b_dq2 = b_dq2 * sm_scale
    if HAS_ROPE:
        # Recomputed instead of kept live across the loop (register pressure).
        b_cq, b_sq = _rope_cos_sin(POS, INV_FREQ, rows_m, m_m, offs_h, HALF, rope_scaling)
        b_dq1, b_dq2 = _unrotate(b_dq1, b_dq2, b_cq, b_sq)
    p_dq = DQ + rows_m[:, None] * stride_dqt + i_h * stride_dqh + offs_h[None, :]
    tl.store(p_dq, b_dq1.to(DQ.dtype.element_ty), mask=m_q)
    tl.store(p_dq + HALF, b_dq2.to(DQ.dtype.element_ty), mask=m_q)


# ---------------------------------------------------------------------------------------------------
# Configuration: the launchers and report_specs both go through attention_config.

_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_TRITON_PTR = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
KERNELS = ("attention_fwd", "attention_bwd_preprocess", "attention_bwd_dkdv", "attention_bwd_dq")


@dataclass(frozen=True)
class AttentionConfig:
    BM: int  # query rows per tile
    BN: int  # key rows per tile
    num_warps: int
    num_stages: int


def block_dims(head_dim: int) -> tuple[int, int]:
    """(BH, BDV): padded half head dim for the q/k halves and padded full head dim for v/o."""
    bh = max(16, triton.next_power_of_2(head_dim // 2))
    bdv = max(16, triton.next_power_of_2(head_dim))
    return bh, bdv


# Tuned with `python -m lr_kernels.report` (zero spills, tensor cores) for fp16/bf16, causal, RoPE fused.
# Keys: (arch family, head-dim class) -> (BM, BN, num_warps, num_stages). RoPE adds ~30-60 live
# registers per thread in the loops (angles, cos/sin, the rotated tile), which is why these tiles are
# smaller than FlashAttention-2's usual ones, most of all on sm_80 where mma.sync keeps both dot
# operands in registers. On sm_90 8 warps split the N dimension across two warpgroups, halving each
# thread's share of the dk/dv accumulators, which is what lets dk/dv at D=128 use wgmma without spills.
_TUNED = {
    "attention_fwd": {
        (80, 64): (128, 64, 8, 2),
        (80, 128): (64, 64, 8, 2),
        (80, 256): (32, 32, 8, 2),
        (90, 64): (128, 64, 8, 2),
        (90, 128): (64, 64, 8, 2),
        (90, 256): (32, 32, 8, 2),  # mma.sync (HMMA): the wgmma tiles that fit spill at D=256
    },
    "attention_bwd_dkdv": {
        (80, 64): (16, 128, 8, 2),
        (80, 128): (16, 32, 4, 2),
        (80, 256): (16, 16, 4, 1),  # spills (~190 B): see report_specs
        (90, 64): (32, 128, 8, 2),
        (90, 128): (16, 64, 8, 2),
        (90, 256): (16, 16, 4, 1),  # spills (~240 B)
    },
    "attention_bwd_dq": {
        (80, 64): (64, 16, 4, 2),
        (80, 128): (32, 32, 4, 2),
        (80, 256): (16, 16, 4, 2),
        (90, 64): (128, 32, 8, 2),
        (90, 128): (64, 32, 8, 2),
        (90, 256): (16, 16, 4, 2),  # spills (~100 B)
    },
}


def attention_config(kernel: str, arch: int | None, dtype: str, head_dim: int) -> AttentionConfig:
    """Tile sizes and launch parameters for ``kernel`` on compute capability ``arch`` (e.g. 80, 90).

    ``arch=None`` means the CPU interpreter: small tiles (several tiles per test sequence, so the
    boundary and causal-skip logic is exercised) with BM != BN as on the GPUs.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    _, bdv = block_dims(head_dim)
    if kernel == "attention_bwd_preprocess":
        # [BM, BDV] o and do tiles: ~64 fp32 registers per thread at 4 warps.
        return AttentionConfig(
            BM=64 if arch is None else max(16, 4096 // bdv), BN=1, num_warps=4, num_stages=1
        )
    if arch is None:
        if kernel == "attention_bwd_dkdv":
            return AttentionConfig(BM=16, BN=32, num_warps=4, num_stages=1)
        return AttentionConfig(BM=32, BN=16, num_warps=4, num_stages=1)
    if dtype == "fp32":
        # IEEE fp32 dots run on CUDA cores (no tensor cores): small tiles, correctness over speed.
        return AttentionConfig(BM=32, BN=16, num_warps=4, num_stages=1)
    family = 90 if arch >= 90 else 80
    dim_class = 64 if bdv <= 64 else (128 if bdv <= 128 else 256)
    return AttentionConfig(*_TUNED[kernel][(family, dim_class)])


def _arch_of(t: torch.Tensor) -> int | None:
    if t.device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(t.device)
    return major * 10 + minor


def _dot_precision(dtype: str) -> str:
    # fp32 inputs are for exactness (tests, references); TF32 would silently drop 13 mantissa bits.
    return "ieee" if dtype == "fp32" else "tf32"


# ---------------------------------------------------------------------------------------------------
# Launchers


@dataclass(frozen=True)
class AttentionParams:
    """Non-tensor arguments of one attention call (kept together so autograd signatures stay short)."""

    max_seqlen: int
    causal: bool
    softmax_scale: float
    attention_scaling: float


def _rope_args(q: torch.Tensor, cu_seqlens, position_ids, inv_freq):
    if position_ids is None:
        # Never read (HAS_ROPE=False); any valid pointers do.
        return cu_seqlens, cu_seqlens, False
    return position_ids, inv_freq, True


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_ids: torch.Tensor | None,
    inv_freq: torch.Tensor | None,
    p: AttentionParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H, D], k/v [T, Hkv, D] (last dim contiguous) -> (o [T, H, D], lse fp32 [H, T])."""
    T, H, D = q.shape
    Hkv = k.shape[1]
    B = cu_seqlens.numel() - 1
    dtype = _DTYPE_NAMES[q.dtype]
    cfg = attention_config("attention_fwd", _arch_of(q), dtype, D)
    BH, BDV = block_dims(D)
    o = torch.empty_like(q)
    lse = torch.empty((H, T), dtype=torch.float32, device=q.device)
    pos, freq, has_rope = _rope_args(q, cu_seqlens, position_ids, inv_freq)
    grid = (triton.cdiv(p.max_seqlen, cfg.BM), H, B)
    attention_fwd_kernel[grid](
        q, k, v, o, lse, cu_seqlens, pos, freq,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        o.stride(0), o.stride(1), T, p.softmax_scale * LOG2E, p.attention_scaling,
        HALF=D // 2, D=D, GROUP=H // Hkv, BM=cfg.BM, BN=cfg.BN, BH=BH, BDV=BDV,
        CAUSAL=p.causal, HAS_ROPE=has_rope, DOT_PREC=_dot_precision(dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return o, lse


def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_ids: torch.Tensor | None,
    inv_freq: torch.Tensor | None,
    p: AttentionParams,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq [T, H, D], dk [T, Hkv, D], dv [T, Hkv, D]) w.r.t. the un-rotated q, k, v."""
    T, H, D = q.shape
    Hkv = k.shape[1]
    B = cu_seqlens.numel() - 1
    dtype = _DTYPE_NAMES[q.dtype]
    arch = _arch_of(q)
    BH, BDV = block_dims(D)
    do = do if do.stride(-1) == 1 else do.contiguous()
    pos, freq, has_rope = _rope_args(q, cu_seqlens, position_ids, inv_freq)
    common = dict(
        HALF=D // 2, D=D, GROUP=H // Hkv, BH=BH, BDV=BDV, CAUSAL=p.causal, HAS_ROPE=has_rope,
        DOT_PREC=_dot_precision(dtype),
    )  # fmt: skip

    delta = torch.empty((H, T), dtype=torch.float32, device=q.device)
    cfg = attention_config("attention_bwd_preprocess", arch, dtype, D)
    attention_bwd_preprocess_kernel[(triton.cdiv(T, cfg.BM), H)](
        o, do, delta, o.stride(0), o.stride(1), do.stride(0), do.stride(1), T,
        D=D, BM=cfg.BM, BDV=BDV, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip

    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    cfg = attention_config("attention_bwd_dkdv", arch, dtype, D)
    attention_bwd_dkdv_kernel[(triton.cdiv(p.max_seqlen, cfg.BN), Hkv, B)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, pos, freq,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        T, p.softmax_scale, p.softmax_scale * LOG2E, p.attention_scaling,
        BM=cfg.BM, BN=cfg.BN, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )  # fmt: skip

    dq = torch.empty_like(q)
    cfg = attention_config("attention_bwd_dq", arch, dtype, D)
    attention_bwd_dq_kernel[(triton.cdiv(p.max_seqlen, cfg.BM), H, B)](
        q, k, v, do, lse, delta, dq, cu_seqlens, pos, freq,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
        T, p.softmax_scale, p.softmax_scale * LOG2E, p.attention_scaling,
        BM=cfg.BM, BN=cfg.BN, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )  # fmt: skip
    return dq, dk, dv


class VarlenAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, position_ids, inv_freq, params: AttentionParams):
        o, lse = attention_fwd(q, k, v, cu_seqlens, position_ids, inv_freq, params)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens, position_ids, inv_freq)
        ctx.params = params
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens, position_ids, inv_freq = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, cu_seqlens, position_ids, inv_freq, ctx.params)
        return dq, dk, dv, None, None, None, None


def varlen_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    max_seqlen: int,
    causal: bool,
    softmax_scale: float,
    position_ids: torch.Tensor | None,
    inv_freq: torch.Tensor | None,
    attention_scaling: float,
) -> torch.Tensor:
    """Triton path (arguments already validated by the public function)."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    params = AttentionParams(int(max_seqlen), bool(causal), float(softmax_scale), float(attention_scaling))
    return VarlenAttentionFunction.apply(q, k, v, cu_seqlens, position_ids, inv_freq, params)


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs for `python -m lr_kernels.report`


_CONSTEXPR_ARGS = {"HALF", "D", "GROUP", "BM", "BN", "BH", "BDV", "CAUSAL", "HAS_ROPE", "DOT_PREC"}


def _signature(kernel: str, dtype: str) -> dict[str, str]:
    fn = _KERNEL_FNS[kernel]
    ptr = _TRITON_PTR[dtype]
    special = {
        "LSE": "*fp32", "DELTA": "*fp32", "CU": "*i32", "POS": "*i64", "INV_FREQ": "*fp32",
        "T": "i32", "qk_scale": "fp32", "sm_scale": "fp32", "rope_scaling": "fp32",
    }  # fmt: skip
    sig = {}
    for name in fn.arg_names:
        if name in _CONSTEXPR_ARGS:
            sig[name] = "constexpr"
        elif name in special:
            sig[name] = special[name]
        elif name.startswith("stride_"):
            sig[name] = "i32"
        else:
            sig[name] = ptr  # Q, K, V, O, DO, DQ, DK, DV
    return sig


def report_specs(arch: int) -> list[KernelSpec]:
    """Every configuration we ship for compute capability ``arch``, as launched for causal attention
    with RoPE fused and a GQA group of 4 (Llama-3-8B style): fp16/bf16 at head dims 64, 80 and 128,
    plus the forward at head dim 256. The head-dim-256 backward configs still spill registers (the
    smallest tiles leave ~100-240 B) and are left out of the zero-spill report on purpose.
    """
    specs = []
    for dtype in ("fp16", "bf16"):
        for head_dim in (64, 80, 128, 256):
            BH, BDV = block_dims(head_dim)
            for kernel in KERNELS:
                if head_dim == 256 and kernel != "attention_fwd":
                    continue
                cfg = attention_config(kernel, arch, dtype, head_dim)
                if kernel == "attention_bwd_preprocess":
                    constexprs = {"D": head_dim, "BM": cfg.BM, "BDV": BDV}
                    extra = {"BM": cfg.BM}
                else:
                    constexprs = {
                        "HALF": head_dim // 2, "D": head_dim, "GROUP": 4, "BM": cfg.BM, "BN": cfg.BN,
                        "BH": BH, "BDV": BDV, "CAUSAL": True, "HAS_ROPE": True,
                        "DOT_PREC": _dot_precision(dtype),
                    }  # fmt: skip
                    extra = {"BM": cfg.BM, "BN": cfg.BN}
                specs.append(
                    KernelSpec(
                        kernel=kernel,
                        fn=_KERNEL_FNS[kernel],
                        signature=_signature(kernel, dtype),
                        constexprs=constexprs,
                        arch=arch,
                        dtype=dtype,
                        head_dim=head_dim,
                        num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages,
                        extra=extra,
                        matmul=kernel != "attention_bwd_preprocess",
                    )
                )
    return specs


def divisibility_attrs(spec: KernelSpec) -> dict[tuple[int, ...], list[list[Any]]]:
    """``ASTSource(attrs=...)`` matching what Triton's launcher specializes for real calls: every pointer
    is 16-byte aligned and every stride a multiple of 16 elements (true whenever D % 16 == 0). Without
    these hints the compile report would describe scalar, unvectorized loads that no launch produces."""
    return {
        (i,): [["tt.divisibility", 16]]
        for i, (name, ty) in enumerate(spec.signature.items())
        if ty.startswith("*") or name.startswith("stride_")
    }


_KERNEL_FNS = {
    "attention_fwd": attention_fwd_kernel,
    "attention_bwd_preprocess": attention_bwd_preprocess_kernel,
    "attention_bwd_dkdv": attention_bwd_dkdv_kernel,
    "attention_bwd_dq": attention_bwd_dq_kernel,
}

__all__ = ["attention_config", "divisibility_attrs", "report_specs", "varlen_attention_triton"]
