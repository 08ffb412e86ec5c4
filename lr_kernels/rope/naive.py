"""Plain PyTorch reference for ``apply_rope``: float64 angles and arithmetic, written for clarity.

The test oracle for every backend. Differentiable through ordinary autograd.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[..., D] -> [..., D]``: ``(x1, x2) -> (-x2, x1)`` for the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(
    x: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float = 1.0
) -> torch.Tensor:
    """HF rotate-half RoPE. ``x [T, H, D]``, ``position_ids int64 [T]``, ``inv_freq [D/2]`` -> ``[T, H, D]``.

    ``out = (x * cos + rotate_half(x) * sin) * attention_scaling`` with ``cos``/``sin`` of the angles
    ``position * inv_freq`` repeated over both halves of D, all in float64, cast back to ``x.dtype``.
    """
    angles = position_ids.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]  # [T, D/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # [T, 1, D]
    x64 = x.to(torch.float64)
    out = (x64 * angles.cos() + rotate_half(x64) * angles.sin()) * attention_scaling
    return out.to(x.dtype)
