"""Accurate RoPE angles for large position ids.

The angle of position ``p`` and frequency ``f`` is ``p * f``. At ``p = 2**20`` and ``f`` near 1 that is
about 1e6 rad, where one float32 ulp is 0.06 rad, so the plain float32 product is off by up to ~3e-2 rad.
We never form the large angle: ``p`` is split into ``p_hi + p_lo`` (both exact in float32), each partial
product is split by an FMA into its rounded value and its exact rounding error, the rounded values are
reduced modulo 2*pi with a three-part Cody-Waite constant, and the small pieces are summed. The result
matches ``float64(p) * float64(f)`` reduced modulo 2*pi to ~1e-6 rad for positions up to 2**31,
using float32 arithmetic only (fast on every GPU, exact in the Triton interpreter, whose fma is exact).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# 2*pi = TWO_PI_A + TWO_PI_B + TWO_PI_C, each a float32.
TWO_PI_A: tl.constexpr = 6.2831854820251465
TWO_PI_B: tl.constexpr = -1.7484555314695172e-07
TWO_PI_C: tl.constexpr = -6.8604980400235275e-15
INV_TWO_PI: tl.constexpr = 0.15915493667125702
POS_SPLIT: tl.constexpr = 4096


@triton.jit
def _reduce_product(x, f):
    # x, f float32; returns (x * f) mod 2*pi as a small float32 plus the exact rounding error.
    a = x * f
    err = tl.fma(x, f, -a)
    k = tl.floor(a * INV_TWO_PI + 0.5)
    r = tl.fma(-k, TWO_PI_A, a)
    r = tl.fma(-k, TWO_PI_B, r)
    r = tl.fma(-k, TWO_PI_C, r)
    return r + err


@triton.jit
def rope_angle(pos, inv_freq):
    """Angle ``pos * inv_freq`` modulo 2*pi in float32; ``pos`` int64 [BM, 1], ``inv_freq`` fp32 [1, BD]."""
    p_hi = ((pos // POS_SPLIT) * POS_SPLIT).to(tl.float32)
    p_lo = (pos % POS_SPLIT).to(tl.float32)
    return _reduce_product(p_hi, inv_freq) + _reduce_product(p_lo, inv_freq)


def rope_angle_torch(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Reference angles in float64: ``position_ids [T] x inv_freq [D/2] -> [T, D/2]`` modulo 2*pi."""
    ang = position_ids.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    return torch.remainder(ang, 2 * math.pi)


def rope_cos_sin_torch(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos and sin, each [T, D/2], computed from float64 angles."""
    ang = rope_angle_torch(position_ids, inv_freq)
    return ang.cos().to(torch.float32), ang.sin().to(torch.float32)
