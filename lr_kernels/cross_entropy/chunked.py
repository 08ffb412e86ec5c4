"""Chunked linear cross-entropy: the loop over token chunks shared by the PyTorch and Triton backends.

Per chunk of ``c`` tokens the logits ``z = h_c @ W.T (+ b)`` exist once, as an fp32 ``[c, V]`` buffer reused
for every chunk. A *step* turns that buffer into the per-token loss and, in place, into the gradient of the
loss with respect to the logits; the driver then folds the gradient into ``grad_hidden[c] = dz @ W``,
``grad_weight += dz.T @ h_c`` and ``grad_bias += dz.sum(0)`` (fp32 accumulators) before the next chunk
overwrites the buffer. No ``[T, V]`` tensor is ever allocated.

The step is pluggable: :func:`ce_chunk_torch` here (CPU, or any device) and ``ce_chunk_triton`` in
``kernels.py`` (the GPU kernels, or the interpreter on CPU) share one contract:

    step(z, targets, *, ignore_index, label_smoothing, softcap, row_scale, compute_grad, dz_out)
        -> (loss [c] fp32, dz [c, V] or None)

``z``: fp32 ``[c, V]``, may be overwritten. ``targets``: int64 ``[c]`` (raw, may hold ``ignore_index``).
``row_scale``: None or fp32 ``[c]`` multiplying each row's gradient. ``dz_out``: None (gradient written into
``z``) or a ``[c, V]`` buffer of the matmul dtype to write the gradient into. Ignored rows get loss 0 and an
all-zero gradient row whatever ``row_scale`` holds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]

# On CPU, 512 rows of a 128k vocabulary (256 MB). Measured at T=2048, d=256, V=128256 on 2 busy cores:
# 128 to 1024 rows are within noise of each other in CPU time (512 lowest); the three GEMMs dominate and
# want >= a few hundred rows, while a bigger buffer only adds memory.
CPU_CHUNK_BYTES = 256 * 2**20
# On GPU the chunk takes a share of free memory, capped where cuBLAS is long saturated.
CUDA_CHUNK_BYTES = 2 * 2**30


def choose_chunk_size(
    num_tokens: int,
    vocab: int,
    device: torch.device,
    *,
    extra_row_bytes: int = 0,
    override: int | None = None,
) -> int:
    """Tokens per chunk: the fp32 ``[c, V]`` logits buffer (plus ``extra_row_bytes`` per row) fits a budget.

    CPU budget: ``min(CPU_CHUNK_BYTES, available RAM / 8)`` (psutil when installed, else the constant).
    CUDA budget: ``min(CUDA_CHUNK_BYTES, free device memory / 4)`` from ``torch.cuda.mem_get_info``.
    ``override`` (``chunk_size=``) wins when given. Always in ``[1, max(num_tokens, 1)]``.
    """
    if override is not None:
        return max(1, min(int(override), max(num_tokens, 1)))
    row_bytes = 4 * vocab + extra_row_bytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(CUDA_CHUNK_BYTES, free // 4)
    else:
        budget = CPU_CHUNK_BYTES
        try:
            import psutil

            budget = min(budget, psutil.virtual_memory().available // 8)
        except ImportError:
            pass
    rows = max(1, budget // max(row_bytes, 1))
    if rows >= 64:
        rows -= rows % 16  # full BLAS tiles
    return max(1, min(rows, max(num_tokens, 1)))


def ce_chunk_torch(
    z: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    row_scale: torch.Tensor | None,
    compute_grad: bool,
    dz_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and in-place logits gradient of one chunk, in PyTorch (see the module docstring for the contract).

    With ``u = tanh(z / cap)`` and ``z' = cap * u`` (or ``z' = z`` without softcap), ``p = softmax(z')``:
    ``loss = lse(z') - (1 - eps) z'_t - (eps / V) sum_j z'_j`` and
    ``dloss/dz = (p - eps / V - (1 - eps) onehot_t) * (1 - u**2)``.
    """
    V = z.shape[1]
    eps = float(label_smoothing)
    valid = targets != ignore_index
    safe_t = torch.where(valid, targets, 0)[:, None]
    dtanh = None
    if softcap is not None:
        z.div_(softcap).tanh_()
        if compute_grad:
            dtanh = torch.mul(z, z).neg_().add_(1.0)
        z.mul_(softcap)
    z_t = z.gather(1, safe_t)[:, 0]
    z_sum = z.sum(dim=1) if eps > 0.0 else None
    z_max, argmax = z.max(dim=1, keepdim=True)
    # ATen's row softmax runs max / exp-sum / scale on one row while it is in cache: much faster on CPU
    # than separate full-chunk passes, and writing it over its input is safe (each element is read before
    # it is written). lse comes back from the row maximum's probability, 1 / sum(exp(z - m)), which is
    # >= 1/V and so never underflows (unlike p_t, which can).
    torch.softmax(z, dim=1, out=z)
    lse = (z_max - torch.log(z.gather(1, argmax)))[:, 0]
    loss = lse - (1.0 - eps) * z_t
    if z_sum is not None:
        loss = loss - (eps / V) * z_sum
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if not compute_grad:
        return loss, None
    if row_scale is not None:
        scale = torch.where(
            valid, row_scale.to(torch.float32), torch.zeros_like(row_scale, dtype=torch.float32)
        )
        z.mul_(scale[:, None])
    else:
        scale = valid.to(torch.float32)
    if eps > 0.0:
        z.sub_((eps / V) * scale[:, None])
    z.scatter_add_(1, safe_t, (-(1.0 - eps) * scale)[:, None])
    if dtanh is not None:
        z.mul_(dtanh)
    ignored = (~valid).nonzero()[:, 0]
    if ignored.numel() > 0:
        z.index_fill_(0, ignored, 0.0)
    if dz_out is not None:
        dz_out.copy_(z)
        return loss, dz_out
    return loss, z


