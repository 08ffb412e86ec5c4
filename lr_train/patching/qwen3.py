"""Qwen3: RMSNorm over each head of q and k (``q_norm`` / ``k_norm``) before RoPE, no projection bias by
default, optional per-layer sliding window as in Qwen2.
"""

import torch
from torch import nn

from lr_train.patching.core import FamilySpec, layer_sliding_window, qkv_projection


def _qk_norm_projection(attn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h [T, d] -> q [T, H, D], k, v [T, Hkv, D] with q and k normalised per head (over D)."""
    q, k, v = qkv_projection(attn, h)
    return attn.q_norm(q), attn.k_norm(k), v


SPEC = FamilySpec(
    name="qwen3",
    model_types=("qwen3",),
    attention_class="Qwen3Attention",
    project=_qk_norm_projection,
    sliding_window=layer_sliding_window,
)
