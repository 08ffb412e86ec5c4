"""varlen_attention (Triton in the interpreter, and the PyTorch backend) against the naive reference.

The reference runs in float64 on the same inputs. fp32 results must match it to 1e-4; fp16/bf16
results must be within twice the error of the reference itself run in that low precision (plus a
tiny floor), the usual flash-attention criterion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

import lr_kernels as lk
from lr_kernels._compile import device_arch, target_arch
from lr_kernels.attention import flash
from lr_kernels.attention.flash import AttentionParams, attention_bwd, attention_fwd
from lr_kernels.attention.naive import naive_varlen_attention


@dataclass(frozen=True)
class Case:
    lens: tuple[int, ...]
    H: int
    Hkv: int
    D: int
    causal: bool
    positions: str  # "none" | "contiguous" | "remap17" | "remap20"
    attention_scaling: float = 1.0
    softmax_scale: float | None = None
    fused_qkv: bool = False  # q, k, v as strided views of one [T, H + 2*Hkv, D] tensor

    @property
    def id(self) -> str:
        lens = "T" + "+".join(map(str, self.lens))
        mode = "causal" if self.causal else "full"
        extra = "-qkvview" if self.fused_qkv else ""
        extra += f"-as{self.attention_scaling}" if self.attention_scaling != 1.0 else ""
        extra += "-scale" if self.softmax_scale is not None else ""
        return f"{lens}-H{self.H}-Hkv{self.Hkv}-D{self.D}-{mode}-rope_{self.positions}{extra}"


# Covers T in {1, 17, 63, 130}, packed batches, GQA 2:1 and 4:1 (and MHA), head dims 16/64/80/128,
# causal and full, no RoPE / contiguous / remapped up to 2**17 and 2**20, without a full cross product.
CASES = [
    Case((1,), 2, 1, 16, True, "none"),
    Case((17,), 4, 2, 64, True, "contiguous"),
    Case((63,), 4, 1, 80, False, "remap17", attention_scaling=1.2),
    Case((130,), 2, 2, 128, True, "remap20"),
    Case((1, 17, 63, 49), 4, 2, 64, True, "remap20", fused_qkv=True),
    Case((1, 17, 63, 49), 4, 1, 16, False, "none"),
    Case((5, 33, 2), 4, 4, 80, True, "contiguous", softmax_scale=0.3),
    Case((130, 7), 4, 2, 128, True, "remap17", attention_scaling=0.9),
]

# (case, dtype) pairs run through the Triton interpreter; each case runs in fp32 or fp16 (or both).
TRITON_PARAMS = [
    pytest.param(CASES[0], torch.float32, id=CASES[0].id + "-fp32"),
    pytest.param(CASES[0], torch.float16, id=CASES[0].id + "-fp16"),
    pytest.param(CASES[1], torch.float16, id=CASES[1].id + "-fp16"),
    pytest.param(CASES[2], torch.float32, id=CASES[2].id + "-fp32"),
    pytest.param(CASES[3], torch.float16, id=CASES[3].id + "-fp16"),
    pytest.param(CASES[4], torch.float32, id=CASES[4].id + "-fp32"),
    pytest.param(CASES[5], torch.float16, id=CASES[5].id + "-fp16"),
    pytest.param(CASES[6], torch.float16, id=CASES[6].id + "-fp16"),
    pytest.param(CASES[7], torch.float32, id=CASES[7].id + "-fp32"),
]
TORCH_PARAMS = [
    pytest.param(case, dtype, id=f"{case.id}-{name}")
    for case in CASES
    for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16"))
]


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = sum(case.lens)
    cu_seqlens = torch.tensor([0, *torch.tensor(case.lens).cumsum(0).tolist()], dtype=torch.int32)
    if case.fused_qkv:
        qkv = torch.randn(T, case.H + 2 * case.Hkv, case.D, generator=g).to(dtype)
        q, k, v = qkv.split([case.H, case.Hkv, case.Hkv], dim=1)
    else:
        q = torch.randn(T, case.H, case.D, generator=g).to(dtype)
        k = torch.randn(T, case.Hkv, case.D, generator=g).to(dtype)
        v = torch.randn(T, case.Hkv, case.D, generator=g).to(dtype)
    do = torch.randn(T, case.H, case.D, generator=g).to(dtype)
    position_ids = inv_freq = None
    if case.positions != "none":
        if case.positions == "contiguous":
            position_ids = torch.cat([torch.arange(n) for n in case.lens])
        else:
            # Sorted random positions with gaps, per sequence, as LongRecipe's remapping produces.
            top = 2**17 if case.positions == "remap17" else 2**20
            parts = []
            for n in case.lens:
                p = torch.randperm(top, generator=g)[:n].sort().values
                p[-1] = top - 1  # make sure the largest position is really reached
                parts.append(p.sort().values)
            position_ids = torch.cat(parts)
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, case.D, 2, dtype=torch.float32) / case.D))
    return q, k, v, do, cu_seqlens, position_ids, inv_freq


def run(fn, case, q, k, v, do, cu_seqlens, position_ids, inv_freq, **kw):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(
        q, k, v, cu_seqlens, max(case.lens), causal=case.causal, softmax_scale=case.softmax_scale,
        position_ids=position_ids, inv_freq=inv_freq, attention_scaling=case.attention_scaling, **kw,
    )  # fmt: skip
    out.backward(do)
    return [out.detach(), q.grad, k.grad, v.grad]


def check_against_reference(case: Case, dtype: torch.dtype, backend: str) -> None:
    q, k, v, do, cu_seqlens, position_ids, inv_freq = make_inputs(case, dtype)
    got = run(lk.varlen_attention, case, q, k, v, do, cu_seqlens, position_ids, inv_freq, backend=backend)
    as64 = [t.double() for t in (q, k, v, do)]
    ref = run(naive_varlen_attention, case, *as64, cu_seqlens, position_ids, inv_freq)
    names = ("out", "dq", "dk", "dv")
    if dtype == torch.float32:
        for name, g, r in zip(names, got, ref, strict=True):
            torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
        return
    low = run(naive_varlen_attention, case, q, k, v, do, cu_seqlens, position_ids, inv_freq)
    for name, g, r, lo in zip(names, got, ref, low, strict=True):
        assert g.dtype == dtype and g.shape == r.shape
        err = (g.double() - r).abs().max().item()
        ref_err = (lo.double() - r).abs().max().item()
        assert err <= 2 * ref_err + 1e-4, (
            f"{name}: error {err:.3g} vs reference-in-{dtype} error {ref_err:.3g}"
        )


@pytest.mark.parametrize(("case", "dtype"), TRITON_PARAMS)
def test_triton_matches_reference(case, dtype, triton_backend):
    check_against_reference(case, dtype, triton_backend)


@pytest.mark.parametrize(("case", "dtype"), TORCH_PARAMS)
def test_torch_backend_matches_reference(case, dtype):
    check_against_reference(case, dtype, "torch")


def test_auto_backend_on_cpu_is_torch(monkeypatch):
    case = CASES[1]
    q, k, v, _, cu_seqlens, position_ids, inv_freq = make_inputs(case, torch.float32)
    called = []
    import lr_kernels.attention.interface as interface

    real = interface.varlen_attention_torch
    monkeypatch.setattr(
        interface, "varlen_attention_torch", lambda *a, **kw: called.append(1) or real(*a, **kw)
    )
    lk.varlen_attention(q, k, v, cu_seqlens, 17, position_ids=position_ids, inv_freq=inv_freq)
    assert called == [1]


def test_fresh_outputs_fully_written(triton_backend):
    """Grid larger than needed (max_seqlen > longest) and lengths off the tile sizes: every element of
    o, lse, dq, dk, dv must be written (torch.empty is NaN-filled by conftest)."""
    assert torch.empty(3).isnan().all(), "conftest NaN-fill fixture is not active"
    case = Case((1, 17, 63, 49), 4, 2, 80, True, "contiguous")
    q, k, v, do, cu_seqlens, position_ids, inv_freq = make_inputs(case, torch.float32)
    p = AttentionParams(max_seqlen=100, causal=True, softmax_scale=1 / math.sqrt(80), attention_scaling=1.0)
    o, lse = attention_fwd(q, k, v, cu_seqlens, position_ids, inv_freq, p)
    dq, dk, dv = attention_bwd(do, q, k, v, o, lse, cu_seqlens, position_ids, inv_freq, p)
    for name, t in (("o", o), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), f"{name} has unwritten (NaN) elements"


def test_rope_positions_matter_only_through_differences_when_contiguous():
    """Shifting every position by a constant leaves attention unchanged (RoPE is relative)."""
    case = CASES[1]
    q, k, v, _, cu_seqlens, position_ids, inv_freq = make_inputs(case, torch.float32)
    a = lk.varlen_attention(
        q, k, v, cu_seqlens, 17, position_ids=position_ids, inv_freq=inv_freq, backend="torch"
    )
    shifted = position_ids + 2**20 - 17
    b = lk.varlen_attention(q, k, v, cu_seqlens, 17, position_ids=shifted, inv_freq=inv_freq, backend="torch")
    c = lk.varlen_attention(
        q, k, v, cu_seqlens, 17, position_ids=position_ids * 3, inv_freq=inv_freq, backend="torch"
    )
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    assert (a - c).abs().max() > 1e-2  # different relative distances do change the result


# ---------------------------------------------------------------------------------------------------
# Bad input


def _good():
    T, H, Hkv, D = 10, 4, 2, 32
    return dict(
        q=torch.randn(T, H, D), k=torch.randn(T, Hkv, D), v=torch.randn(T, Hkv, D),
        cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32), max_seqlen=6,
        position_ids=torch.arange(T), inv_freq=torch.rand(D // 2),
    )  # fmt: skip


BAD = [
    ("q", lambda a: a.update(q=a["q"][0]), "q must have 3 dimensions"),
    ("q-list", lambda a: a.update(q=[[1.0]]), "q must be a torch.Tensor"),
    ("q-int", lambda a: a.update(q=a["q"].long()), "q must have dtype"),
    ("k-dtype", lambda a: a.update(k=a["k"].double()), "k must have dtype"),
    ("v-dtype", lambda a: a.update(v=a["v"].half()), "v must have the same dtype as q"),
    ("k-shape", lambda a: a.update(k=a["k"][:9]), "k must have shape"),
    ("k-headdim", lambda a: a.update(k=a["k"][..., :16]), "k must have shape"),
    ("v-shape", lambda a: a.update(v=a["v"][:, :1]), "v must have the same shape as k"),
    ("gqa", lambda a: a.update(k=torch.randn(10, 3, 32), v=torch.randn(10, 3, 32)), "must divide q heads"),
    (
        "headdim-small",
        lambda a: a.update(q=a["q"][..., :8], k=a["k"][..., :8], v=a["v"][..., :8]),
        "head dim",
    ),
    (
        "headdim-big",
        lambda a: a.update(q=torch.randn(10, 4, 288), k=torch.randn(10, 2, 288), v=torch.randn(10, 2, 288)),
        "head dim",
    ),
    (
        "headdim-odd",
        lambda a: a.update(q=a["q"][..., :17], k=a["k"][..., :17], v=a["v"][..., :17]),
        "head dim",
    ),
    ("empty", lambda a: a.update(q=a["q"][:0], k=a["k"][:0], v=a["v"][:0]), "T >= 1"),
    ("cu-dtype", lambda a: a.update(cu_seqlens=a["cu_seqlens"].long()), "cu_seqlens must have dtype"),
    ("cu-rank", lambda a: a.update(cu_seqlens=a["cu_seqlens"][None]), "cu_seqlens must have 1 dimensions"),
    ("cu-short", lambda a: a.update(cu_seqlens=a["cu_seqlens"][:1]), "cu_seqlens must have B\\+1 >= 2"),
    ("cu-start", lambda a: a.update(cu_seqlens=torch.tensor([1, 4, 10], dtype=torch.int32)), "start at 0"),
    ("cu-end", lambda a: a.update(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32)), "end at T"),
    (
        "cu-decreasing",
        lambda a: a.update(cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32)),
        "strictly increasing",
    ),
    (
        "cu-repeat",
        lambda a: a.update(cu_seqlens=torch.tensor([0, 4, 4, 10], dtype=torch.int32)),
        "strictly increasing",
    ),
    ("max_seqlen-small", lambda a: a.update(max_seqlen=5), "max_seqlen must be >= the longest"),
    ("max_seqlen-type", lambda a: a.update(max_seqlen=6.0), "max_seqlen must be a positive int"),
    ("causal", lambda a: a.update(causal=1), "causal must be a bool"),
    ("softmax_scale", lambda a: a.update(softmax_scale=-1.0), "softmax_scale must be > 0"),
    ("attention_scaling", lambda a: a.update(attention_scaling=float("nan")), "attention_scaling must be"),
    ("pos-alone", lambda a: a.update(inv_freq=None), "position_ids and inv_freq must be given together"),
    ("freq-alone", lambda a: a.update(position_ids=None), "position_ids and inv_freq must be given together"),
    (
        "scaling-without-rope",
        lambda a: a.update(position_ids=None, inv_freq=None, attention_scaling=2.0),
        "attention_scaling applies to RoPE",
    ),
    ("pos-dtype", lambda a: a.update(position_ids=a["position_ids"].int()), "position_ids must have dtype"),
    ("pos-shape", lambda a: a.update(position_ids=a["position_ids"][:9]), "position_ids must have shape"),
    ("pos-negative", lambda a: a["position_ids"].__setitem__(3, -1), "position_ids must be >= 0"),
    ("pos-too-large", lambda a: a["position_ids"].__setitem__(3, 2**28), "position_ids must be <="),
    ("freq-dtype", lambda a: a.update(inv_freq=a["inv_freq"].double()), "inv_freq must have dtype"),
    ("freq-length", lambda a: a.update(inv_freq=a["inv_freq"][:15]), "inv_freq must have shape"),
    ("device", lambda a: a.update(k=a["k"].to("meta")), "k must be on cpu"),
    ("backend", lambda a: a.update(backend="cuda"), "backend must be one of"),
]


@pytest.mark.parametrize(("mutate", "message"), [pytest.param(m, msg, id=i) for i, m, msg in BAD])
def test_bad_input_raises_value_error(mutate, message):
    args = _good()
    mutate(args)
    q, k, v, cu, max_seqlen = (args.pop(n) for n in ("q", "k", "v", "cu_seqlens", "max_seqlen"))
    with pytest.raises(ValueError, match=message):
        lk.varlen_attention(q, k, v, cu, max_seqlen, **args)


def test_good_input_passes_validation():
    args = _good()
    q, k, v, cu, max_seqlen = (args.pop(n) for n in ("q", "k", "v", "cu_seqlens", "max_seqlen"))
    assert lk.varlen_attention(q, k, v, cu, max_seqlen, backend="torch", **args).shape == q.shape


# ---------------------------------------------------------------------------------------------------
# cu_seqlens_from_position_ids


@pytest.mark.parametrize(
    ("positions", "cu", "max_seqlen"),
    [
        pytest.param([0], [0, 1], 1, id="single-token"),
        pytest.param([0, 1, 2, 3], [0, 4], 4, id="one-sequence"),
        pytest.param([0, 1, 2, 0, 1, 0], [0, 3, 5, 6], 3, id="three-sequences"),
        pytest.param([0, 7, 900, 2**20, 5, 6, 99], [0, 4, 7], 4, id="remapped-gaps"),
        pytest.param([3, 4, 4, 5], [0, 2, 4], 2, id="repeat-starts-new"),
        pytest.param([[0, 1, 0, 1, 2]], [0, 2, 5], 3, id="batch-of-one-2d"),
    ],
)
def test_cu_seqlens_from_position_ids(positions, cu, max_seqlen):
    got_cu, got_max = lk.cu_seqlens_from_position_ids(torch.tensor(positions))
    assert got_cu.dtype == torch.int32
    assert got_cu.tolist() == cu
    assert got_max == max_seqlen and isinstance(got_max, int)


def test_cu_seqlens_roundtrip_drives_attention():
    position_ids = torch.cat([torch.arange(5), torch.arange(11), torch.arange(3)])
    cu, max_seqlen = lk.cu_seqlens_from_position_ids(position_ids)
    q = torch.randn(19, 2, 16, dtype=torch.float64)
    ref = naive_varlen_attention(q, q, q, torch.tensor([0, 5, 16, 19]), 11)
    got = lk.varlen_attention(q.float(), q.float(), q.float(), cu, max_seqlen, backend="torch")
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("positions", "message"),
    [
        pytest.param(torch.zeros(0, dtype=torch.long), "at least one token", id="empty"),
        pytest.param(torch.zeros(2, 3, dtype=torch.long), r"shape \[T\] or \[1, T\]", id="batch-of-two"),
        pytest.param(torch.zeros(4), "position_ids must have dtype", id="float"),
        pytest.param([0, 1], "must be a torch.Tensor", id="list"),
    ],
)
def test_cu_seqlens_from_position_ids_bad_input(positions, message):
    with pytest.raises(ValueError, match=message):
        lk.cu_seqlens_from_position_ids(positions)


# ---------------------------------------------------------------------------------------------------
# The GPU tile configurations, run in the interpreter (the default interpreter tiles are small)

_GPU_CONFIGS = sorted({(fam, dim) for table in flash._TUNED.values() for fam, dim in table})


@pytest.mark.parametrize(("family", "dim_class"), _GPU_CONFIGS, ids=[f"sm{a}-D{d}" for a, d in _GPU_CONFIGS])
def test_gpu_tile_configs_match_reference(family, dim_class, triton_backend):
    """The launchers with the exact tiles shipped for a GPU family at its head dim (target_arch makes them
    pick that GPU's config): the causal-skip bounds and the boundary masks depend on the BM/BN ratio,
    which the small interpreter tiles alone do not cover."""
    case = Case((1, 70, 133), 4, 2, dim_class, True, "remap20", attention_scaling=1.1)
    with target_arch(family):
        for kernel in ("attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq"):
            assert flash.attention_config(kernel, device_arch(torch.empty(1)), "fp16", dim_class) == (
                flash.AttentionConfig(*flash._TUNED[kernel][(family, dim_class)])
            )
        check_against_reference(case, torch.float16, triton_backend)


def test_more_sequences_than_one_grid_holds(monkeypatch, triton_backend):
    """Batches over the grid's z limit (65535 sequences on CUDA) are launched in chunks of sequences;
    shrunk here to 4 so that 11 sequences take three launches of each kernel."""
    monkeypatch.setattr(flash, "SEQS_PER_LAUNCH", 4)
    cu = torch.tensor([0, 1, 3, 6, 10], dtype=torch.int32)
    assert [(c[0].item(), n) for c, n in flash._seq_chunks(torch.arange(12, dtype=torch.int32))] == [
        (0, 4), (4, 4), (8, 3)
    ]  # fmt: skip
    assert [n for _, n in flash._seq_chunks(cu)] == [4]
    chunks = []
    real = flash._seq_chunks

    def spy(cu_seqlens):
        out = real(cu_seqlens)
        chunks.append([n for _, n in out])
        return out

    monkeypatch.setattr(flash, "_seq_chunks", spy)
    case = Case((3, 1, 9, 2, 5, 17, 1, 4, 6, 2, 8), 4, 2, 16, True, "remap17")
    check_against_reference(case, torch.float32, triton_backend)
    assert chunks == [[4, 4, 3]] * 3  # forward, dk/dv, dq


def test_report_cases_cover_shipped_configs():
    for arch in (80, 90):
        cases = flash.report_cases(arch)
        seen = {(c.dtype, c.head_dim, c.rope) for c in cases}
        assert seen == {
            (d, h, r) for d in ("fp16", "bf16") for h in flash.REPORT_HEAD_DIMS for r in (True, False)
        }
        assert all(c.matmul == {"attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq"} for c in cases)