# fp16/bf16 GEMMs with an fp32 result (``torch.mm`` / ``torch.addmm`` with ``out_dtype=torch.float32``):
# cuBLAS provides them on CUDA; CPU builds have no kernel for them. Probed once per (device, dtype).
_FP32_OUT_GEMM: dict[tuple[str, torch.dtype], bool] = {}
_WARNED_UPCAST: set[tuple[str, torch.dtype]] = set()
# Errors that say nothing about the capability (the device is out of memory or broken): always re-raised.
_NOT_A_CAPABILITY_ERROR = tuple(
    e for e in (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", None)) if e is not None
)


def fp32_output_gemm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.mm`` and ``torch.addmm`` with ``out_dtype=torch.float32`` run for ``dtype`` inputs.

    Probed once per (device, dtype) on 2x2 tensors and cached. "Absent" means the call raised
    NotImplementedError (no kernel for the backend), TypeError (a torch without ``out_dtype``) or another
    RuntimeError (dtype combination refused). Out-of-memory and accelerator errors propagate and nothing
    is cached: they say nothing about the capability.
    """
    key = (str(device), dtype)
    if key not in _FP32_OUT_GEMM:
        a = torch.ones(2, 2, dtype=dtype, device=device)
        out = torch.zeros(2, 2, dtype=torch.float32, device=device)
        try:
            torch.mm(a, a, out_dtype=torch.float32, out=out)
            torch.addmm(out, a, a, out_dtype=torch.float32, out=out)
            available = bool((out == 4.0).all())
        except _NOT_A_CAPABILITY_ERROR:
            raise
        except (NotImplementedError, TypeError, RuntimeError):
            available = False
        _FP32_OUT_GEMM[key] = available
    return _FP32_OUT_GEMM[key]


def gemm_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype the chunked GEMMs run in for ``dtype`` inputs on ``device``; the logits are fp32 either way.

    - fp32 inputs, and every dtype on CPU: fp32 (CPU GEMMs in half precision are slow and CPU has no
      fp32-output kernel); the weight is upcast once per call.
    - fp16/bf16 on CUDA: the input dtype (tensor cores, fp32 accumulation, fp32 result) when
      :func:`fp32_output_gemm_available`; otherwise fp32 like the CPU, with a one-time RuntimeWarning
      naming the cost (an fp32 copy of the weight and fp32 GEMMs). Logits are never rounded to 16 bits.
    """
    if dtype == torch.float32 or device.type != "cuda":
        return torch.float32
    if fp32_output_gemm_available(device, dtype):
        return dtype
    key = (str(device), dtype)
    if key not in _WARNED_UPCAST:
        _WARNED_UPCAST.add(key)
        warnings.warn(
            f"lr_kernels cross-entropy: this torch has no {dtype} GEMM with an fp32 result on {device} "
            "(torch.mm(..., out_dtype=torch.float32)); running the GEMMs in fp32 instead (an fp32 copy of "
            "the weight, slower GEMMs) so the logits stay fp32",
            RuntimeWarning,
            stacklevel=3,
        )
    return torch.float32


def _mm_fp32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``out (fp32) = a @ b (+ bias)``; fp16/bf16 inputs keep fp32 accumulation *and* an fp32 result.

    Low-precision inputs need :func:`fp32_output_gemm_available` (checked by the callers, once).
    """
    if a.dtype == torch.float32:
        if bias is None:
            torch.mm(a, b, out=out)
        else:
            torch.addmm(bias, a, b, out=out)
        return
    torch.mm(a, b, out_dtype=torch.float32, out=out)
    if bias is not None:
        out.add_(bias)


def _mm_accumulate_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc (fp32) += a @ b``."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
        return
    torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)


def _check_mm_dtype(device: torch.device, mm_dtype: torch.dtype) -> None:
    if mm_dtype != torch.float32 and not fp32_output_gemm_available(device, mm_dtype):
        raise ValueError(
            f"mm_dtype={mm_dtype} needs a GEMM with an fp32 result (torch.mm(..., out_dtype=torch.float32)), "
            f"which this torch lacks on {device}; use torch.float32"
        )


def linear_ce_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    step: StepFn,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    chunk_size: int | None,
    need_grads: tuple[bool, bool, bool],
    row_scale: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    mm_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over token chunks: per-token loss and (optionally) the gradients, never a ``[T, V]`` tensor.

    hidden: [T, d], weight: [V, d], bias: [V] or None (same float dtype); targets: int64 [T].
    need_grads: which of (hidden, weight, bias) to return gradients for (None for the others).
    row_scale: None or fp32 [T] — per-token factor on the logits gradient (``reduction="none"`` backward).
    grad_scale: None or a 0-dim fp32 tensor applied to the finished gradients (``1 / n_valid`` for "mean"),
    in fp32 before the cast to the input dtype.
    mm_dtype: dtype the GEMMs run in; default :func:`gemm_dtype` (fp32 on CPU, the input dtype on CUDA when
    it has fp32-output GEMMs). fp16/bf16 raises ValueError where those GEMMs are absent.
    Returns (loss fp32 [T], grad_hidden [T, d] | None, grad_weight [V, d] | None, grad_bias [V] | None);
    gradients in the inputs' dtype.
    """
    T, _ = hidden.shape
    V = weight.shape[0]
    device = hidden.device
    compute_grad = any(need_grads)
    if mm_dtype is None:
        mm_dtype = gemm_dtype(device, hidden.dtype)
    _check_mm_dtype(device, mm_dtype)
    w_mm = weight.to(mm_dtype)
    b32 = bias.to(torch.float32) if bias is not None else None
    low_precision_dz = compute_grad and mm_dtype != torch.float32
    extra = 2 * V if low_precision_dz else 0
    if softcap is not None and compute_grad:
        extra += 4 * V  # the torch step keeps 1 - tanh^2 beside the chunk
    c = choose_chunk_size(T, V, device, extra_row_bytes=extra, override=chunk_size)

    loss = torch.empty(T, dtype=torch.float32, device=device)
    need_h, need_w, need_b = need_grads
    grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if need_h else None
    grad_w32 = torch.zeros(V, weight.shape[1], dtype=torch.float32, device=device) if need_w else None
    grad_b32 = torch.zeros(V, dtype=torch.float32, device=device) if need_b else None
    if T == 0:
        return (
            loss,
            grad_h,
            _finish(grad_w32, weight.dtype, grad_scale),
            _finish(grad_b32, weight.dtype, grad_scale),
        )

    z_buf = torch.empty(c, V, dtype=torch.float32, device=device)
    dz_buf = torch.empty(c, V, dtype=mm_dtype, device=device) if low_precision_dz else None
    h_scale = grad_scale.to(torch.float32) if grad_scale is not None else None
    w_t = w_mm.t()
    for start in range(0, T, c):
        end = min(start + c, T)
        n = end - start
        z = z_buf[:n]
        h_c = hidden[start:end].to(mm_dtype)
        _mm_fp32(h_c, w_t, z, b32)
        loss_c, dz = step(
            z,
            targets[start:end],
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            softcap=softcap,
            row_scale=row_scale[start:end] if row_scale is not None else None,
            compute_grad=compute_grad,
            dz_out=dz_buf[:n] if dz_buf is not None else None,
        )
        loss[start:end] = loss_c
        if not compute_grad:
            continue
        assert dz is not None
        if need_h:
            gh = grad_h[start:end]
            if mm_dtype == hidden.dtype and h_scale is None:
                torch.mm(dz, w_mm, out=gh)
            else:
                gh_c = torch.mm(dz, w_mm)
                gh.copy_(gh_c.mul_(h_scale) if h_scale is not None else gh_c)
        if need_w:
            _mm_accumulate_fp32(grad_w32, dz.t(), h_c)
        if need_b:
            grad_b32.add_(dz.sum(dim=0, dtype=torch.float32))
    return (
        loss,
        grad_h,
        _finish(grad_w32, weight.dtype, grad_scale),
        _finish(grad_b32, weight.dtype, grad_scale),
    )


def _finish(acc: torch.Tensor | None, dtype: torch.dtype, scale: torch.Tensor | None) -> torch.Tensor | None:
    if acc is None:
        return None
    if scale is not None:
        acc.mul_(scale)
    return acc.to(dtype)


def entropy_chunk_torch(z: torch.Tensor, *, softcap: float | None) -> torch.Tensor:
    """Entropy fp32 [c] (nats) of each row of the fp32 logits chunk ``z [c, V]`` (overwritten)."""
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    z_max, argmax = z.max(dim=1, keepdim=True)
    p = torch.softmax(z, dim=1)
    lse = z_max - torch.log(p.gather(1, argmax))
    # H = -sum_j p_j (z_j - lse): subtracting lse first avoids the cancellation of lse - sum_j p_j z_j
    # when the logits are large; the row dot products run as one batched GEMV, no [c, V] temporary.
    z.sub_(lse)
    return -torch.bmm(p[:, None, :], z[:, :, None])[:, 0, 0]


def entropy_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    step: Callable[..., torch.Tensor],
    softcap: float | None,
    chunk_size: int | None,
) -> torch.Tensor:
    """Per-token entropy fp32 [T] of ``softmax(hidden @ weight.T + bias)``, one logits chunk at a time."""
    T = hidden.shape[0]
    V = weight.shape[0]
    device = hidden.device
    mm_dtype = gemm_dtype(device, hidden.dtype)
    w_t = weight.to(mm_dtype).t()
    b32 = bias.to(torch.float32) if bias is not None else None
    # the torch step holds the probabilities beside the logits
    c = choose_chunk_size(T, V, device, extra_row_bytes=4 * V, override=chunk_size)
    out = torch.empty(T, dtype=torch.float32, device=device)
    if T == 0:
        return out
    z_buf = torch.empty(c, V, dtype=torch.float32, device=device)
    for start in range(0, T, c):
        end = min(start + c, T)
        z = z_buf[: end - start]
        _mm_fp32(hidden[start:end].to(mm_dtype), w_t, z, b32)
        out[start:end] = step(z, softcap=softcap)
    return out
