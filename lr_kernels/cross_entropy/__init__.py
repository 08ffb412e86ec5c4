"""Fused linear cross-entropy, per-token log-probs and entropies that never hold the [T, V] logits."""

from lr_kernels.cross_entropy.interface import fused_linear_cross_entropy, token_entropy, token_logprobs

__all__ = ["fused_linear_cross_entropy", "token_entropy", "token_logprobs"]
