"""Probe kernels with known compile results, for tests/test_report.py (a module so that the report's
spawned worker processes can import it: they rebuild each case from ``report_cases``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lr_kernels._compile import ReportCase


@triton.jit
def probe_dot_kernel(A, B, C, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    b_a = tl.load(A + offs_m[:, None] * BK + offs_k[None, :])
    b_b = tl.load(B + offs_k[:, None] * BN + offs_n[None, :])
    tl.store(C + offs_m[:, None] * BN + offs_n[None, :], tl.dot(b_a, b_b))  # [BM, BK] @ [BK, BN]


@triton.jit
def probe_loop_dot_kernel(A, B, C, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # A [BM, K] @ B [K, BN] over K in BK steps: one main loop holding the tensor-core instructions.
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k in range(0, K, BK):
        b_a = tl.load(A + offs_m[:, None] * K + (k + offs_k)[None, :])
        b_b = tl.load(B + (k + offs_k)[:, None] * BN + offs_n[None, :])
        acc = tl.dot(b_a, b_b, acc)
    tl.store(C + offs_m[:, None] * BN + offs_n[None, :], acc)


@triton.jit
def probe_add_kernel(X, Y, Z, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    tl.store(Z + offs, tl.load(X + offs, mask=m) + tl.load(Y + offs, mask=m), mask=m)


def _dot(**options):
    def launch():
        a = torch.zeros(64, 32, dtype=torch.float16)
        b = torch.zeros(32, 64, dtype=torch.float16)
        c = torch.zeros(64, 64, dtype=torch.float32)
        probe_dot_kernel[(1,)](a, b, c, BM=64, BN=64, BK=32, num_warps=4, num_stages=1, **options)

    return launch


def _loop_dot():
    a = torch.zeros(64, 256, dtype=torch.float16)
    b = torch.zeros(256, 64, dtype=torch.float16)
    c = torch.zeros(64, 64, dtype=torch.float32)
    probe_loop_dot_kernel[(1,)](a, b, c, 256, BM=64, BN=64, BK=32, num_warps=4)


def _add():
    x = torch.zeros(4096)
    probe_add_kernel[(4,)](x, x, torch.zeros(4096), 4096, BLOCK=1024, num_warps=4)


def report_cases(arch: int) -> list[ReportCase]:
    cases = [
        ReportCase("dot", _dot(), "fp16", matmul=frozenset({"probe_dot"})),
        ReportCase("loop dot", _loop_dot, "fp16", matmul=frozenset({"probe_loop_dot"})),
        ReportCase("add", _add, "fp32"),
    ]
    if arch == 80:
        # A 64x64x32 dot squeezed into 32 registers per thread must spill, and the report must see it
        # (sm_90's warpgroup MMA cannot be built in 32 registers at all: ptxas refuses).
        cases.append(ReportCase("dot maxnreg=32", _dot(maxnreg=32), "fp16"))
    return cases
