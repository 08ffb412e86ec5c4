"""Public fused linear cross-entropy ops: argument checks, backend choice and the autograd.Function."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from lr_kernels._common import FLOAT_DTYPES, check_same_dtype, check_tensor, resolve_backend
from lr_kernels.cross_entropy.chunked import (
    StepFn,
    ce_chunk_torch,
    entropy_chunk_torch,
    entropy_chunked,
    linear_ce_chunked,
)

INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
REDUCTIONS = ("mean", "sum", "none")


def _steps(backend: str, *tensors: torch.Tensor) -> tuple[StepFn, object]:
    if resolve_backend(backend, *tensors) == "triton":
        from lr_kernels.cross_entropy.kernels import ce_chunk_triton, entropy_chunk_triton

        return ce_chunk_triton, entropy_chunk_triton
    return ce_chunk_torch, entropy_chunk_torch


def _check_linear(hidden: object, weight: object, bias: object) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = check_tensor("hidden", hidden, ndim=2, dtypes=FLOAT_DTYPES)
    weight = check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES, device=hidden.device)
    check_same_dtype(("hidden", "weight"), (hidden, weight))
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be [V, d] with d = hidden.shape[1] = {hidden.shape[1]}, "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (vocabulary size V >= 1), got shape (0, d)")
    if bias is not None:
        bias = check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES, device=hidden.device)
        check_same_dtype(("hidden", "bias"), (hidden, bias))
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    return hidden, weight


def _check_targets(targets: object, hidden: torch.Tensor, vocab: int, ignore_index: object) -> torch.Tensor:
    targets = check_tensor("targets", targets, ndim=1, dtypes=INT_DTYPES, device=hidden.device)
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"targets must be [T] with T = hidden.shape[0] = {hidden.shape[0]}, "
            f"got shape {tuple(targets.shape)}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    targets = targets.long()
    if targets.numel() > 0:
        # one min/max over T integers: cheap, and it turns an out-of-range id into an error instead of a
        # read past the logits row inside a kernel
        kept = torch.where(targets == ignore_index, torch.zeros_like(targets), targets)
        lo, hi = torch.aminmax(kept)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"targets must lie in [0, V) = [0, {vocab}) or equal ignore_index={ignore_index}, found {bad}"
            )
    return targets.contiguous()


def _check_options(label_smoothing: object, logit_softcap: object, chunk_size: object) -> None:
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing must be a float in [0, 1), got {label_smoothing!r}")
    if logit_softcap is not None and (
        not isinstance(logit_softcap, (int, float))
        or not math.isfinite(float(logit_softcap))
        or float(logit_softcap) <= 0.0
    ):
        raise ValueError(f"logit_softcap must be None or a finite float > 0, got {logit_softcap!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")


@dataclass(frozen=True)
class _Options:
    ignore_index: int
    reduction: str
    label_smoothing: float
    softcap: float | None
    chunk_size: int | None
    step: StepFn
    grad_enabled: bool  # needs_input_grad stays True under torch.no_grad(); this does not


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Loss of ``hidden @ weight.T + bias``; for "mean"/"sum" the gradients are made in the forward pass.

    "mean"/"sum": the forward computes the finished gradients (already divided by the number of
    non-ignored targets for "mean") while each logits chunk is in memory; backward only multiplies them by
    the scalar grad_output. "none": a per-token grad_output cannot be folded into ``grad_weight`` after the
    fact, so the forward keeps only the inputs and backward recomputes the logits chunk by chunk with the
    grad_output as a per-row scale: one extra ``h @ W.T`` GEMM, no memory beyond one chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, opts: _Options):
        need = tuple(
            bool(opts.grad_enabled and ctx.needs_input_grad[i] and (i < 2 or bias is not None))
            for i in range(3)
        )
        ctx.opts = opts
        common = dict(
            step=opts.step,
            ignore_index=opts.ignore_index,
            label_smoothing=opts.label_smoothing,
            softcap=opts.softcap,
            chunk_size=opts.chunk_size,
        )
        if opts.reduction == "none":
            loss, _, _, _ = linear_ce_chunked(
                hidden, weight, bias, targets, need_grads=(False,) * 3, **common
            )
            ctx.save_for_backward(hidden, weight, bias, targets)
            ctx.need = need
            return loss
        n_valid = (targets != opts.ignore_index).sum().to(torch.float32)
        grad_scale = None
        if opts.reduction == "mean":
            # all targets ignored: loss is 0/0 = nan like F.cross_entropy, gradients stay exactly 0
            grad_scale = torch.where(n_valid > 0, 1.0 / n_valid, torch.zeros_like(n_valid))
        loss, gh, gw, gb = linear_ce_chunked(
            hidden, weight, bias, targets, need_grads=need, grad_scale=grad_scale, **common
        )
        total = loss.sum()
        ctx.save_for_backward(gh, gw, gb)
        return total / n_valid if opts.reduction == "mean" else total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        opts: _Options = ctx.opts
        if opts.reduction == "none":
            hidden, weight, bias, targets = ctx.saved_tensors
            _, gh, gw, gb = linear_ce_chunked(
                hidden,
                weight,
                bias,
                targets,
                step=opts.step,
                ignore_index=opts.ignore_index,
                label_smoothing=opts.label_smoothing,
                softcap=opts.softcap,
                chunk_size=opts.chunk_size,
                need_grads=ctx.need,
                row_scale=grad_out.to(torch.float32),
            )
            return gh, gw, gb, None, None
        grads = ctx.saved_tensors
        if not bool(grad_out == 1):
            # a 0-dim fp32 factor keeps its precision (opmath) and rounds the product once to g's dtype
            grads = tuple(g * grad_out.to(torch.float32) if g is not None else None for g in grads)
        return (*grads, None, None)


# Chunk loops, data-dependent argument checks and Triton launches: Dynamo runs this eagerly (one graph
# break) instead of tracing into it and breaking on every .item().
@torch.compiler.disable
def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets`` without the ``[T, V]`` logits.

    Equals ``F.cross_entropy(logits.float(), targets, ignore_index=..., reduction=...,
    label_smoothing=...)`` with ``logits = hidden @ weight.T + bias`` and, when ``logit_softcap`` is
    given, ``logits = logit_softcap * tanh(logits / logit_softcap)`` (Gemma-2's final-logit softcapping).

    Args:
        hidden: [T, d] fp32/fp16/bf16 — the final hidden states of all T tokens (packed, no padding).
        weight: [V, d], same dtype and device — the LM head.
        targets: [T] integer ids in [0, V), or ``ignore_index``; a strided view is fine (copied once to
            contiguous int64, T integers).
        bias: optional [V], same dtype.
        ignore_index: targets with this value contribute no loss and no gradient.
        reduction: "mean" (sum over non-ignored tokens / their count, as F.cross_entropy), "sum" or "none".
        label_smoothing: in [0, 1), PyTorch's definition (mixes in the uniform distribution over V).
        logit_softcap: None or > 0, see above.
        chunk_size: tokens per logits chunk; default picked from T, V and free memory.
        backend: "auto" | "triton" | "torch" (see ``lr_kernels._common.resolve_backend``).

    Returns:
        fp32 loss: a scalar for "mean"/"sum", [T] for "none" (0 at ignored tokens). Empty input (T = 0) or
        all targets ignored gives ``nan`` for "mean" and 0 for "sum", exactly as F.cross_entropy; the
        gradients are then 0.

    Gradients flow to hidden, weight and bias (in their dtype). Logits, softmax and gradients are computed
    in fp32 (see ``chunked.gemm_dtype`` for the GEMM dtype); at most one chunk of logits
    ([chunk_size, V] fp32) exists at a time.

    Raises:
        ValueError: naming the argument, for wrong rank / shape / dtype / device, targets out of range,
        unknown reduction or backend, label_smoothing outside [0, 1), logit_softcap <= 0, chunk_size < 1.
    """
    hidden, weight = _check_linear(hidden, weight, bias)
    targets = _check_targets(targets, hidden, weight.shape[0], ignore_index)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    _check_options(label_smoothing, logit_softcap, chunk_size)
    step, _ = _steps(backend, hidden, weight)
    opts = _Options(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=float(label_smoothing),
        softcap=float(logit_softcap) if logit_softcap is not None else None,
        chunk_size=chunk_size,
        step=step,
        grad_enabled=torch.is_grad_enabled(),
    )
    return LinearCrossEntropyFunction.apply(hidden, weight, bias, targets, opts)


