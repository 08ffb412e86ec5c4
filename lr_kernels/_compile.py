"""Ahead-of-time compilation specs: what `python -m lr_kernels.report` builds for real GPUs.

Each module with Triton kernels exposes ``report_specs(arch: int) -> list[KernelSpec]`` built from the
same config-selection code its launcher uses, so the report shows exactly the configurations we ship.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class KernelSpec:
    kernel: str  # name shown in the report, e.g. "attention_fwd"
    fn: Any  # the @triton.jit function
    signature: dict[str, str]  # triton signature: {"Q": "*fp16", "T": "i32", "BM": "constexpr", ...}
    constexprs: dict[str, Any]  # values of the constexpr arguments
    arch: int  # 80 or 90
    dtype: str  # "fp16" | "bf16" | "fp32"
    head_dim: int | None = None
    num_warps: int = 4
    num_stages: int = 2
    extra: dict[str, Any] = field(default_factory=dict)  # shown in the report (e.g. tile sizes)
    # True for kernels built around tl.dot: `python -m lr_kernels.report --check` then fails unless the
    # SASS holds tensor-core instructions (HMMA on sm_80, HGMMA or HMMA on sm_90).
    matmul: bool = False
