"""Triton RoPE kernels: forward and backward rotation of ``x [T, H, D]`` by arbitrary int64 positions.

Both directions are the same rotation; the backward rotates by the negative angle (the transpose of a
rotation is its inverse), so both kernels share one body with the sign of ``sin`` as a constexpr.
Angles are formed in-kernel with ``rope_angle`` (within 6e-7 rad of float64 below position 2**25,
3e-6 rad up to the 2**28 - 1 limit) and turned into cos/sin by ``rope_cos_sin``, once per token block,
then reused for every head the program handles.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from lr_kernels._compile import ReportCase
from lr_kernels.rope.angles import rope_angle, rope_cos_sin

# One [BT, BHALF] tile of 1024 elements over 8 warps is 4 values per thread per operand: 48 registers on
# sm_80 and 60-64 on sm_90 for every head dim 16..256 (2048 elements or 4 warps need 93-200), so enough
# warps stay resident to hide memory latency in this bandwidth-bound kernel. Heads per program amortise
# the angle and sin/cos work, which costs more than the rotation itself.
_TILE_ELEMS = 1024
_HEADS_PER_PROGRAM = 4
_NUM_WARPS = 8


@triton.jit
def _rope_rotate(
    X,
    P,
    F,
    Y,
    T,
    H,
    stride_xt,
    stride_xh,
    stride_yt,
    stride_yh,
    scaling,
    SIN_SIGN: tl.constexpr,
    HALF: tl.constexpr,
    BT: tl.constexpr,
    BHALF: tl.constexpr,
    HPP: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_h = tl.program_id(1)
    # int64 token offsets: T * stride_xt passes 2**31 at 128k tokens x 32 heads x 128.
    offs_t = pid_t.to(tl.int64) * BT + tl.arange(0, BT)
    offs_d = tl.arange(0, BHALF)
    m_t = offs_t < T
    m_d = offs_d < HALF

    b_pos = tl.load(P + offs_t, mask=m_t, other=0)  # int64 [BT]
    b_f = tl.load(F + offs_d, mask=m_d, other=0.0)  # fp32 [BHALF]
    b_cos, b_sin = rope_cos_sin(rope_angle(b_pos[:, None], b_f[None, :]))  # [BT, BHALF]
    b_cos = b_cos * scaling
    b_sin = b_sin * (scaling * SIN_SIGN)

    for i in tl.static_range(HPP):
        h = pid_h * HPP + i
        h64 = h.to(tl.int64)  # head-major layouts have stride_xh = T * D
        # Folding the head bound into the token bound keeps every mask a block (the interpreter
        # rejects a block mask combined with a scalar one).
        m = (offs_t < tl.where(h < H, T, 0))[:, None] & m_d[None, :]
        p_x1 = X + offs_t[:, None] * stride_xt + h64 * stride_xh + offs_d[None, :]
        p_y1 = Y + offs_t[:, None] * stride_yt + h64 * stride_yh + offs_d[None, :]
        b_x1 = tl.load(p_x1, mask=m, other=0.0).to(tl.float32)
        b_x2 = tl.load(p_x1 + HALF, mask=m, other=0.0).to(tl.float32)
        b_y1 = b_x1 * b_cos - b_x2 * b_sin
        b_y2 = b_x2 * b_cos + b_x1 * b_sin
        tl.store(p_y1, b_y1.to(Y.dtype.element_ty), mask=m)
        tl.store(p_y1 + HALF, b_y2.to(Y.dtype.element_ty), mask=m)


@triton.jit
def rope_fwd_kernel(
    X,
    P,
    F,
    Y,
    T,
    H,
    stride_xt,
    stride_xh,
    stride_yt,
    stride_yh,
    scaling,
    HALF: tl.constexpr,
    BT: tl.constexpr,
    BHALF: tl.constexpr,
    HPP: tl.constexpr,
):
    # out = (x * cos + rotate_half(x) * sin) * scaling
    _rope_rotate(
        X, P, F, Y, T, H, stride_xt, stride_xh, stride_yt, stride_yh, scaling, 1.0, HALF, BT, BHALF, HPP
    )


@triton.jit
def rope_bwd_kernel(
    DY,
    P,
    F,
    DX,
    T,
    H,
    stride_dyt,
    stride_dyh,
    stride_dxt,
    stride_dxh,
    scaling,
    HALF: tl.constexpr,
    BT: tl.constexpr,
    BHALF: tl.constexpr,
    HPP: tl.constexpr,
):
    # dx = rotation of dy by the negative angle, times scaling
    _rope_rotate(
        DY, P, F, DX, T, H, stride_dyt, stride_dyh, stride_dxt, stride_dxh,
        scaling, -1.0, HALF, BT, BHALF, HPP,
    )  # fmt: skip


@triton.jit
def rope_table_kernel(P, F, CS, T, scaling, HALF: tl.constexpr, BT: tl.constexpr, BHALF: tl.constexpr):
    # Row t of the fp32 [T, 2, HALF] table: cos then sin of t's angles, times scaling.
    offs_t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    offs_d = tl.arange(0, BHALF)
    m = (offs_t < T)[:, None] & (offs_d < HALF)[None, :]
    b_pos = tl.load(P + offs_t, mask=offs_t < T, other=0)
    b_f = tl.load(F + offs_d, mask=offs_d < HALF, other=0.0)
    b_cos, b_sin = rope_cos_sin(rope_angle(b_pos[:, None], b_f[None, :]))
    p = CS + offs_t[:, None] * (2 * HALF) + offs_d[None, :]
    tl.store(p, b_cos * scaling, mask=m)
    tl.store(p + HALF, b_sin * scaling, mask=m)


def rope_config(head_dim: int, num_heads: int) -> dict[str, int]:
    """Block sizes for one launch; shared by the launcher and the compile report."""
    half = head_dim // 2
    bhalf = triton.next_power_of_2(half)
    return {
        "HALF": half,
        "BHALF": bhalf,
        "BT": max(1, _TILE_ELEMS // bhalf),
        "HPP": min(num_heads, _HEADS_PER_PROGRAM),
        "num_warps": _NUM_WARPS,
    }


def _rotate(
    kernel: triton.JITFunction,
    x: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_scaling: float,
) -> torch.Tensor:
    T, H, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((T, H, D), dtype=x.dtype, device=x.device)
    if T == 0 or H == 0:
        return out
    cfg = rope_config(D, H)
    grid = (triton.cdiv(T, cfg["BT"]), triton.cdiv(H, cfg["HPP"]))
    kernel[grid](
        x,
        position_ids,
        inv_freq,
        out,
        T,
        H,
        x.stride(0),
        x.stride(1),
        out.stride(0),
        out.stride(1),
        float(attention_scaling),
        HALF=cfg["HALF"],
        BT=cfg["BT"],
        BHALF=cfg["BHALF"],
        HPP=cfg["HPP"],
        num_warps=cfg["num_warps"],
    )
    return out


def rope_fwd(
    x: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float
) -> torch.Tensor:
    """Launch the forward kernel. ``x [T, H, D]`` (last dim contiguous) -> new contiguous ``[T, H, D]``."""
    return _rotate(rope_fwd_kernel, x, position_ids, inv_freq, attention_scaling)


def rope_bwd(
    grad_out: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float
) -> torch.Tensor:
    """Launch the backward kernel: ``grad_out [T, H, D] -> grad_x [T, H, D]``."""
    return _rotate(rope_bwd_kernel, grad_out, position_ids, inv_freq, attention_scaling)


def rope_table(position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float) -> torch.Tensor:
    """fp32 ``[T, 2, D/2]``: ``[t, 0]`` the cos and ``[t, 1]`` the sin of ``position_ids[t] * inv_freq``,
    times ``attention_scaling`` — the values the RoPE kernels compute in registers (same angle code)."""
    T, half = position_ids.shape[0], inv_freq.shape[0]
    cs = torch.empty((T, 2, half), dtype=torch.float32, device=position_ids.device)
    if T == 0:
        return cs
    bhalf = triton.next_power_of_2(half)
    bt = max(1, _TILE_ELEMS // bhalf)
    rope_table_kernel[(triton.cdiv(T, bt),)](
        position_ids, inv_freq, cs, T, float(attention_scaling), HALF=half, BT=bt, BHALF=bhalf,
        num_warps=_NUM_WARPS,
    )  # fmt: skip
    return cs


# torch.library registration makes the Triton path traceable by torch.compile (fake kernels give
# shapes without running Triton) and lets opcheck verify schema, fake and autograd consistency.
@torch.library.custom_op("lr_kernels::rope_fwd", mutates_args=())
def rope_fwd_op(
    x: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float
) -> torch.Tensor:
    return rope_fwd(x, position_ids, inv_freq, attention_scaling)


@torch.library.custom_op("lr_kernels::rope_bwd", mutates_args=())
def rope_bwd_op(
    grad_out: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float
) -> torch.Tensor:
    return rope_bwd(grad_out, position_ids, inv_freq, attention_scaling)


@rope_fwd_op.register_fake
def _rope_fwd_fake(x, position_ids, inv_freq, attention_scaling):
    return x.new_empty(x.shape)


@rope_bwd_op.register_fake
def _rope_bwd_fake(grad_out, position_ids, inv_freq, attention_scaling):
    return grad_out.new_empty(grad_out.shape)


def _setup_context(ctx, inputs, output):
    _, position_ids, inv_freq, attention_scaling = inputs
    ctx.save_for_backward(position_ids, inv_freq)
    ctx.attention_scaling = attention_scaling


def _rope_fwd_backward(ctx, grad_out):
    position_ids, inv_freq = ctx.saved_tensors
    return rope_bwd_op(grad_out, position_ids, inv_freq, ctx.attention_scaling), None, None, None


def _rope_bwd_backward(ctx, grad_grad_x):
    # The backward is linear in grad_out with the transposed rotation, whose transpose is the forward.
    position_ids, inv_freq = ctx.saved_tensors
    return rope_fwd_op(grad_grad_x, position_ids, inv_freq, ctx.attention_scaling), None, None, None


rope_fwd_op.register_autograd(_rope_fwd_backward, setup_context=_setup_context)
rope_bwd_op.register_autograd(_rope_bwd_backward, setup_context=_setup_context)


_REPORT_HEAD_DIMS = (64, 80, 128, 256)
_REPORT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _report_launch(dtype: torch.dtype, head_dim: int) -> Callable[[], None]:
    def launch() -> None:
        x = torch.zeros(4096, 32, head_dim, dtype=dtype)
        pos = torch.arange(4096, dtype=torch.int64)
        freq = torch.ones(head_dim // 2, dtype=torch.float32)
        rope_bwd(rope_fwd(x, pos, freq, 1.0), pos, freq, 1.0)

    return launch


def report_cases(arch: int) -> list[ReportCase]:
    """Forward and backward rotation of 32 heads (4096 tokens) per dtype and head dim."""
    return [
        ReportCase(
            name=f"rope {name} D={head_dim}",
            launch=_report_launch(dtype, head_dim),
            dtype=name,
            head_dim=head_dim,
        )
        for name, dtype in _REPORT_DTYPES.items()
        for head_dim in _REPORT_HEAD_DIMS
    ]
