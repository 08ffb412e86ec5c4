"""PyTorch backend: RoPE in PyTorch, then ``F.scaled_dot_product_attention`` per packed sequence.

Memory stays linear in the sequence length: SDPA's CPU (and CUDA) flash kernels never hold an
[L, L] score matrix, and GQA goes through ``enable_gqa`` so k/v are not repeated. The rotated q and k
do exist as tensors here (this is the portable path; the Triton path keeps them in registers).
Autograd differentiates through everything.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from lr_kernels.rope.angles import rope_cos_sin_torch


def rope_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in float32, result in x.dtype. x [T, H, D]; cos, sin fp32 [T, 1, D/2]."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def varlen_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    causal: bool,
    softmax_scale: float,
    position_ids: torch.Tensor | None,
    inv_freq: torch.Tensor | None,
    attention_scaling: float,
) -> torch.Tensor:
    """q [T, H, D], k/v [T, Hkv, D], cu_seqlens int32 [B+1] (already validated) -> [T, H, D]."""
    if position_ids is not None:
        cos, sin = rope_cos_sin_torch(position_ids, inv_freq)  # fp32 [T, D/2] from float64 angles
        cos = (cos * attention_scaling)[:, None, :]
        sin = (sin * attention_scaling)[:, None, :]
        q = rope_torch(q, cos, sin)
        k = rope_torch(k, cos, sin)
    gqa = q.shape[1] != k.shape[1]
    outs = []
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        # [L, H, D] -> [1, H, L, D], SDPA's layout.
        qs = q[start:end].transpose(0, 1).unsqueeze(0)
        ks = k[start:end].transpose(0, 1).unsqueeze(0)
        vs = v[start:end].transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=softmax_scale, enable_gqa=gqa)
        outs.append(o.squeeze(0).transpose(0, 1))
    return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0].contiguous()
