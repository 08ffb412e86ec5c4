"""Varlen FlashAttention-2 with RoPE from arbitrary position ids (Triton), forward and backward.

Layout: q [T, H, D], k/v [T, Hkv, D] packed, sequences delimited by int32 cu_seqlens [B+1].
Every kernel grid is (tiles of the longest sequence, heads, sequences); tiles past the end of their
sequence exit at once, so no host sync is needed to build the grid.

Where the rotation happens (chosen by compiling each candidate for sm_80/sm_90 and counting the SASS of
the main loop; docs/attention.md has the numbers). A tile that a program keeps for its whole life is
rotated in registers once, in the prologue; a tile that streams through the main loop is read already
rotated, so the main loops are instruction for instruction those of plain attention:

- forward: q is resident and rotated in the prologue; k streams, so the launcher first rotates k once
  with the RoPE kernel into a temporary [T, Hkv, D] (a quarter of q's size with Llama-3's 4:1 GQA),
  freed when the forward returns. Nothing rotated is saved for the backward.
- backward: the launcher rotates q into the buffer that becomes dq and k into a temporary. dk/dv reads
  the rotated q tiles; dq reads its own rotated q tile, accumulates in the rotated frame and writes the
  gradient, rotated back to the input frame, over that same tile (a program touches only its own
  rows, so the in-place write is safe). dk is rotated back in the dk/dv epilogue the same way.

Angles always come from ``rope_angle`` (exact splitting, within 3e-6 rad of float64 up to 2**28) and
``rope_cos_sin``, in the kernels here and in the RoPE kernel, so every rotation is the same function.
``attention_scaling`` multiplies cos and sin, i.e. scales q and k each, as Hugging Face applies it.

Half head dims are padded to a power of two >= 16 (masked), which is how D = 80 or 96 work. Row offsets
are int64, so T * H * D may exceed 2**31. float32 inputs use IEEE dots (no TF32). The log-sum-exp saved
for the backward is in log2 units, so the backward rebuilds exactly the forward's exponent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lr_kernels._compile import ReportCase, device_arch
from lr_kernels.rope.fused import rope_fwd, rope_table

LOG2E = 1.4426950408889634

# CUDA caps the grid's z dimension (our sequence index) at 65535. Longer batches are launched in chunks of
# this many sequences; a multiple of 4 keeps each chunk's view of cu_seqlens 16-byte aligned, so every
# chunk compiles to the same aligned specialization as a single launch.
SEQS_PER_LAUNCH = 65532


@triton.jit
def _tile_mask(m_rows, offs_cols, N_COLS: tl.constexpr, BC: tl.constexpr):
    # Column predicates only when the head dim is padded; unpadded tiles get a per-row mask.
    if N_COLS == BC:
        return m_rows[:, None]
    else:
        return m_rows[:, None] & (offs_cols < N_COLS)[None, :]


@triton.jit
def _seq_bounds(CU, i_b):
    seq_start = tl.load(CU + i_b)
    return seq_start, tl.load(CU + i_b + 1) - seq_start


@triton.jit
def _half_ptrs(X, rows, head, stride_t, stride_h, offs_h):
    # [R, BH] pointers to the first half of the head dim; the second half is at + HALF.
    return X + rows[:, None] * stride_t + head.to(tl.int64) * stride_h + offs_h[None, :]


@triton.jit
def _rope_rotate(b_x1, b_x2, CS, rows, m_rows, offs_h, HALF: tl.constexpr, SIN_SIGN: tl.constexpr):
    # Rotate-half RoPE of the rows' halves in fp32 (SIN_SIGN=-1: the inverse rotation, which maps a
    # gradient in the rotated frame back to the input frame). cos/sin come from the [T, 2, HALF] table
    # (rope_table): computing them here would hold the angle reduction's temporaries on top of the
    # accumulators, and one table row keeps cos and sin under one pointer tile, like the two halves of x.
    p_cs = CS + rows[:, None] * (2 * HALF) + offs_h[None, :]
    m_cs = m_rows[:, None] & (offs_h < HALF)[None, :]
    b_cos = tl.load(p_cs, mask=m_cs, other=0.0)
    b_sin = tl.load(p_cs + HALF, mask=m_cs, other=0.0)
    if SIN_SIGN < 0:
        b_sin = -b_sin
    x1 = b_x1.to(tl.float32)
    x2 = b_x2.to(tl.float32)
    return x1 * b_cos - x2 * b_sin, x2 * b_cos + x1 * b_sin


@triton.jit
def _store_grad_halves(
    DX, b_g1, b_g2, rows, m_rows, head, stride_t, stride_h, offs_h, CS, HALF: tl.constexpr,
    BH: tl.constexpr, HAS_ROPE: tl.constexpr,
):  # fmt: skip
    # Stores a gradient accumulated in the rotated frame. With RoPE it is written, read back in the load
    # layout and rotated back there: rotating the accumulators in place would first move the cos/sin tile
    # into the accumulator layout through shared memory, and that staging raised the kernel's register
    # count by up to 30. The tile is the program's own and still in L1/L2; the barrier makes every
    # thread's writes visible to the threads that read them back.
    p_g = _half_ptrs(DX, rows, head, stride_t, stride_h, offs_h)
    m_g = _tile_mask(m_rows, offs_h, HALF, BH)
    tl.store(p_g, b_g1.to(DX.dtype.element_ty), mask=m_g)
    tl.store(p_g + HALF, b_g2.to(DX.dtype.element_ty), mask=m_g)
    if HAS_ROPE:
        tl.debug_barrier()
        b_r1, b_r2 = _rope_rotate(
            tl.load(p_g, mask=m_g, other=0.0), tl.load(p_g + HALF, mask=m_g, other=0.0), CS, rows, m_rows,
            offs_h, HALF, -1.0,
        )  # fmt: skip
        tl.store(p_g, b_r1.to(DX.dtype.element_ty), mask=m_g)
        tl.store(p_g + HALF, b_r2.to(DX.dtype.element_ty), mask=m_g)


@triton.jit
def attention_fwd_kernel(
    Q,
    K,
    V,
    OUT,
    LSE,
    CU,
    CS,
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
    # With HAS_ROPE, K holds keys already rotated (by the launcher); only the resident q tile is rotated.
    # Longest-first: with causal masking the last query tiles of a sequence carry the most work.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_h = tl.program_id(1)
    seq_start, L = _seq_bounds(CU, tl.program_id(2))
    start_m = pid_m * BM
    if start_m >= L:
        return
    i_hk = i_h // GROUP

    offs_m = start_m + tl.arange(0, BM)
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BDV)
    m_m = offs_m < L
    rows_m = (seq_start + offs_m).to(tl.int64)

    p_q = _half_ptrs(Q, rows_m, i_h, stride_qt, stride_qh, offs_h)
    m_q = _tile_mask(m_m, offs_h, HALF, BH)
    b_q1 = tl.load(p_q, mask=m_q, other=0.0)
    b_q2 = tl.load(p_q + HALF, mask=m_q, other=0.0)
    if HAS_ROPE:
        r_q1, r_q2 = _rope_rotate(b_q1, b_q2, CS, rows_m, m_m, offs_h, HALF, 1.0)
        b_q1 = r_q1.to(Q.dtype.element_ty)
        b_q2 = r_q2.to(Q.dtype.element_ty)

    b_m = tl.full([BM], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BDV], dtype=tl.float32)
    p_k0 = K + seq_start.to(tl.int64) * stride_kt + i_hk.to(tl.int64) * stride_kh
    p_v0 = V + seq_start.to(tl.int64) * stride_vt + i_hk.to(tl.int64) * stride_vh
    end_n = tl.minimum(L, start_m + BM) if CAUSAL else L
    for start_n in range(0, end_n, BN):
        offs_n = start_n + tl.arange(0, BN)
        m_n = offs_n < L
        p_k = p_k0 + offs_n[:, None].to(tl.int64) * stride_kt + offs_h[None, :]
        m_k = _tile_mask(m_n, offs_h, HALF, BH)
        b_k1 = tl.load(p_k, mask=m_k, other=0.0)
        b_k2 = tl.load(p_k + HALF, mask=m_k, other=0.0)
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
        p_v = p_v0 + offs_n[:, None].to(tl.int64) * stride_vt + offs_d[None, :]
        b_v = tl.load(p_v, mask=_tile_mask(m_n, offs_d, D, BDV), other=0.0)
        # [BM, BN] @ [BN, BDV] -> [BM, BDV]
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None], input_precision=DOT_PREC)
        b_m = b_m_new

    b_acc = b_acc / b_l[:, None]
    p_o = OUT + rows_m[:, None] * stride_ot + i_h.to(tl.int64) * stride_oh + offs_d[None, :]
    tl.store(p_o, b_acc.to(OUT.dtype.element_ty), mask=_tile_mask(m_m, offs_d, D, BDV))
    # log2-domain logsumexp of the scaled scores (b_m is in log2 units): the backward's exponent
    # s * qk_scale - lse then reproduces the forward's exactly.
    tl.store(LSE + i_h.to(tl.int64) * T + rows_m, b_m + tl.log2(b_l), mask=m_m)


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
    i_h = tl.program_id(1).to(tl.int64)
    rows = (i_t * BM + tl.arange(0, BM)).to(tl.int64)
    offs_d = tl.arange(0, BDV)
    m_t = rows < T
    m = _tile_mask(m_t, offs_d, D, BDV)
    b_o = tl.load(OUT + rows[:, None] * stride_ot + i_h * stride_oh + offs_d[None, :], mask=m, other=0.0)
    b_do = tl.load(DO + rows[:, None] * stride_dot + i_h * stride_doh + offs_d[None, :], mask=m, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    tl.store(DELTA + i_h * T + rows, b_delta, mask=m_t)


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
    CS,
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
    # With HAS_ROPE, Q and K hold rotated queries and keys; dk is rotated back in the epilogue.
    # One program owns a key/value tile of one kv head and accumulates over every query head of its
    # GQA group in registers: no atomics, no per-head partial buffers, deterministic sums.
    # Causal: key tile 0 is seen by every query tile, so ascending program ids run longest-first.
    pid_n = tl.program_id(0)
    i_hk = tl.program_id(1)
    seq_start, L = _seq_bounds(CU, tl.program_id(2))
    start_n = pid_n * BN
    if start_n >= L:
        return

    offs_n = start_n + tl.arange(0, BN)
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BDV)
    m_n = offs_n < L
    rows_n = (seq_start + offs_n).to(tl.int64)

    p_k = _half_ptrs(K, rows_n, i_hk, stride_kt, stride_kh, offs_h)
    m_k = _tile_mask(m_n, offs_h, HALF, BH)
    b_k1 = tl.load(p_k, mask=m_k, other=0.0)
    b_k2 = tl.load(p_k + HALF, mask=m_k, other=0.0)
    m_nd = _tile_mask(m_n, offs_d, D, BDV)
    p_v = V + rows_n[:, None] * stride_vt + i_hk.to(tl.int64) * stride_vh + offs_d[None, :]
    b_v = tl.load(p_v, mask=m_nd, other=0.0)

    b_dk1 = tl.zeros([BN, BH], dtype=tl.float32)
    b_dk2 = tl.zeros([BN, BH], dtype=tl.float32)
    b_dv = tl.zeros([BN, BDV], dtype=tl.float32)
    # Causal: the first query tile that can see any key of this tile.
    lo = (start_n // BM) * BM if CAUSAL else 0
    n_tiles = tl.cdiv(L - lo, BM)
    # One flat loop over (query tile, head of the group): a nested head loop made ptxas's register
    # allocation collapse (32 registers, kilobytes of spills).
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
        p_q = _half_ptrs(Q, rows_m, i_h, stride_qt, stride_qh, offs_h)
        b_q1 = tl.load(p_q, mask=m_q, other=0.0)
        b_q2 = tl.load(p_q + HALF, mask=m_q, other=0.0)
        p_do = DO + rows_m[:, None] * stride_dot + i_h.to(tl.int64) * stride_doh + offs_d[None, :]
        b_do = tl.load(p_do, mask=_tile_mask(m_m, offs_d, D, BDV), other=0.0)
        b_lse = tl.load(LSE + i_h.to(tl.int64) * T + rows_m, mask=m_m, other=0.0)
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

    p_dv = DV + rows_n[:, None] * stride_dvt + i_hk.to(tl.int64) * stride_dvh + offs_d[None, :]
    tl.store(p_dv, b_dv.to(DV.dtype.element_ty), mask=m_nd)
    b_dk1 = b_dk1 * sm_scale
    b_dk2 = b_dk2 * sm_scale
    _store_grad_halves(
        DK, b_dk1, b_dk2, rows_n, m_n, i_hk, stride_dkt, stride_dkh, offs_h, CS, HALF, BH, HAS_ROPE
    )  # fmt: skip


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
    CS,
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
    # With HAS_ROPE, Q and K hold rotated queries and keys (Q may be DQ's own buffer); dq is rotated back
    # in the epilogue.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_h = tl.program_id(1)
    seq_start, L = _seq_bounds(CU, tl.program_id(2))
    start_m = pid_m * BM
    if start_m >= L:
        return
    i_hk = i_h // GROUP

    offs_m = start_m + tl.arange(0, BM)
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BDV)
    m_m = offs_m < L
    rows_m = (seq_start + offs_m).to(tl.int64)

    p_q = _half_ptrs(Q, rows_m, i_h, stride_qt, stride_qh, offs_h)
    m_q = _tile_mask(m_m, offs_h, HALF, BH)
    b_q1 = tl.load(p_q, mask=m_q, other=0.0)
    b_q2 = tl.load(p_q + HALF, mask=m_q, other=0.0)
    p_do = DO + rows_m[:, None] * stride_dot + i_h.to(tl.int64) * stride_doh + offs_d[None, :]
    b_do = tl.load(p_do, mask=_tile_mask(m_m, offs_d, D, BDV), other=0.0)
    b_lse = tl.load(LSE + i_h.to(tl.int64) * T + rows_m, mask=m_m, other=0.0)
    b_delta = tl.load(DELTA + i_h.to(tl.int64) * T + rows_m, mask=m_m, other=0.0)

    b_dq1 = tl.zeros([BM, BH], dtype=tl.float32)
    b_dq2 = tl.zeros([BM, BH], dtype=tl.float32)
    p_k0 = K + seq_start.to(tl.int64) * stride_kt + i_hk.to(tl.int64) * stride_kh
    p_v0 = V + seq_start.to(tl.int64) * stride_vt + i_hk.to(tl.int64) * stride_vh
    end_n = tl.minimum(L, start_m + BM) if CAUSAL else L
    for start_n in range(0, end_n, BN):
        offs_n = start_n + tl.arange(0, BN)
        m_n = offs_n < L
        p_k = p_k0 + offs_n[:, None].to(tl.int64) * stride_kt + offs_h[None, :]
        m_k = _tile_mask(m_n, offs_h, HALF, BH)
        b_k1 = tl.load(p_k, mask=m_k, other=0.0)
        b_k2 = tl.load(p_k + HALF, mask=m_k, other=0.0)
        p_v = p_v0 + offs_n[:, None].to(tl.int64) * stride_vt + offs_d[None, :]
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
    _store_grad_halves(
        DQ, b_dq1, b_dq2, rows_m, m_m, i_h, stride_dqt, stride_dqh, offs_h, CS, HALF, BH, HAS_ROPE
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Configuration: the launchers (and so the compile report, which runs them) go through attention_config.

_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
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


# Tuned with `python -m lr_kernels.report --check` (zero spills, tensor cores, launch-identical builds)
# for fp16/bf16. Keys: (arch family, head-dim class) -> (BM, BN, num_warps, num_stages). The main loops
# carry no RoPE work, so these are the tiles of plain attention.
_TUNED = {
    "attention_fwd": {
        (80, 64): (128, 64, 8, 2),
        (80, 128): (64, 64, 8, 2),
        (80, 256): (32, 32, 8, 2),
        (90, 64): (128, 64, 8, 2),
        (90, 128): (64, 64, 8, 2),
        (90, 256): (32, 32, 8, 2),
    },
    "attention_bwd_dkdv": {
        (80, 64): (16, 128, 8, 2),
        (80, 128): (16, 32, 4, 2),
        (80, 256): (16, 16, 4, 1),
        (90, 64): (32, 128, 8, 2),
        (90, 128): (16, 64, 8, 2),
        (90, 256): (16, 16, 4, 1),
    },
    "attention_bwd_dq": {
        (80, 64): (64, 16, 4, 2),
        (80, 128): (32, 32, 4, 2),
        (80, 256): (16, 16, 4, 2),
        (90, 64): (128, 32, 8, 2),
        (90, 128): (64, 32, 8, 2),
        (90, 256): (16, 16, 4, 2),
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


def _seq_chunks(cu_seqlens: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """(cu_seqlens view, number of sequences) per launch, each within the grid's z limit."""
    B = cu_seqlens.numel() - 1
    return [(cu_seqlens[s:], min(SEQS_PER_LAUNCH, B - s)) for s in range(0, B, SEQS_PER_LAUNCH)]


