"""lr_kernels: fused kernels for LongRecipe-style long-context training.

Packed ("varlen") layout everywhere: ``T`` is the total number of tokens of all sequences in a batch.
``backend="auto"`` runs Triton kernels on CUDA tensors and the PyTorch path on CPU tensors.
"""

from lr_kernels.attention import cu_seqlens_from_position_ids, varlen_attention
from lr_kernels.cross_entropy import fused_linear_cross_entropy, token_entropy, token_logprobs
from lr_kernels.positions import (
    pose_positions,
    randpos_positions,
    remap_positions,
    select_segments,
    split_segments,
)
from lr_kernels.rope import RopeFrequencies, apply_rope, rope_frequencies

__version__ = "0.1.0"

__all__ = [
    "RopeFrequencies",
    "apply_rope",
    "cu_seqlens_from_position_ids",
    "fused_linear_cross_entropy",
    "pose_positions",
    "randpos_positions",
    "remap_positions",
    "rope_frequencies",
    "select_segments",
    "split_segments",
    "token_entropy",
    "token_logprobs",
    "varlen_attention",
]
