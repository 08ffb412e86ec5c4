"""Accurate RoPE angles for large position ids.

The angle of position ``p`` and frequency ``f`` is ``p * f``. At ``p = 2**20`` and ``f`` near 1 that is
about 1e6 rad, where one float32 ulp is 0.06 rad, so the plain float32 product is off by up to ~3e-2 rad.
We never form the large angle: ``p`` is split into ``p_hi + p_lo`` (both exact in float32), each partial
product is split by an FMA into its rounded value and its exact rounding error, the rounded values are
reduced modulo 2*pi with a three-part Cody-Waite constant, and the small pieces are summed. Float32
arithmetic only (fast on every GPU; exact in the Triton interpreter too, whose fma rounds once).

Measured against ``float64(p) * float64(f)`` reduced modulo 2*pi (``python -m lr_kernels.rope.accuracy``):
at most 6e-7 rad for positions below 2**25, growing linearly past 2**26 (1e-6 at 2**27, 2.3e-6 at 2**28,
2e-5 at 2**31) because the reduction multiple ``k`` is no longer an exact float32 integer there. Callers
reject positions above ``MAX_ANGLE_POSITION``, where the error stays below 3e-6 rad.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# 2*pi = TWO_PI_A + TWO_PI_B + TWO_PI_C, each a float32. Globals read inside @triton.jit code must be
# tl.constexpr instances (an annotation alone works in the interpreter but fails to compile).
TWO_PI_A = tl.constexpr(6.2831854820251465)
TWO_PI_B = tl.constexpr(-1.7484555314695172e-07)
TWO_PI_C = tl.constexpr(-6.8604980400235275e-15)
INV_TWO_PI = tl.constexpr(0.15915493667125702)
POS_SPLIT = tl.constexpr(4096)

# pi/2 = HALF_PI_A + HALF_PI_B + HALF_PI_C (float32 each), for the quadrant reduction in rope_cos_sin.
HALF_PI_A = tl.constexpr(1.5707963705062866)
HALF_PI_B = tl.constexpr(-4.371138828673793e-08)
HALF_PI_C = tl.constexpr(-1.7151245100058819e-15)
TWO_OVER_PI = tl.constexpr(0.6366197466850281)
# Minimax polynomials for sin and cos on [-pi/4, pi/4] (Cephes sinf/cosf), ~1 float32 ulp.
SIN_P0 = tl.constexpr(-1.9515295891e-4)
SIN_P1 = tl.constexpr(8.3321608736e-3)
SIN_P2 = tl.constexpr(-1.6666654611e-1)
COS_P0 = tl.constexpr(2.443315711809948e-5)
COS_P1 = tl.constexpr(-1.388731625493765e-3)
COS_P2 = tl.constexpr(4.166664568298827e-2)

MAX_ANGLE_POSITION = 2**28 - 1
"""Largest position id for which ``rope_angle`` is within 3e-6 rad of the float64 angle."""


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
    """Angle ``pos * inv_freq`` modulo 2*pi (within (-2*pi, 2*pi)) in float32.

    ``pos`` int64 [BM, 1] with 0 <= pos <= MAX_ANGLE_POSITION, ``inv_freq`` fp32 [1, BD] -> fp32 [BM, BD].
    """
    p_hi = ((pos // POS_SPLIT) * POS_SPLIT).to(tl.float32)
    p_lo = (pos % POS_SPLIT).to(tl.float32)
    return _reduce_product(p_hi, inv_freq) + _reduce_product(p_lo, inv_freq)


@triton.jit
def rope_cos_sin(angle):
    """``(cos(angle), sin(angle))`` in float32 for the small angles ``rope_angle`` returns (|angle| < 8).

    One quadrant reduction serves both: ``angle = k * pi/2 + r`` with ``|r| <= pi/4`` (exact: ``k`` is
    at most 5 and pi/2 is split in three parts), then short polynomials and a quadrant swap. Unlike
    ``tl.cos``/``tl.sin`` (libdevice, which carries a huge-argument reduction path and its table) this is
    a few dozen instructions, and the Triton interpreter runs exactly this code, so CPU tests cover it.
    """
    k = tl.floor(angle * TWO_OVER_PI + 0.5)
    r = tl.fma(-k, HALF_PI_A, angle)
    r = tl.fma(-k, HALF_PI_B, r)
    r = tl.fma(-k, HALF_PI_C, r)
    z = r * r
    s = r + r * z * ((SIN_P0 * z + SIN_P1) * z + SIN_P2)
    c = 1.0 - 0.5 * z + z * z * ((COS_P0 * z + COS_P1) * z + COS_P2)
    # angle = r + q * pi/2: rotate (cos r, sin r) by q quarter turns (q = k mod 4, also for k < 0).
    q = k.to(tl.int32) & 3
    cos = tl.where(q == 0, c, tl.where(q == 1, -s, tl.where(q == 2, -c, s)))
    sin = tl.where(q == 0, s, tl.where(q == 1, c, tl.where(q == 2, -s, -c)))
    return cos, sin


def rope_angle_torch(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Reference angles in float64: ``position_ids [T] x inv_freq [D/2] -> [T, D/2]`` modulo 2*pi."""
    ang = position_ids.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    return torch.remainder(ang, 2 * math.pi)


def rope_cos_sin_torch(
    position_ids: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos and sin, each [T, D/2], computed from float64 angles."""
    ang = rope_angle_torch(position_ids, inv_freq)
    return ang.cos().to(torch.float32), ang.sin().to(torch.float32)
