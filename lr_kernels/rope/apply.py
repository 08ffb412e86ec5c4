"""``apply_rope``: argument checks, the PyTorch path and backend dispatch."""

from __future__ import annotations

import math

import torch

from lr_kernels._common import FLOAT_DTYPES, check_tensor, resolve_backend
from lr_kernels.rope.angles import MAX_ANGLE_POSITION, rope_cos_sin_torch
from lr_kernels.rope.fused import rope_fwd_op

MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 256
# Past this the in-kernel angle error grows beyond 3e-6 rad (lr_kernels.rope.angles); both backends
# share the limit so a model behaves the same on CPU and GPU.
MAX_POSITION = MAX_ANGLE_POSITION


def _apply_rope_torch(
    x: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float
) -> torch.Tensor:
    # Angles in float64 (exact at any position), rotation in float32 (float64 for float64 input);
    # autograd differentiates the two products, keeping only cos/sin [T, D/2] alive for backward.
    cos, sin = rope_cos_sin_torch(position_ids, inv_freq)  # fp32 [T, D/2]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos = (cos.to(compute) * attention_scaling)[:, None, :]
    sin = (sin.to(compute) * attention_scaling)[:, None, :]
    x1, x2 = x.to(compute).chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def _check_inputs(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_scaling: float,
    backend: str,
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """Validate; returns the backend to run and contiguous position_ids and inv_freq."""
    check_tensor("x", x, ndim=3)
    resolved = resolve_backend(backend, x)
    dtypes = FLOAT_DTYPES if resolved == "triton" else (*FLOAT_DTYPES, torch.float64)
    check_tensor("x", x, dtypes=dtypes)
    T, _, D = x.shape
    if D % 2 or not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(
            f"x: head dim (last dim) must be even and in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {D}"
        )
    position_ids = check_tensor(
        "position_ids", position_ids, ndim=1, dtypes=(torch.int64,), device=x.device, contiguous=True
    )
    if position_ids.shape[0] != T:
        raise ValueError(
            f"position_ids must have shape [T] = [{T}] like x [T, H, D], got {tuple(position_ids.shape)}"
        )
    inv_freq = check_tensor(
        "inv_freq", inv_freq, ndim=1, dtypes=(torch.float32,), device=x.device, contiguous=True
    )
    if inv_freq.shape[0] != D // 2:
        raise ValueError(
            f"inv_freq must have D/2 = {D // 2} entries for head dim {D}, got {inv_freq.shape[0]} "
            "(with partial rotary embeddings, rotate x[..., :rotary_dim] only)"
        )
    if inv_freq.requires_grad:
        raise ValueError("inv_freq must not require grad: apply_rope differentiates with respect to x only")
    if isinstance(attention_scaling, bool) or not isinstance(attention_scaling, (int, float)):
        raise ValueError(f"attention_scaling must be a float, got {type(attention_scaling).__name__}")
    if not math.isfinite(attention_scaling):
        raise ValueError(f"attention_scaling must be finite, got {attention_scaling}")
    if T > 0:
        lo, hi = torch.aminmax(position_ids)
        lo, hi = int(lo), int(hi)
        if lo < 0:
            raise ValueError(f"position_ids must be non-negative, got a minimum of {lo}")
        if hi > MAX_POSITION:
            raise ValueError(f"position_ids must be at most 2**28 - 1 = {MAX_POSITION}, got {hi}")
    return resolved, position_ids, inv_freq


def apply_rope(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_scaling: float = 1.0,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Rotary position embedding of packed tokens at arbitrary positions (HF rotate-half convention).

    ``out = (x * cos + rotate_half(x) * sin) * attention_scaling`` where ``cos``/``sin`` are of the angles
    ``position_ids[t] * inv_freq`` repeated over both halves of the head dim, and
    ``rotate_half([x1, x2]) = [-x2, x1]``. Angles are within 6e-7 rad of float64 for positions below
    2**25 and 3e-6 rad up to 2**28 - 1 (plain float32 ``pos * inv_freq`` is off by ~3e-2 rad at 2**20).

    Args:
        x: ``[T, H, D]`` float16 / bfloat16 / float32 (float64 too on the torch backend); D even, 16..256.
            Any strides (a view with a non-unit last-dim stride is copied once on the Triton path).
        position_ids: int64 ``[T]``, any values in [0, 2**28 - 1] (not necessarily consecutive or sorted).
            position_ids and inv_freq may be strided views; they are made contiguous (a copy of T and
            D/2 elements) because the kernel indexes them densely.
        inv_freq: float32 ``[D/2]`` on x's device, e.g. ``rope_frequencies(config).inv_freq``.
        attention_scaling: multiplies cos and sin (``RopeFrequencies.attention_scaling``).
        backend: "auto" (Triton on CUDA, torch on CPU), "triton" or "torch".

    Returns:
        ``[T, H, D]`` contiguous, dtype of x. Differentiable with respect to x (backward rotates the
        gradient by the negative angle); position_ids and inv_freq get no gradient.

    Raises:
        ValueError: wrong rank/shape/dtype/device, odd or unsupported head dim, inv_freq length != D/2,
            inv_freq requiring grad, negative positions or positions past 2**28 - 1, unknown backend.
    """
    resolved, position_ids, inv_freq = _check_inputs(x, position_ids, inv_freq, attention_scaling, backend)
    if resolved == "torch":
        return _apply_rope_torch(x, position_ids, inv_freq, float(attention_scaling))
    return rope_fwd_op(x, position_ids, inv_freq, float(attention_scaling))
