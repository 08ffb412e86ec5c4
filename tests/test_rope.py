"""apply_rope: Triton (interpreter on CPU) and torch backends against the float64 naive reference."""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

import lr_kernels as lk
from lr_kernels.rope import naive
from lr_kernels.rope.angles import rope_cos_sin
from lr_kernels.rope.fused import rope_bwd_op, rope_fwd_op

SHAPES = [(T, H, D) for T in (1, 17, 63, 130) for H in (1, 4) for D in (16, 64, 80, 128)]
POSITION_KINDS = ("contiguous", "remapped2e17", "upto2e20")
TOLERANCES = {
    # Both sides round the same float32/float64 result once; fp16/bf16 may differ by one output ulp.
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 8e-3, "atol": 8e-3},
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def make_positions(kind: str, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "contiguous":
        # Two packed sequences, each counting from 0, like an ordinary packed batch.
        split = T // 2
        return torch.cat((torch.arange(split), torch.arange(T - split)))
    if kind == "remapped2e17":
        return torch.sort(torch.randint(0, 2**17, (T,), generator=g)).values
    if kind == "upto2e20":
        pos = torch.randint(2**19, 2**20 + 1, (T,), generator=g)
        pos[: min(T, 3)] = torch.tensor([2**20 - 3, 2**20, 2**20 - 1])[: min(T, 3)]
        return pos
    raise AssertionError(kind)


def inv_freq_for(D: int, theta: float = 10_000.0) -> torch.Tensor:
    return lk.rope_frequencies({"rope_type": "default", "rope_theta": theta}, head_dim=D).inv_freq


def _cases(dtypes):
    params = []
    for i, (T, H, D) in enumerate(SHAPES):
        for j, kind in enumerate(POSITION_KINDS):
            for dtype in dtypes:
                scaling = 1.0 if (i + j) % 2 else 1.17
                tag = f"T{T}-H{H}-D{D}-{kind}-{DTYPE_NAMES[dtype]}-s{scaling}"
                params.append(pytest.param(T, H, D, kind, dtype, scaling, id=tag))
    return params


def _check_fwd_bwd(backend, T, H, D, kind, dtype, scaling):
    torch.manual_seed(T * 1000 + H * 100 + D)
    x = torch.randn(T, H, D, dtype=dtype)
    grad_out = torch.randn(T, H, D, dtype=dtype)
    pos = make_positions(kind, T, seed=D)
    inv_freq = inv_freq_for(D, theta=500_000.0 if D == 128 else 10_000.0)

    x_ours = x.clone().requires_grad_(True)
    out = lk.apply_rope(x_ours, pos, inv_freq, scaling, backend=backend)
    out.backward(grad_out)

    x_ref = x.clone().requires_grad_(True)
    ref = naive.apply_rope(x_ref, pos, inv_freq, scaling)
    ref.backward(grad_out)

    assert out.dtype == dtype and out.shape == (T, H, D) and out.is_contiguous()
    torch.testing.assert_close(out, ref, **TOLERANCES[dtype])
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **TOLERANCES[dtype])


@pytest.mark.parametrize(("T", "H", "D", "kind", "dtype", "scaling"), _cases((torch.float32, torch.float16)))
def test_triton_fwd_bwd(T, H, D, kind, dtype, scaling, triton_backend):
    _check_fwd_bwd(triton_backend, T, H, D, kind, dtype, scaling)


@pytest.mark.parametrize(
    ("T", "H", "D", "kind", "dtype", "scaling"), _cases((torch.float32, torch.float16, torch.bfloat16))
)
def test_torch_fwd_bwd(T, H, D, kind, dtype, scaling):
    _check_fwd_bwd("torch", T, H, D, kind, dtype, scaling)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("D", [16, 96, 256])
def test_backward_is_adjoint(backend, D):
    """<rope(x), g> == <x, rope_backward(g)> in float64 sums: the backward is the exact transpose."""
    torch.manual_seed(D)
    T, H = 33, 3
    x = torch.randn(T, H, D, requires_grad=True)
    g = torch.randn(T, H, D)
    pos = torch.randint(0, 2**24, (T,))
    out = lk.apply_rope(x, pos, inv_freq_for(D), 0.9, backend=backend)
    (gx,) = torch.autograd.grad(out, x, g)
    lhs = (out.double() * g.double()).sum()
    rhs = (x.detach().double() * gx.double()).sum()
    assert math.isclose(lhs.item(), rhs.item(), rel_tol=1e-5, abs_tol=1e-4)


