"""Triton kernels for the softmax / loss / logits-gradient part of the chunked linear cross-entropy.

The matmuls around them stay cuBLAS GEMMs (driven by ``chunked.linear_ce_chunked``); these kernels do the
memory-bound part on one fp32 logits chunk ``[c, V]``: one program per token row, an online
logsumexp over vocabulary blocks, then a second sweep that overwrites the row with its gradient (or writes
it to a separate low-precision buffer that feeds the next GEMM directly).

Read order: kernels → config selection → launchers (the ``step`` contract of ``chunked.py``) →
``report_cases`` for ``python -m lr_kernels.report``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from lr_kernels._compile import ReportCase


@triton.jit
def _tanh(x):
    # exp of a non-positive argument only, so large |x| saturates to +-1 instead of overflowing.
    e = tl.exp(-2.0 * tl.abs(x))
    # 2-ulp division is plenty for a tanh and skips the IEEE division's slow-path branch
    t = tl.fdiv(1.0 - e, 1.0 + e, ieee_rounding=False)
    return tl.where(x >= 0, t, -t)


@triton.jit
def linear_ce_fwd_kernel(
    Z,
    DZ,
    TGT,
    LOSS,
    SCALE,
    stride_z,
    stride_dz,
    stride_scale,
    V,
    ignore_index,
    eps,
    eps_per_class,
    softcap,
    inv_softcap,
    HAS_SOFTCAP: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    BV: tl.constexpr,
):
    """One token row: loss (and, with COMPUTE_GRAD, the scaled logits gradient) of fp32 logits Z[row, :V]."""
    row = tl.program_id(0).to(tl.int64)
    p_z = Z + row * stride_z
    tgt = tl.load(TGT + row).to(tl.int64)
    valid = tgt != ignore_index
    safe_t = tl.where(valid, tgt, 0)

    b_m = tl.full((), float("-inf"), tl.float32)
    b_s = tl.zeros((), tl.float32)
    b_zsum = tl.zeros((), tl.float32)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_z = tl.load(p_z + o_v, mask=m_v, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            b_z = softcap * _tanh(b_z * inv_softcap)
        b_z = tl.where(m_v, b_z, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_z, axis=0))
        b_s = b_s * tl.exp(b_m - b_m_new) + tl.sum(tl.exp(b_z - b_m_new), axis=0)
        b_m = b_m_new
        if HAS_SMOOTHING:
            b_zsum += tl.sum(tl.where(m_v, b_z, 0.0), axis=0)
    b_lse = b_m + tl.log(b_s)

    b_zt = tl.load(p_z + safe_t).to(tl.float32)
    if HAS_SOFTCAP:
        b_zt = softcap * _tanh(b_zt * inv_softcap)
    b_loss = b_lse - (1.0 - eps) * b_zt
    if HAS_SMOOTHING:
        b_loss -= eps_per_class * b_zsum
    tl.store(LOSS + row, tl.where(valid, b_loss, 0.0))

    if COMPUTE_GRAD:
        if HAS_SCALE:
            b_scale = tl.load(SCALE + row * stride_scale).to(tl.float32)
        else:
            b_scale = tl.full((), 1.0, tl.float32)
        # where, not a multiply by 0: an ignored row must come out exactly 0 even with an inf/nan scale.
        b_scale = tl.where(valid, b_scale, 0.0)
        p_dz = DZ + row * stride_dz
        for v0 in range(0, V, BV):
            o_v = v0 + tl.arange(0, BV)
            m_v = o_v < V
            b_z = tl.load(p_z + o_v, mask=m_v, other=0.0).to(tl.float32)
            if HAS_SOFTCAP:
                b_u = _tanh(b_z * inv_softcap)
                b_z = softcap * b_u
            b_g = tl.exp(b_z - b_lse) - tl.where(o_v == safe_t, 1.0 - eps, 0.0)
            if HAS_SMOOTHING:
                b_g -= eps_per_class
            if HAS_SOFTCAP:
                b_g *= 1.0 - b_u * b_u
            tl.store(p_dz + o_v, (b_g * b_scale).to(DZ.dtype.element_ty), mask=m_v)


@triton.jit
def token_entropy_kernel(
    Z,
    ENT,
    stride_z,
    V,
    softcap,
    inv_softcap,
    HAS_SOFTCAP: tl.constexpr,
    BV: tl.constexpr,
):
    """One token row: entropy ``lse - sum_j p_j z_j`` of fp32 logits Z[row, :V], one online sweep."""
    row = tl.program_id(0).to(tl.int64)
    p_z = Z + row * stride_z
    b_m = tl.full((), float("-inf"), tl.float32)
    b_s = tl.zeros((), tl.float32)
    # b_w = sum_j exp(z_j - m) (z_j - m): relative to the running max, so H = log(s) - w / s has no
    # cancellation between two large terms (lse - E[z]) when the logits are large.
    b_w = tl.zeros((), tl.float32)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_z = tl.load(p_z + o_v, mask=m_v, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            b_z = softcap * _tanh(b_z * inv_softcap)
        b_m_new = tl.maximum(b_m, tl.max(tl.where(m_v, b_z, float("-inf")), axis=0))
        b_d = tl.where(m_v, b_z - b_m_new, 0.0)
        b_e = tl.where(m_v, tl.exp(b_d), 0.0)
        b_alpha = tl.exp(b_m - b_m_new)
        b_m_old = tl.where(b_s > 0, b_m, b_m_new)  # first block: nothing to shift, and no 0 * -inf
        b_w = b_alpha * (b_w + b_s * (b_m_old - b_m_new)) + tl.sum(b_e * b_d, axis=0)
        b_s = b_s * b_alpha + tl.sum(b_e, axis=0)
        b_m = b_m_new
    tl.store(ENT + row, tl.log(b_s) - b_w / b_s)


def ce_kernel_config(vocab: int) -> tuple[int, int]:
    """(BV, num_warps) for a vocabulary size: blocks of up to 2048 logits, 8 fp32 per thread.

    Checked with ptxas for sm_80 and sm_90: 4096-wide blocks (16 or 8 per thread) spill in the softcap
    variant because ptxas caps registers for occupancy; 2048 stays at <= 40 registers with no stack, and a
    128k vocabulary is still only 63 iterations per sweep.
    """
    BV = max(16, min(2048, triton.next_power_of_2(vocab)))
    num_warps = max(1, min(16, BV // 256))
    return BV, num_warps


def ce_chunk_triton(
    z: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    row_scale: torch.Tensor | None,
    compute_grad: bool,
    dz_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Triton step (contract in ``chunked.py``): z fp32 [c, V] → loss fp32 [c], gradient in z/dz_out."""
    c, V = z.shape
    loss = torch.empty(c, dtype=torch.float32, device=z.device)
    if c == 0:
        return loss, (dz_out if dz_out is not None else z) if compute_grad else None
    dz = dz_out if dz_out is not None else z
    scale = row_scale.to(torch.float32).contiguous() if row_scale is not None else None
    BV, num_warps = ce_kernel_config(V)
    linear_ce_fwd_kernel[(c,)](
        z,
        dz,
        targets.contiguous(),
        loss,
        scale if scale is not None else loss,
        z.stride(0),
        dz.stride(0),
        scale.stride(0) if scale is not None and scale.dim() > 0 else 0,
        V,
        ignore_index,
        float(label_smoothing),
        float(label_smoothing) / V,
        float(softcap) if softcap is not None else 1.0,
        1.0 / float(softcap) if softcap is not None else 1.0,
        HAS_SOFTCAP=softcap is not None,
        HAS_SMOOTHING=label_smoothing > 0.0,
        HAS_SCALE=scale is not None,
        COMPUTE_GRAD=compute_grad,
        BV=BV,
        num_warps=num_warps,
    )
    return loss, dz if compute_grad else None