@torch.compiler.disable
def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """fp32 [T]: ``log softmax(hidden @ weight.T + bias)[i, targets[i]]``, chunked like the loss.

    hidden: [T, d], weight: [V, d], targets: [T] integer in [0, V) or ``ignore_index`` (→ 0.0 there),
    bias: [V]. ``logit_softcap`` as in :func:`fused_linear_cross_entropy`. Differentiable (it is minus the
    ``reduction="none"`` loss), and without gradients only the forward sweep runs. Raises ValueError as
    :func:`fused_linear_cross_entropy` does.
    """
    loss = fused_linear_cross_entropy(
        hidden,
        weight,
        targets,
        bias=bias,
        ignore_index=ignore_index,
        reduction="none",
        logit_softcap=logit_softcap,
        chunk_size=chunk_size,
        backend=backend,
    )
    return 0.0 - loss  # +0.0, not -0.0, at ignored tokens


@torch.compiler.disable
def token_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """fp32 [T]: entropy (nats) of each token's predicted distribution ``softmax(hidden @ weight.T + bias)``.

    hidden: [T, d], weight: [V, d], bias: [V]. An analysis op: the result carries no gradient (computed
    under ``torch.no_grad``). Raises ValueError for bad shapes / dtypes / devices / options.
    """
    hidden, weight = _check_linear(hidden, weight, bias)
    _check_options(0.0, logit_softcap, chunk_size)
    _, step = _steps(backend, hidden, weight)
    with torch.no_grad():
        return entropy_chunked(
            hidden,
            weight,
            bias,
            step=step,
            softcap=float(logit_softcap) if logit_softcap is not None else None,
            chunk_size=chunk_size,
        )