def test_torch_gradcheck_fp64():
    T, H, D = 5, 2, 16
    x = torch.randn(T, H, D, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([0, 7, 2**20 - 3, 2**20, 3], dtype=torch.int64)
    inv_freq = inv_freq_for(D)
    assert torch.autograd.gradcheck(lambda t: lk.apply_rope(t, pos, inv_freq, 1.3, backend="torch"), (x,))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_positions_up_to_limit(backend):
    """Near the documented limit 2**28 - 1 the rotation still matches float64 angles."""
    T, H, D = 64, 2, 64
    torch.manual_seed(1)
    x = torch.randn(T, H, D)
    pos = torch.randint(2**27, 2**28, (T,))
    pos[0] = 2**28 - 1
    inv_freq = inv_freq_for(D)
    out = lk.apply_rope(x, pos, inv_freq, backend=backend)
    torch.testing.assert_close(out, naive.apply_rope(x, pos, inv_freq), rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("layout", ["head-major-transposed", "sliced-from-qkv"])
def test_strided_input(backend, layout):
    """x need not be contiguous across tokens/heads (e.g. a slice of a fused qkv projection)."""
    T, H, D = 37, 4, 80
    torch.manual_seed(2)
    if layout == "head-major-transposed":
        x = torch.randn(H, T, D).transpose(0, 1)
    else:
        x = torch.randn(T, H, 3 * D)[:, :, D : 2 * D]
    x.requires_grad_(True)
    pos = make_positions("remapped2e17", T)
    inv_freq = inv_freq_for(D)
    out = lk.apply_rope(x, pos, inv_freq, backend=backend)
    torch.testing.assert_close(out, naive.apply_rope(x.detach(), pos, inv_freq), **TOLERANCES[torch.float32])
    g = torch.randn(H, T, D).transpose(0, 1)  # a strided incoming gradient too
    (gx,) = torch.autograd.grad(out, x, g)
    (gx_ref,) = torch.autograd.grad(naive.apply_rope(x, pos, inv_freq), x, g)
    torch.testing.assert_close(gx, gx_ref, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_empty_input(backend):
    x = torch.randn(0, 4, 64)
    out = lk.apply_rope(x, torch.zeros(0, dtype=torch.int64), inv_freq_for(64), backend=backend)
    assert out.shape == (0, 4, 64)


def test_auto_backend_on_cpu_matches_torch():
    x = torch.randn(9, 2, 32)
    pos = torch.arange(9) * 1000
    f = inv_freq_for(32)
    torch.testing.assert_close(
        lk.apply_rope(x, pos, f), lk.apply_rope(x, pos, f, backend="torch"), rtol=0, atol=0
    )


def test_opcheck_registered_ops():
    T, H, D = 17, 3, 80
    pos = make_positions("upto2e20", T)
    inv_freq = inv_freq_for(D)
    for op in (rope_fwd_op, rope_bwd_op):
        x = torch.randn(T, H, D, requires_grad=True)
        torch.library.opcheck(op, (x, pos, inv_freq, 1.25))


def _bad(**overrides):
    args = {
        "x": torch.randn(5, 2, 16),
        "position_ids": torch.arange(5),
        "inv_freq": inv_freq_for(16),
        "attention_scaling": 1.0,
    }
    args.update(overrides)
    return args


BAD_INPUTS = [
    pytest.param(_bad(x=torch.randn(5, 16)), "x must have 3 dimensions", id="x-rank2"),
    pytest.param(_bad(x=torch.ones(5, 2, 16, dtype=torch.int32)), "x must have dtype", id="x-int"),
    pytest.param(_bad(x=torch.randn(5, 2, 18), inv_freq=inv_freq_for(18)[:9]), None, id="x-D18-ok"),
    pytest.param(_bad(x=torch.randn(5, 2, 15)), "head dim .* must be even", id="x-odd-D"),
    pytest.param(_bad(x=torch.randn(5, 2, 8), inv_freq=torch.ones(4)), "in \\[16, 256\\]", id="x-D8"),
    pytest.param(_bad(x=torch.randn(5, 2, 258), inv_freq=torch.ones(129)), "in \\[16, 256\\]", id="x-D258"),
    pytest.param(
        _bad(position_ids=torch.arange(5, dtype=torch.int32)), "position_ids must have dtype", id="pos-int32"
    ),
    pytest.param(
        _bad(position_ids=torch.arange(6)), "position_ids must have shape \\[T\\] = \\[5\\]", id="pos-len"
    ),
    pytest.param(
        _bad(position_ids=torch.arange(5)[None]), "position_ids must have 1 dimensions", id="pos-rank2"
    ),
    pytest.param(_bad(position_ids=torch.tensor([0, 1, -2, 3, 4])), "non-negative", id="pos-negative"),
    pytest.param(
        _bad(position_ids=torch.tensor([0, 1, 2**28, 3, 4])), "at most 2\\*\\*28 - 1", id="pos-2e28"
    ),
    pytest.param(
        _bad(position_ids=torch.arange(5, device="meta")),
        "position_ids must be on cpu",
        id="pos-other-device",
    ),
    pytest.param(_bad(inv_freq=torch.ones(7)), "inv_freq must have D/2 = 8 entries", id="freq-len"),
    pytest.param(
        _bad(inv_freq=torch.ones(8, dtype=torch.float64)), "inv_freq must have dtype", id="freq-fp64"
    ),
    pytest.param(
        _bad(inv_freq=torch.ones(8, requires_grad=True)), "inv_freq must not require grad", id="freq-grad"
    ),
    pytest.param(_bad(inv_freq=torch.ones(2, 4)), "inv_freq must have 1 dimensions", id="freq-rank2"),
    pytest.param(_bad(attention_scaling=float("nan")), "attention_scaling must be finite", id="scaling-nan"),
    pytest.param(_bad(attention_scaling="1.0"), "attention_scaling must be a float", id="scaling-str"),
    pytest.param(_bad(x=[[1.0]]), "x must be a torch.Tensor", id="x-list"),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(("args", "match"), BAD_INPUTS)
def test_bad_input(args, match, backend):
    if match is None:
        lk.apply_rope(**args, backend=backend)
        return
    with pytest.raises(ValueError, match=match):
        lk.apply_rope(**args, backend=backend)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        lk.apply_rope(**_bad(), backend="cuda")


def test_triton_rejects_fp64_torch_accepts():
    args = _bad(x=torch.randn(5, 2, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must have dtype"):
        lk.apply_rope(**args, backend="triton")
    assert lk.apply_rope(**args, backend="torch").dtype == torch.float64


@pytest.mark.parametrize(
    ("limit", "bound"), [(2**20, 1e-6), (2**24, 1e-6), (2**28, 3e-6)], ids=["2e20", "2e24", "2e28"]
)
def test_angle_accuracy(limit, bound):
    """In-kernel and torch-path angles vs float64, over random positions and the ones just below limit."""
    from lr_kernels.rope.accuracy import measure

    err = measure(limit, n=512)
    assert err["triton"] <= bound
    assert err["torch"] <= 1e-7
    # The plain float32 product is what the split/FMA reduction avoids; it is far off here.
    assert err["fp32"] >= 1e-2


@triton.jit
def _cos_sin_kernel(A, C, S, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    b_cos, b_sin = rope_cos_sin(tl.load(A + offs, mask=m, other=0.0))
    tl.store(C + offs, b_cos, mask=m)
    tl.store(S + offs, b_sin, mask=m)


def test_kernel_cos_sin_accuracy():
    """The in-kernel sin/cos over the whole range rope_angle returns, against float64 of the same input."""
    ang = torch.cat(
        (torch.linspace(-8.0, 8.0, 200_001), torch.tensor([0.0, math.pi / 4, -math.pi / 4, 7.9999]))
    )
    cos, sin = torch.empty_like(ang), torch.empty_like(ang)
    _cos_sin_kernel[(triton.cdiv(ang.numel(), 4096),)](ang, cos, sin, ang.numel(), BLOCK=4096)
    a64 = ang.double()
    assert (cos.double() - a64.cos()).abs().max().item() <= 1.2e-7
    assert (sin.double() - a64.sin()).abs().max().item() <= 1.2e-7
