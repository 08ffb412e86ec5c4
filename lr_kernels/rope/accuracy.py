"""Measure RoPE angle error against float64: ``python -m lr_kernels.rope.accuracy [--n N] [--seed S]``.

Three ways of forming the angle ``pos * inv_freq`` are compared with the float64 product reduced
modulo 2*pi (``inv_freq`` taken as the exact float32 values the kernels see):

- triton: the in-kernel ``rope_angle`` (split position, FMA error terms, Cody-Waite reduction), run
  through a tiny kernel that stores the angles (interpreter on CPU, the compiled kernel on CUDA);
- triton cos/sin: the angle implied (``atan2(sin, cos)``) by the kernel's ``rope_cos_sin`` of that
  angle, i.e. everything the RoPE kernels feed into the rotation;
- torch: the angle implied by the float32 cos/sin the torch backend uses (``atan2(sin, cos)``);
- fp32: the plain ``pos.float() * inv_freq`` most RoPE code computes.

Errors are wrapped to (-pi, pi] so an angle off by a whole turn counts as exact.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import triton
import triton.language as tl

from lr_kernels.rope.angles import rope_angle, rope_cos_sin, rope_cos_sin_torch
from lr_kernels.rope.frequencies import rope_frequencies

DEFAULT_LIMITS = (2**20, 2**24, 2**28, 2**31)
DEFAULT_THETAS = (10_000.0, 500_000.0)
HEAD_DIM = 128


@triton.jit
def _angle_kernel(P, F, A, C, S, T, HALF: tl.constexpr, BT: tl.constexpr, BHALF: tl.constexpr):
    offs_t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    offs_d = tl.arange(0, BHALF)
    m_t = offs_t < T
    m_d = offs_d < HALF
    b_pos = tl.load(P + offs_t, mask=m_t, other=0)
    b_f = tl.load(F + offs_d, mask=m_d, other=0.0)
    b_ang = rope_angle(b_pos[:, None], b_f[None, :])
    b_cos, b_sin = rope_cos_sin(b_ang)
    offs = offs_t[:, None] * HALF + offs_d[None, :]
    m = m_t[:, None] & m_d[None, :]
    tl.store(A + offs, b_ang, mask=m)
    tl.store(C + offs, b_cos, mask=m)
    tl.store(S + offs, b_sin, mask=m)


def triton_angles(
    position_ids: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 ``[T, D/2]`` angles, cos and sin exactly as the RoPE kernels form them."""
    T, half = position_ids.shape[0], inv_freq.shape[0]
    ang, cos, sin = (
        torch.empty((T, half), dtype=torch.float32, device=position_ids.device) for _ in range(3)
    )
    BT = 64
    _angle_kernel[(triton.cdiv(T, BT),)](
        position_ids.contiguous(), inv_freq.contiguous(), ang, cos, sin, T, HALF=half, BT=BT,
        BHALF=triton.next_power_of_2(half),
    )  # fmt: skip
    return ang, cos, sin


def _wrapped_error(angle: torch.Tensor, exact: torch.Tensor) -> float:
    d = torch.remainder(angle.to(torch.float64) - exact + math.pi, 2 * math.pi) - math.pi
    return d.abs().max().item()


def test_positions(limit: int, n: int, seed: int) -> torch.Tensor:
    """``n`` random positions below ``limit`` plus the awkward ones just under it (not a power of two)."""
    g = torch.Generator().manual_seed(seed)
    edge = torch.tensor([limit - 1, limit - 3, limit - 5, limit // 2 + 1, 3 * limit // 4 - 1])
    return torch.cat((torch.randint(0, limit, (n,), generator=g), edge)).to(torch.int64)


def measure(limit: int, n: int = 4096, seed: int = 0, thetas=DEFAULT_THETAS) -> dict[str, float]:
    """Max wrapped angle error (rad) of the triton, torch and plain-fp32 angles for positions < limit."""
    errors = {"triton": 0.0, "triton_cos_sin": 0.0, "torch": 0.0, "fp32": 0.0}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for theta in thetas:
        inv_freq = rope_frequencies({"rope_type": "default", "rope_theta": theta}, head_dim=HEAD_DIM).inv_freq
        pos = test_positions(limit, n, seed)
        exact = torch.remainder(
            pos.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :], 2 * math.pi
        )
        tri, tri_cos, tri_sin = (t.cpu() for t in triton_angles(pos.to(device), inv_freq.to(device)))
        tri_implied = torch.atan2(tri_sin.to(torch.float64), tri_cos.to(torch.float64))
        cos, sin = rope_cos_sin_torch(pos, inv_freq)
        implied = torch.atan2(sin.to(torch.float64), cos.to(torch.float64))
        plain = pos.to(torch.float32)[:, None] * inv_freq[None, :]
        errors["triton"] = max(errors["triton"], _wrapped_error(tri, exact))
        errors["triton_cos_sin"] = max(errors["triton_cos_sin"], _wrapped_error(tri_implied, exact))
        errors["torch"] = max(errors["torch"], _wrapped_error(implied, exact))
        errors["fp32"] = max(errors["fp32"], _wrapped_error(plain, exact))
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="random positions per limit and theta")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        print(
            "no CUDA device: set TRITON_INTERPRET=1 to run the Triton angle kernel on the CPU",
            file=sys.stderr,
        )
        return 2
    print(f"max |angle - float64 angle| (rad), head_dim {HEAD_DIM}, rope_theta {DEFAULT_THETAS}, "
          f"{args.n} random positions + 5 edge positions per limit")  # fmt: skip
    print(f"{'positions <':>14} {'triton':>10} {'triton cos/sin':>15} {'torch':>10} {'plain fp32':>11}")
    for limit in DEFAULT_LIMITS:
        e = measure(limit, args.n, args.seed)
        cols = f"{e['triton']:>10.2e} {e['triton_cos_sin']:>15.2e} {e['torch']:>10.2e} {e['fp32']:>11.2e}"
        print(f"{limit:>14} {cols}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