def _cos_sin(cu_seqlens, position_ids, inv_freq, p: AttentionParams) -> torch.Tensor:
    if position_ids is None:
        return cu_seqlens  # never read (HAS_ROPE=False); any valid pointer does
    return rope_table(position_ids, inv_freq, p.attention_scaling)


def _launch_per_chunk(
    kernel: Callable, grid_xy: tuple[int, int], cu_seqlens: torch.Tensor, make_args: Callable, **kw
) -> None:
    # CU is the kernels' only per-sequence input; every other argument is indexed by global token rows.
    for cu, n in _seq_chunks(cu_seqlens):
        kernel[(*grid_xy, n)](*make_args(cu), **kw)


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_ids: torch.Tensor | None,
    inv_freq: torch.Tensor | None,
    p: AttentionParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H, D], k/v [T, Hkv, D] (last dim contiguous) -> (o [T, H, D], lse fp32 [H, T], log2 units).

    With RoPE, k is rotated into a temporary first (the kernel rotates q itself); the temporary is freed
    on return.
    """
    T, H, D = q.shape
    Hkv = k.shape[1]
    dtype = _DTYPE_NAMES[q.dtype]
    cfg = attention_config("attention_fwd", device_arch(q), dtype, D)
    BH, BDV = block_dims(D)
    has_rope = position_ids is not None
    if has_rope:
        k = rope_fwd(k, position_ids, inv_freq, p.attention_scaling)
    cs = _cos_sin(cu_seqlens, position_ids, inv_freq, p)
    o = torch.empty_like(q)
    lse = torch.empty((H, T), dtype=torch.float32, device=q.device)
    _launch_per_chunk(
        attention_fwd_kernel, (triton.cdiv(p.max_seqlen, cfg.BM), H), cu_seqlens,
        lambda cu: (q, k, v, o, lse, cu, cs, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                    v.stride(0), v.stride(1), o.stride(0), o.stride(1), T, p.softmax_scale * LOG2E),
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
    """Gradients (dq [T, H, D], dk [T, Hkv, D], dv [T, Hkv, D]) w.r.t. the un-rotated q, k, v.

    With RoPE, q is rotated into the buffer that becomes dq and k into a temporary: the kernels' loops then
    read rotated tiles, and only their epilogues rotate dq and dk back.
    """
    T, H, D = q.shape
    Hkv = k.shape[1]
    dtype = _DTYPE_NAMES[q.dtype]
    arch = device_arch(q)
    BH, BDV = block_dims(D)
    do = do if do.stride(-1) == 1 else do.contiguous()
    has_rope = position_ids is not None
    cs = _cos_sin(cu_seqlens, position_ids, inv_freq, p)
    common = dict(
        HALF=D // 2, D=D, GROUP=H // Hkv, BH=BH, BDV=BDV, CAUSAL=p.causal, HAS_ROPE=has_rope,
        DOT_PREC=_dot_precision(dtype),
    )  # fmt: skip
    qk_scale = p.softmax_scale * LOG2E

    delta = torch.empty((H, T), dtype=torch.float32, device=q.device)
    cfg = attention_config("attention_bwd_preprocess", arch, dtype, D)
    attention_bwd_preprocess_kernel[(triton.cdiv(T, cfg.BM), H)](
        o, do, delta, o.stride(0), o.stride(1), do.stride(0), do.stride(1), T,
        D=D, BM=cfg.BM, BDV=BDV, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip

    if has_rope:
        k = rope_fwd(k, position_ids, inv_freq, p.attention_scaling)
        dq = q = rope_fwd(q, position_ids, inv_freq, p.attention_scaling)
    else:
        dq = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)

    cfg = attention_config("attention_bwd_dkdv", arch, dtype, D)
    _launch_per_chunk(
        attention_bwd_dkdv_kernel, (triton.cdiv(p.max_seqlen, cfg.BN), Hkv), cu_seqlens,
        lambda cu: (q, k, v, do, lse, delta, dk, dv, cu, cs,
                    q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                    do.stride(0), do.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
                    T, p.softmax_scale, qk_scale),
        BM=cfg.BM, BN=cfg.BN, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )  # fmt: skip

    # Runs after dk/dv, which reads every rotated q tile that this kernel overwrites with dq (with RoPE).
    cfg = attention_config("attention_bwd_dq", arch, dtype, D)
    _launch_per_chunk(
        attention_bwd_dq_kernel, (triton.cdiv(p.max_seqlen, cfg.BM), H), cu_seqlens,
        lambda cu: (q, k, v, do, lse, delta, dq, cu, cs,
                    q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                    do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
                    T, p.softmax_scale, qk_scale),
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
# Representative launches for `python -m lr_kernels.report`, which runs them against a stand-in GPU so
# that Triton specializes and builds each kernel exactly as a real launch would.

REPORT_HEAD_DIMS = (64, 80, 128, 256)
REPORT_TOKENS = 4096  # two sequences of 2048: every pointer, stride and T divisible by 16, as in training


def report_case_inputs(
    dtype: torch.dtype, head_dim: int, group: int, rope: bool, tokens: int = REPORT_TOKENS, heads: int = 32
) -> tuple:
    """Small CPU stand-ins for one attention call: (q, k, v, cu_seqlens, position_ids, inv_freq)."""
    hkv = heads // group
    q = torch.zeros(tokens, heads, head_dim, dtype=dtype)
    k = torch.zeros(tokens, hkv, head_dim, dtype=dtype)
    v = torch.zeros(tokens, hkv, head_dim, dtype=dtype)
    half = tokens // 2
    cu = torch.tensor([0, half, tokens], dtype=torch.int32)
    pos = torch.arange(tokens, dtype=torch.int64) if rope else None
    freq = torch.ones(head_dim // 2, dtype=torch.float32) if rope else None
    return q, k, v, cu, pos, freq


def report_launch(
    dtype: torch.dtype, head_dim: int, group: int, causal: bool, rope: bool, tokens: int = REPORT_TOKENS
) -> Callable[[], None]:
    """A forward and a backward call of the launchers, as autograd would make them."""

    def launch() -> None:
        q, k, v, cu, pos, freq = report_case_inputs(dtype, head_dim, group, rope, tokens)
        p = AttentionParams(
            max_seqlen=tokens, causal=causal, softmax_scale=head_dim**-0.5, attention_scaling=1.0
        )
        o, lse = attention_fwd(q, k, v, cu, pos, freq, p)
        attention_bwd(torch.zeros_like(o), q, k, v, o, lse, cu, pos, freq, p)

    return launch


def report_cases(arch: int) -> list[ReportCase]:
    """Causal attention at GQA 4:1 (Llama-3-8B), fp16 and bf16, each head dim we tune, with RoPE fused
    and without it (the baseline of ``loop_ratio``)."""
    cases = []
    for dtype in (torch.float16, torch.bfloat16):
        for head_dim in REPORT_HEAD_DIMS:
            for rope in (True, False):
                cases.append(
                    ReportCase(
                        name=f"attention {_DTYPE_NAMES[dtype]} D={head_dim} GQA4 causal rope={rope}",
                        launch=report_launch(dtype, head_dim, 4, True, rope),
                        dtype=_DTYPE_NAMES[dtype],
                        head_dim=head_dim,
                        rope=rope,
                        matmul=frozenset({"attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq"}),
                    )
                )
    return cases


__all__ = ["attention_config", "report_cases", "varlen_attention_triton"]
