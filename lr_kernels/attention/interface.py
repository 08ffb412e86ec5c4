"""Public varlen attention API: argument checking and backend dispatch."""

from __future__ import annotations

import math
import numbers

import torch

from lr_kernels._common import FLOAT_DTYPES, check_same_dtype, check_tensor, resolve_backend
from lr_kernels.attention.flash import varlen_attention_triton
from lr_kernels.attention.torch_impl import varlen_attention_torch
from lr_kernels.rope.angles import MAX_ANGLE_POSITION

MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 256
# Past this the in-kernel fp32 angle reduction drifts above 3e-6 rad (measured in lr_kernels.rope.accuracy).
MAX_POSITION = MAX_ANGLE_POSITION


def _check_number(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _check_attention_args(q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, position_ids, inv_freq,
                          attention_scaling) -> tuple[float, torch.Tensor, torch.Tensor | None,
                                                  torch.Tensor | None]:  # fmt: skip
    """Validate everything; returns the softmax scale and contiguous cu_seqlens, position_ids, inv_freq."""
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("k", k, ndim=3, dtypes=FLOAT_DTYPES, device=q.device)
    check_tensor("v", v, ndim=3, dtypes=FLOAT_DTYPES, device=q.device)
    check_same_dtype(("q", "k", "v"), (q, k, v))
    T, H, D = q.shape
    if T == 0:
        raise ValueError("q must hold at least one token (T >= 1), got T = 0")
    if k.shape[0] != T or k.shape[2] != D:
        raise ValueError(f"k must have shape [T={T}, Hkv, D={D}] like q [T, H, D], got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the same shape as k {tuple(k.shape)}, got {tuple(v.shape)}")
    Hkv = k.shape[1]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"k/v heads (Hkv={Hkv}) must divide q heads (H={H}) for grouped-query attention")
    if not (MIN_HEAD_DIM <= D <= MAX_HEAD_DIM) or D % 2:
        raise ValueError(
            f"head dim D (q.shape[2]) must be even and in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {D}"
        )
    cu_seqlens = check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32,), device=q.device,
                              contiguous=True)  # fmt: skip
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have B+1 >= 2 entries, got {cu_seqlens.numel()}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral) or max_seqlen < 1:
        raise ValueError(f"max_seqlen must be a positive int, got {max_seqlen!r}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else _check_number("softmax_scale", softmax_scale,
                                                                           positive=True)  # fmt: skip
    _check_number("attention_scaling", attention_scaling)
    if (position_ids is None) != (inv_freq is None):
        raise ValueError("position_ids and inv_freq must be given together (RoPE) or both left None")
    if position_ids is not None:
        position_ids = check_tensor("position_ids", position_ids, ndim=1, dtypes=(torch.int64,),
                                    device=q.device, contiguous=True)  # fmt: skip
        if position_ids.shape[0] != T:
            raise ValueError(f"position_ids must have shape [T={T}], got {tuple(position_ids.shape)}")
        inv_freq = check_tensor("inv_freq", inv_freq, ndim=1, dtypes=(torch.float32,), device=q.device,
                                contiguous=True)  # fmt: skip
        if inv_freq.shape[0] != D // 2:
            raise ValueError(f"inv_freq must have shape [D/2={D // 2}], got {tuple(inv_freq.shape)}")
    elif attention_scaling != 1.0:
        raise ValueError("attention_scaling applies to RoPE: pass position_ids and inv_freq, or leave it 1.0")

    # All value checks in one device->host transfer (one sync on CUDA).
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    stats = [cu_seqlens[0].long(), cu_seqlens[-1].long(), lengths.min().long(), lengths.max().long()]
    if position_ids is not None:
        stats += [position_ids.min(), position_ids.max()]
    stats = torch.stack(stats).tolist()
    first, last, shortest, longest = stats[:4]
    if first != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {first}")
    if shortest <= 0:
        raise ValueError("cu_seqlens must be strictly increasing (every sequence holds >= 1 token)")
    if last != T:
        raise ValueError(f"cu_seqlens must end at T = q.shape[0] = {T}, got {last}")
    if longest > max_seqlen:
        raise ValueError(f"max_seqlen must be >= the longest sequence ({longest}), got {max_seqlen}")
    if position_ids is not None:
        lo, hi = stats[4:]
        if lo < 0:
            raise ValueError(f"position_ids must be >= 0, got min {lo}")
        if hi > MAX_POSITION:
            raise ValueError(f"position_ids must be <= {MAX_POSITION}, got max {hi}")
    return scale, cu_seqlens, position_ids, inv_freq


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    position_ids: torch.Tensor | None = None,
    inv_freq: torch.Tensor | None = None,
    attention_scaling: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention over packed variable-length sequences, with RoPE optionally fused in.

    Args:
        q: [T, H, D] queries (fp16, bf16 or fp32), T = total tokens of all sequences.
        k, v: [T, Hkv, D], same dtype and device as q; H must be a multiple of Hkv (GQA/MQA).
            D must be even and in [16, 256]. q, k and v may be strided views (e.g. slices of one fused
            qkv tensor, or a head-major [H, T, D] tensor transposed).
        cu_seqlens: int32 [B+1], cumulative sequence lengths: 0, strictly increasing, ends at T.
            Index tensors (cu_seqlens, position_ids, inv_freq) may be strided views: they are made
            contiguous once (a copy of B+1, T or D/2 elements), since the kernels index them densely.
        max_seqlen: an int >= the longest sequence (it sizes the kernel grid).
        causal: each token attends to itself and earlier tokens of its own sequence.
        softmax_scale: defaults to 1 / sqrt(D).
        position_ids: int64 [T], any values in [0, 2**31) (not necessarily contiguous). Together with
            inv_freq, rotate-half RoPE is applied to q and k before the dot products (inside the
            kernel on the Triton path: no rotated copies in memory).
        inv_freq: fp32 [D/2], e.g. ``lk.rope_frequencies(config).inv_freq``.
        attention_scaling: multiplies the rotated q and k each (HF scales cos and sin by it).
        backend: "auto" (Triton on CUDA, PyTorch on CPU), "triton" or "torch".

    Returns:
        [T, H, D] in q.dtype. Differentiable w.r.t. q, k and v.

    Raises:
        ValueError: naming the argument, for any bad shape, dtype, device or value.
    """
    scale, cu_seqlens, position_ids, inv_freq = _check_attention_args(
        q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, position_ids, inv_freq, attention_scaling
    )
    impl = varlen_attention_triton if resolve_backend(backend, q) == "triton" else varlen_attention_torch
    kwargs = {"max_seqlen": max_seqlen} if impl is varlen_attention_triton else {}
    return impl(q, k, v, cu_seqlens, causal=causal, softmax_scale=scale, position_ids=position_ids,
                inv_freq=inv_freq, attention_scaling=float(attention_scaling), **kwargs)  # fmt: skip


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Guess sequence boundaries from position ids of a packed batch.

    A new sequence starts at index 0 and wherever ``position_ids[i] <= position_ids[i-1]``. This is a
    fallback: remapped positions make boundary guessing fragile, so pass explicit cu_seqlens when known.

    Args:
        position_ids: int [T] or [1, T] (a packed batch as Hugging Face passes it).

    Returns:
        (cu_seqlens int32 [B+1] on the same device, max_seqlen as a Python int).
    """
    check_tensor("position_ids", position_ids, dtypes=(torch.int32, torch.int64))
    if position_ids.dim() == 2 and position_ids.shape[0] == 1:
        position_ids = position_ids[0]
    if position_ids.dim() != 1:
        raise ValueError(f"position_ids must have shape [T] or [1, T], got {tuple(position_ids.shape)}")
    T = position_ids.shape[0]
    if T == 0:
        raise ValueError("position_ids must hold at least one token, got T = 0")
    starts = torch.nonzero(position_ids[1:] <= position_ids[:-1]).flatten() + 1
    edges = torch.tensor([0, T], dtype=starts.dtype, device=position_ids.device)
    cu_seqlens = torch.cat([edges[:1], starts, edges[1:]]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return cu_seqlens, max_seqlen
