"""Argument checking and backend selection shared by every op."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch

BACKENDS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Map ``backend`` ("auto" | "triton" | "torch") to the implementation that will run.

    "auto" picks Triton when the tensors live on a CUDA device and the PyTorch path otherwise.
    "triton" on CPU tensors needs the interpreter (``TRITON_INTERPRET=1``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = any(t.is_cuda for t in tensors)
    if backend == "auto":
        return "triton" if on_cuda else "torch"
    if backend == "triton" and not on_cuda and not interpreter_enabled():
        raise ValueError(
            "backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before importing lr_kernels, or use backend='torch'"
        )
    return backend


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    device: torch.device | None = None,
    contiguous: bool = False,
) -> torch.Tensor:
    """Raise ValueError naming ``name`` unless ``t`` is a tensor of the expected rank/dtype/device.

    Returns ``t``, or with ``contiguous=True`` ``t.contiguous()``. Index tensors (position ids,
    ``cu_seqlens``, ``inv_freq``, targets) are checked with ``contiguous=True``: kernels read them as dense
    arrays (``P + offs``), so a strided view (``pos[::2]``) is copied once here instead of being rejected.
    The copy is at most ``T`` integers, negligible beside the ``[T, H, D]`` activations.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise ValueError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (like the other inputs), got {t.device}")
    return t.contiguous() if contiguous else t


def check_same_dtype(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Raise ValueError unless all tensors share one dtype."""
    first = tensors[0].dtype
    for name, t in zip(names[1:], tensors[1:], strict=True):
        if t.dtype != first:
            raise ValueError(f"{name} must have the same dtype as {names[0]} ({first}), got {t.dtype}")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
