"""Plain PyTorch reference for varlen attention with RoPE: the test oracle, written for clarity.

Every sequence and every head is handled on its own with an explicit score matrix, so this uses
O(L^2) memory per sequence and is only meant for small inputs. Arithmetic runs in the dtype of the
inputs (pass float64 tensors for a high-precision reference).
"""

from __future__ import annotations

import itertools
import math

import torch

from lr_kernels.rope.angles import rope_angle_torch


def naive_rope(
    x: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Rotate-half RoPE: x [T, H, D], position_ids [T], inv_freq [D/2] -> [T, H, D] in x.dtype."""
    half = x.shape[-1] // 2
    angle = rope_angle_torch(position_ids, inv_freq)  # float64 [T, D/2]
    cos = (angle.cos() * scaling).to(x.dtype)[:, None, :]
    sin = (angle.sin() * scaling).to(x.dtype)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def naive_varlen_attention(
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
) -> torch.Tensor:
    """Reference attention over packed sequences.

    q: [T, H, D]; k, v: [T, Hkv, D] with H % Hkv == 0; cu_seqlens: int32 [B+1];
    position_ids: int64 [T] and inv_freq: fp32 [D/2] (both or neither). Returns [T, H, D].
    ``max_seqlen`` is accepted for signature parity and not needed here.
    """
    del max_seqlen
    _, H, D = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else softmax_scale
    if position_ids is not None:
        q = naive_rope(q, position_ids, inv_freq, attention_scaling)
        k = naive_rope(k, position_ids, inv_freq, attention_scaling)
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        L = end - start
        for h in range(H):
            hk = h // group  # GQA: query head h reads key/value head h // group
            qs = q[start:end, h]  # [L, D]
            ks = k[start:end, hk]
            vs = v[start:end, hk]
            scores = (qs @ ks.T) * scale  # [L, L]
            if causal:
                future = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(diagonal=1)
                scores = scores.masked_fill(future, float("-inf"))
            scores = scores - scores.max(dim=-1, keepdim=True).values
            weights = scores.exp()
            weights = weights / weights.sum(dim=-1, keepdim=True)
            out[start:end, h] = weights @ vs
    return out
