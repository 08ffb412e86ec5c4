"""Rotary position embeddings from arbitrary position ids: frequencies for HF rope types and the op."""

from lr_kernels.rope.apply import apply_rope
from lr_kernels.rope.frequencies import ROPE_TYPES, RopeFrequencies, rope_frequencies

__all__ = ["ROPE_TYPES", "RopeFrequencies", "apply_rope", "rope_frequencies"]
