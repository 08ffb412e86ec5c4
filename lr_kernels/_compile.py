"""What `python -m lr_kernels.report` builds, and how launchers pick per-GPU configurations.

Each module with Triton kernels exposes ``report_cases(arch) -> list[ReportCase]``: representative calls
of its own launchers. The report runs them on small CPU tensors with Triton's launch path pointed at a
stand-in GPU of compute capability ``arch`` (``device_arch`` returns that arch to the launchers), so each
kernel is specialized by Triton itself — pointer alignment, divisibility of integers, integer widths,
num_warps, num_stages — exactly as a launch on that GPU would, and then compiled.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

_TARGET_ARCH: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "lr_kernels_target_arch", default=None
)


@dataclass(frozen=True)
class ReportCase:
    """One representative call of a module's launchers, for the compile report."""

    name: str  # e.g. "attention bf16 D=128 GQA4 causal rope=True"
    launch: Callable[[], Any]  # calls the real launchers on small CPU tensors
    dtype: str  # "fp16" | "bf16" | "fp32"
    head_dim: int | None = None
    # True/False for the twin cases with RoPE fused and without it: `loop_ratio` compares each kernel's
    # main loop between the two. None where RoPE does not apply.
    rope: bool | None = None
    # Kernels (by name, "attention_fwd") built around tl.dot: `--check` fails unless their SASS holds
    # tensor-core instructions (HMMA on sm_80, HGMMA or HMMA on sm_90).
    matmul: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)  # shown in the report


def device_arch(t: torch.Tensor) -> int | None:
    """Compute capability (e.g. 90) whose tuned configs a launch on ``t`` uses; None for the interpreter.

    Inside ``target_arch(arch)`` this is ``arch`` whatever the device, which is how the compile report
    (and tests running the GPU tiles in the interpreter) make launchers pick a GPU's configuration.
    """
    forced = _TARGET_ARCH.get()
    if forced is not None:
        return forced
    if t.device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(t.device)
    return major * 10 + minor


@contextlib.contextmanager
def target_arch(arch: int | None) -> Iterator[None]:
    """Make ``device_arch`` return ``arch`` inside the block."""
    token = _TARGET_ARCH.set(arch)
    try:
        yield
    finally:
        _TARGET_ARCH.reset(token)