def entropy_chunk_triton(z: torch.Tensor, *, softcap: float | None) -> torch.Tensor:
    """Entropy fp32 [c] of each row of the fp32 logits chunk z [c, V]."""
    c, V = z.shape
    ent = torch.empty(c, dtype=torch.float32, device=z.device)
    if c == 0:
        return ent
    BV, num_warps = ce_kernel_config(V)
    token_entropy_kernel[(c,)](
        z,
        ent,
        z.stride(0),
        V,
        float(softcap) if softcap is not None else 1.0,
        1.0 / float(softcap) if softcap is not None else 1.0,
        HAS_SOFTCAP=softcap is not None,
        BV=BV,
        num_warps=num_warps,
    )
    return ent


_TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_REPORT_ROWS = 16


def _report_launch(dtype: torch.dtype, vocab: int, variant: str) -> Callable[[], None]:
    def launch() -> None:
        z = torch.zeros(_REPORT_ROWS, vocab, dtype=torch.float32)
        targets = torch.zeros(_REPORT_ROWS, dtype=torch.int64)
        # fp32 gradients overwrite the logits in place; fp16/bf16 ones go to a buffer feeding the next GEMM.
        dz = None if dtype == torch.float32 else torch.zeros(_REPORT_ROWS, vocab, dtype=dtype)
        if variant == "entropy":
            entropy_chunk_triton(z, softcap=None)
            return
        full = variant == "softcap+smoothing+scale"
        ce_chunk_triton(
            z, targets, ignore_index=-100, label_smoothing=0.1 if full else 0.0,
            softcap=30.0 if full else None, row_scale=torch.ones(_REPORT_ROWS) if full else None,
            compute_grad=variant != "forward only", dz_out=dz,
        )  # fmt: skip

    return launch


def report_cases(arch: int, vocab: int = 128256) -> list[ReportCase]:
    """The chunk kernels as the launchers above run them for ``vocab`` (Llama-3's by default): with the
    gradient (per gradient dtype), with every option on, forward only, and the entropy kernel."""
    cases = []
    for dtype, name in _TORCH_TO_TRITON.items():
        variants = ["gradient", "softcap+smoothing+scale"]
        if dtype == torch.float32:
            variants += ["forward only", "entropy"]  # no gradient buffer: one dtype covers them
        for variant in variants:
            cases.append(
                ReportCase(
                    name=f"cross-entropy {name} V={vocab} {variant}",
                    launch=_report_launch(dtype, vocab, variant),
                    dtype=name,
                    extra={"vocab": vocab, "variant": variant},
                )
            )
    return cases
