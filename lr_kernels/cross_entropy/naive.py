"""Plain PyTorch reference for the fused linear cross-entropy ops: materialises the full [T, V] logits.

Written for clarity, not memory: it is the oracle the tests compare the chunked and Triton paths against,
so it builds the logits exactly as a user would (``hidden @ weight.T + bias``, softcap, fp32 math) and
hands them to ``torch.nn.functional``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """fp32 logits ``[T, V]`` of ``hidden [T, d] @ weight[V, d].T (+ bias [V])``, softcapped Gemma-2 style.

    The product is taken in fp32 (inputs upcast first) so the reference is as exact as fp32 allows.
    """
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    if logit_softcap is not None:
        logits = logit_softcap * torch.tanh(logits / logit_softcap)
    return logits


def naive_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """``F.cross_entropy`` on the materialised fp32 logits. Same signature as the fused op.

    hidden: [T, d], weight: [V, d], targets: [T] integer, bias: [V]. Returns fp32: a scalar for
    "mean"/"sum", ``[T]`` for "none".
    """
    logits = naive_logits(hidden, weight, bias, logit_softcap)
    return F.cross_entropy(
        logits,
        targets.long(),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def naive_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """fp32 ``[T]``: ``log_softmax(logits)[i, targets[i]]``, 0.0 where ``targets[i] == ignore_index``."""
    logp = torch.log_softmax(naive_logits(hidden, weight, bias, logit_softcap), dim=-1)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0).long()
    picked = logp.gather(1, safe[:, None])[:, 0]
    return torch.where(valid, picked, torch.zeros_like(picked))


def naive_token_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """fp32 ``[T]``: entropy ``-sum_j p_ij log p_ij`` of each token's predicted distribution (nats)."""
    logp = torch.log_softmax(naive_logits(hidden, weight, bias, logit_softcap), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
