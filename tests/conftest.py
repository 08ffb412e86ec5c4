"""Test setup: Triton kernels run in the interpreter on CPU-only machines; fresh outputs are NaN-filled."""

import os

import pytest
import torch

# Threads for the cores this process may use, not the machine's: oversubscribed OpenMP threads make CPU
# runs many times slower on shared or CPU-limited machines (CI has 2 cores).
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
os.environ.setdefault("OMP_NUM_THREADS", str(_CORES))
torch.set_num_threads(min(torch.get_num_threads(), _CORES))

if not torch.cuda.is_available():
    # Must be set before triton.jit decorates any kernel (i.e. before lr_kernels is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

_real_empty = torch.empty
_real_empty_like = torch.empty_like


def _nan_fill(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() and t.numel() > 0:
        t.fill_(float("nan"))
    return t


def _empty_nan(*args, **kwargs):
    return _nan_fill(_real_empty(*args, **kwargs))


def _empty_like_nan(*args, **kwargs):
    return _nan_fill(_real_empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    """Every ``torch.empty``/``torch.empty_like`` float output starts as NaN, so an unwritten block fails."""
    monkeypatch.setattr(torch, "empty", _empty_nan)
    monkeypatch.setattr(torch, "empty_like", _empty_like_nan)
    yield


@pytest.fixture
def triton_backend() -> str:
    """The backend name that runs the Triton kernels here (interpreter on CPU)."""
    return "triton"


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
