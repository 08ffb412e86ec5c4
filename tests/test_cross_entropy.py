"""Fused linear cross-entropy, token log-probs and entropies vs F.cross_entropy on materialised logits."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import lr_kernels as lk
from lr_kernels.cross_entropy import chunked
from lr_kernels.cross_entropy.chunked import ce_chunk_torch
from lr_kernels.cross_entropy.naive import (
    naive_linear_cross_entropy,
    naive_logits,
    naive_token_entropy,
    naive_token_logprobs,
)

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_inputs(T, d, V, dtype, *, bias=False, ignore=0, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(T, d, generator=g) * scale).to(dtype)
    weight = (torch.randn(V, d, generator=g) / d**0.5 * 2).to(dtype)
    b = (torch.randn(V, generator=g) * 0.5).to(dtype) if bias else None
    targets = torch.randint(0, V, (T,), generator=g)
    if ignore and T:
        targets[torch.randperm(T, generator=g)[: min(ignore, T)]] = -100
    return hidden, weight, b, targets


def plain_low_precision(hidden, weight, bias, targets, *, softcap=None, **kw):
    """What an unfused model does in fp16/bf16: logits in the input dtype, upcast for the loss."""
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.float(), targets, **kw)


def loss_and_grads(fn, hidden, weight, bias, grad_out):
    leaves = [
        x.detach().clone().requires_grad_(True) if x is not None else None for x in (hidden, weight, bias)
    ]
    loss = fn(*leaves)
    wrt = [x for x in leaves if x is not None]
    grads = torch.autograd.grad(loss, wrt, grad_out)
    return loss.detach(), [g.float() for g in grads]


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


# (T, d, V, bias, ignored targets, label_smoothing, softcap, chunk_size)
CASES = [
    pytest.param(1, 16, 67, False, 0, 0.0, None, None, id="T1-V67"),
    pytest.param(17, 32, 1000, True, 3, 0.0, None, 5, id="T17-V1000-bias-ign3-chunk5"),
    pytest.param(130, 24, 67, False, 11, 0.1, None, 16, id="T130-V67-ign11-smooth0.1-chunk16"),
    pytest.param(17, 8, 1, False, 2, 0.0, None, 4, id="T17-V1-ign2-chunk4"),
    pytest.param(130, 24, 1000, True, 7, 0.2, 4.0, 33, id="T130-V1000-bias-ign7-smooth0.2-cap4-chunk33"),
    pytest.param(17, 16, 67, True, 0, 0.0, 2.5, None, id="T17-V67-bias-cap2.5"),
]
REDUCTIONS = ["mean", "sum", "none"]


def _run_case(T, d, V, bias, ignore, smoothing, softcap, chunk, reduction, dtype, backend):
    hidden, weight, b, targets = make_inputs(T, d, V, DT[dtype], bias=bias, ignore=ignore, scale=2.0)
    kw = dict(ignore_index=-100, reduction=reduction, label_smoothing=smoothing)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(T if reduction == "none" else (), generator=g) * 3.0

    def fused(h, w, bb):
        return lk.fused_linear_cross_entropy(
            h, w, targets, bias=bb, logit_softcap=softcap, chunk_size=chunk, backend=backend, **kw
        )

    def ref32(h, w, bb):
        return naive_linear_cross_entropy(
            h.float(),
            w.float(),
            targets,
            bias=bb.float() if bb is not None else None,
            logit_softcap=softcap,
            **kw,
        )

    loss, grads = loss_and_grads(fused, hidden, weight, b, grad_out)
    ref_loss, ref_grads = loss_and_grads(ref32, hidden, weight, b, grad_out)
    assert loss.dtype == torch.float32
    assert loss.shape == ref_loss.shape
    names = ["loss", "grad_hidden", "grad_weight", "grad_bias"]
    if dtype == "fp32":
        for name, a, r in zip(names, [loss, *grads], [ref_loss, *ref_grads], strict=False):
            atol = 1e-5 * max(r.abs().max().item(), 1e-3) if r.numel() else 0.0
            torch.testing.assert_close(a, r, rtol=1e-5, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
        return
    low_loss, low_grads = loss_and_grads(
        lambda h, w, bb: plain_low_precision(h, w, bb, targets, softcap=softcap, **kw),
        hidden,
        weight,
        b,
        grad_out,
    )
    for name, a, r, p in zip(
        names, [loss, *grads], [ref_loss, *ref_grads], [low_loss, *low_grads], strict=False
    ):
        plain = max_err(p, r)
        # one rounding of the result to the input dtype is unavoidable whatever the method
        floor = torch.finfo(DT[dtype]).eps * r.float().abs().max().item() if r.numel() else 0.0
        ours = max_err(a, r)
        assert ours <= max(2 * plain, floor), f"{name}: error {ours:.3g} vs plain {dtype} PyTorch {plain:.3g}"


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("T,d,V,bias,ignore,smoothing,softcap,chunk", CASES)
def test_torch_path_matches_cross_entropy(T, d, V, bias, ignore, smoothing, softcap, chunk, dtype, reduction):
    _run_case(T, d, V, bias, ignore, smoothing, softcap, chunk, reduction, dtype, "torch")


# The interpreter runs every program in Python: all reductions in fp32, fp16 with "mean" (the scaled
# stored gradients) and "none" (the recompute path) — "sum" adds nothing new for fp16 there.
TRITON_DTYPE_REDUCTIONS = [
    pytest.param(dt, r, id=f"{dt}-{r}")
    for dt in ("fp32", "fp16")
    for r in REDUCTIONS
    if dt == "fp32" or r != "sum"
]


@pytest.mark.parametrize("dtype,reduction", TRITON_DTYPE_REDUCTIONS)
@pytest.mark.parametrize("T,d,V,bias,ignore,smoothing,softcap,chunk", CASES)
def test_triton_matches_cross_entropy(
    T, d, V, bias, ignore, smoothing, softcap, chunk, dtype, reduction, triton_backend
):
    _run_case(T, d, V, bias, ignore, smoothing, softcap, chunk, reduction, dtype, triton_backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_matches_cross_entropy(reduction, backend):
    hidden, weight, _, targets = make_inputs(0, 8, 67, torch.float32)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    loss = lk.fused_linear_cross_entropy(hidden, weight, targets, reduction=reduction, backend=backend)
    ref = F.cross_entropy(hidden @ weight.T, targets, reduction=reduction)
    torch.testing.assert_close(loss, ref.detach(), equal_nan=True)
    loss.sum().backward()
    assert hidden.grad.shape == (0, 8)
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smooth0.1"])
def test_all_ignored_gives_nan_mean_and_zero_grads(smoothing, backend):
    hidden, weight, bias, targets = make_inputs(9, 8, 67, torch.float32, bias=True)
    targets[:] = -100
    for reduction, expect in [("mean", float("nan")), ("sum", 0.0)]:
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True)
        loss = lk.fused_linear_cross_entropy(
            h, w, targets, bias=b, reduction=reduction, label_smoothing=smoothing, backend=backend
        )
        ref = F.cross_entropy(
            naive_logits(hidden, weight, bias), targets, reduction=reduction, label_smoothing=smoothing
        )
        torch.testing.assert_close(loss, ref, equal_nan=True)
        torch.testing.assert_close(loss, torch.tensor(expect), equal_nan=True)
        loss.backward()
        for x in (h, w, b):
            assert torch.equal(x.grad, torch.zeros_like(x)), reduction


def test_ignore_index_in_vocab_range_is_ignored():
    hidden, weight, _, targets = make_inputs(17, 8, 67, torch.float32)
    targets[::3] = 5
    loss = lk.fused_linear_cross_entropy(hidden, weight, targets, ignore_index=5, chunk_size=4)
    ref = F.cross_entropy(naive_logits(hidden, weight), targets, ignore_index=5)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_grads_only_for_inputs_that_need_them(dtype):
    hidden, weight, bias, targets = make_inputs(17, 8, 67, DT[dtype], bias=True)
    w = weight.clone().requires_grad_(True)
    loss = lk.fused_linear_cross_entropy(hidden, w, targets, bias=bias, chunk_size=5)
    loss.backward()
    ref_w = weight.float().clone().requires_grad_(True)
    naive_linear_cross_entropy(hidden.float(), ref_w, targets, bias=bias.float()).backward()
    assert w.grad.dtype == DT[dtype]
    tol = 1e-5 if dtype == "fp32" else 2e-2
    torch.testing.assert_close(w.grad.float(), ref_w.grad, rtol=tol, atol=tol * ref_w.grad.abs().max().item())
    with torch.no_grad():
        no_grad_loss = lk.fused_linear_cross_entropy(hidden, w, targets, bias=bias, chunk_size=5)
    assert not no_grad_loss.requires_grad
    torch.testing.assert_close(no_grad_loss, loss.detach())


def test_double_backward_through_retained_graph_scales_once():
    hidden, weight, _, targets = make_inputs(17, 8, 67, torch.float32)
    h = hidden.clone().requires_grad_(True)
    loss = lk.fused_linear_cross_entropy(h, weight, targets, chunk_size=5)
    (g1,) = torch.autograd.grad(loss * 3.0, h, retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 3.0, h)
    torch.testing.assert_close(g1, g2)
    ref_h = hidden.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(naive_linear_cross_entropy(ref_h, weight, targets) * 3.0, ref_h)
    torch.testing.assert_close(g1, gr, rtol=1e-5, atol=1e-6)
    # .backward() twice accumulates into .grad; the stored gradient must not be aliased by it
    h.grad = None
    loss = lk.fused_linear_cross_entropy(h, weight, targets, chunk_size=5)
    for _ in range(3):
        loss.backward(retain_graph=True)
    torch.testing.assert_close(h.grad, gr, rtol=1e-5, atol=1e-6)  # 3 x d(loss)/dh, gr = d(3 loss)/dh


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize(
    "T,V,softcap,chunk",
    [(1, 67, None, None), (130, 1000, None, 7), (17, 67, 3.0, 4), (17, 1, None, 3)],
    ids=["T1-V67", "T130-V1000-chunk7", "T17-V67-cap3-chunk4", "T17-V1-chunk3"],
)
def test_token_logprobs_and_entropy_match_log_softmax(T, V, softcap, chunk, dtype, backend):
    hidden, weight, bias, targets = make_inputs(T, 24, V, DT[dtype], bias=True, ignore=1, scale=2.0)
    kw = dict(bias=bias, logit_softcap=softcap, chunk_size=chunk, backend=backend)
    logp = lk.token_logprobs(hidden, weight, targets, **kw)
    ent = lk.token_entropy(hidden, weight, **kw)
    ref_logp = naive_token_logprobs(hidden, weight, targets, bias=bias, logit_softcap=softcap)
    ref_ent = naive_token_entropy(hidden, weight, bias=bias, logit_softcap=softcap)
    assert logp.dtype == ent.dtype == torch.float32
    assert logp.shape == ent.shape == (T,)
    assert torch.all(logp[targets == -100] == 0)
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=2e-5)


def test_token_logprobs_gradient_is_minus_the_none_loss_gradient():
    hidden, weight, _, targets = make_inputs(17, 8, 67, torch.float32)
    h = hidden.clone().requires_grad_(True)
    g = torch.randn(17)
    (gh,) = torch.autograd.grad(lk.token_logprobs(h, weight, targets, chunk_size=5), h, g)
    ref_h = hidden.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(naive_token_logprobs(ref_h, weight, targets), ref_h, g)
    torch.testing.assert_close(gh, gr, rtol=1e-5, atol=1e-6)


def test_entropy_of_uniform_and_peaked_distributions():
    hidden = torch.zeros(3, 4)
    weight = torch.randn(50, 4)
    torch.testing.assert_close(
        lk.token_entropy(hidden, weight), torch.full((3,), torch.log(torch.tensor(50.0)).item())
    )
    peaked = torch.zeros(50)
    peaked[7] = 1e4
    torch.testing.assert_close(
        lk.token_entropy(hidden, weight, bias=peaked), torch.zeros(3), atol=1e-6, rtol=0
    )


def test_large_logits_stay_finite():
    hidden, weight, _, targets = make_inputs(17, 8, 1000, torch.float32, scale=400.0)
    loss = lk.fused_linear_cross_entropy(hidden, weight, targets, reduction="none", chunk_size=8)
    ref = naive_linear_cross_entropy(hidden, weight, targets, reduction="none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_contiguous_inputs(backend):
    hidden, weight, bias, targets = make_inputs(34, 24, 67, torch.float32, bias=True, ignore=2)
    h_view = hidden.t().contiguous().t()[::2]  # column-major rows, every other token
    w_view = torch.cat([weight, weight], dim=1)[:, ::2]
    t_view = torch.stack([targets, targets], dim=1)[::2, 0]
    h = h_view.detach().requires_grad_(True)
    loss = lk.fused_linear_cross_entropy(h, w_view, t_view, bias=bias, chunk_size=5, backend=backend)
    (gh,) = torch.autograd.grad(loss, h)
    ref_h = h_view.contiguous().requires_grad_(True)
    ref = naive_linear_cross_entropy(ref_h, w_view.contiguous(), t_view.contiguous(), bias=bias)
    (gr,) = torch.autograd.grad(ref, ref_h)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, gr, rtol=1e-5, atol=1e-6)


def test_chunk_size_choice():
    cpu = torch.device("cpu")
    assert chunked.choose_chunk_size(130, 1000, cpu, override=7) == 7
    assert chunked.choose_chunk_size(5, 1000, cpu, override=64) == 5
    assert chunked.choose_chunk_size(0, 1000, cpu) == 1
    c = chunked.choose_chunk_size(8192, 128256, cpu)
    assert 1 <= c <= 8192
    assert c * 128256 * 4 <= chunked.CPU_CHUNK_BYTES
    assert chunked.choose_chunk_size(10**6, 1000, cpu) * 1000 * 4 <= chunked.CPU_CHUNK_BYTES


def test_no_full_logits_buffer_is_allocated(monkeypatch):
    """The largest float buffer the op allocates is one [chunk, V] logits chunk, not [T, V]."""
    T, V, chunk = 130, 1000, 16
    hidden, weight, bias, targets = make_inputs(T, 8, V, torch.float32, bias=True)
    sizes = []
    real_empty, real_zeros = torch.empty, torch.zeros

    def spy(real):
        def f(*args, **kwargs):
            out = real(*args, **kwargs)
            sizes.append(out.numel())
            return out

        return f

    monkeypatch.setattr(torch, "empty", spy(real_empty))
    monkeypatch.setattr(torch, "zeros", spy(real_zeros))
    h = hidden.clone().requires_grad_(True)
    lk.fused_linear_cross_entropy(
        h, weight, targets, bias=bias, chunk_size=chunk, label_smoothing=0.1
    ).backward()
    assert max(sizes) == chunk * V


def _emulate_fp32_output_gemms(monkeypatch):
    """Stand in for cuBLAS's fp16/bf16 GEMMs with an fp32 result, which CPU builds of torch lack.

    fp16/bf16 products are exact in fp32, so an fp32 GEMM of the upcast inputs is what cuBLAS computes (up
    to summation order). Calls without ``out_dtype`` go to the real functions.
    """
    real_mm, real_addmm = torch.mm, torch.addmm

    def mm(a, b, *, out_dtype=None, out=None):
        if out_dtype is None:
            return real_mm(a, b, out=out) if out is not None else real_mm(a, b)
        assert out_dtype == torch.float32 and out.dtype == torch.float32
        return real_mm(a.float(), b.float(), out=out)

    def addmm(acc, a, b, *, out_dtype=None, out=None):
        if out_dtype is None:
            return real_addmm(acc, a, b, out=out) if out is not None else real_addmm(acc, a, b)
        assert out_dtype == torch.float32 and out.dtype == torch.float32
        return out.copy_(real_addmm(acc, a.float(), b.float()))

    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch, "addmm", addmm)
    monkeypatch.setattr(chunked, "fp32_output_gemm_available", lambda device, dtype: True)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_low_precision_gemm_path_on_cpu(backend, dtype, monkeypatch):
    """The CUDA recipe for fp16/bf16 (GEMMs in the input dtype with an fp32 result, gradient buffer in the
    input dtype), forced on CPU with the fp32-output GEMMs emulated.

    The logits are fp32 (no rounding to 16 bits), so the loss matches the fp32 reference on the same
    inputs tightly; the gradients pass through the fp16/bf16 dz buffer, hence the looser tolerance there.
    The kernels hold no tl.dot, so bf16 is safe in the interpreter here.
    """
    from lr_kernels.cross_entropy.kernels import ce_chunk_triton

    _emulate_fp32_output_gemms(monkeypatch)
    hidden, weight, bias, targets = make_inputs(17, 16, 67, DT[dtype], bias=True, ignore=2, scale=2.0)
    step = ce_chunk_torch if backend == "torch" else ce_chunk_triton
    kw = dict(
        ignore_index=-100, label_smoothing=0.1, softcap=None, chunk_size=5, need_grads=(True, True, True)
    )
    loss, gh, gw, gb = chunked.linear_ce_chunked(
        hidden, weight, bias, targets, step=step, mm_dtype=DT[dtype], **kw
    )
    h, w, b = (x.float().requires_grad_(True) for x in (hidden, weight, bias))
    ref = naive_linear_cross_entropy(h, w, targets, bias=b, reduction="none", label_smoothing=0.1)
    ref.sum().backward()
    # The bias is added in fp32 to fp32 logits: only the summation order differs from the reference.
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-5)
    tol = 1e-2 if dtype == "fp16" else 5e-2
    for got, want in ((gh, h.grad), (gw, w.grad), (gb, b.grad)):
        assert got.dtype == DT[dtype]
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_mm_fp32_keeps_fp32_result_for_low_precision_inputs(monkeypatch):
    _emulate_fp32_output_gemms(monkeypatch)
    a = torch.randn(5, 8).half()
    b = torch.randn(8, 7).half()
    exact = a.double() @ b.double()
    out = torch.empty(5, 7)
    chunked._mm_fp32(a, b, out, None)
    torch.testing.assert_close(out.double(), exact, rtol=1e-6, atol=1e-6)
    # rounding the result to fp16 (what the old silent fallback did) is ~1e-3 off at these magnitudes
    assert (out.double() - exact).abs().max() < 0.1 * ((a @ b).double() - exact).abs().max()
    acc = torch.ones(5, 7)
    chunked._mm_accumulate_fp32(acc, a, b)
    torch.testing.assert_close(acc.double(), 1 + exact, rtol=1e-6, atol=1e-6)


@pytest.fixture
def fresh_gemm_probe(monkeypatch):
    """An empty capability cache and warning set for the duration of a test."""
    monkeypatch.setattr(chunked, "_FP32_OUT_GEMM", {})
    monkeypatch.setattr(chunked, "_WARNED_UPCAST", set())


@pytest.mark.parametrize(
    "error", [NotImplementedError("no CPU kernel"), TypeError("unexpected keyword 'out_dtype'")],
    ids=["not-implemented", "old-torch"],
)  # fmt: skip
def test_fp32_output_gemm_probe_absent(error, monkeypatch, fresh_gemm_probe):
    calls = []

    def mm(*args, **kwargs):
        calls.append(kwargs.get("out_dtype"))
        raise error

    monkeypatch.setattr(torch, "mm", mm)
    cpu = torch.device("cpu")
    assert chunked.fp32_output_gemm_available(cpu, torch.bfloat16) is False
    assert chunked.fp32_output_gemm_available(cpu, torch.bfloat16) is False
    assert calls == [torch.float32], "the capability must be probed once, then cached"


def test_fp32_output_gemm_probe_present(monkeypatch, fresh_gemm_probe):
    real_mm, real_addmm = torch.mm, torch.addmm
    monkeypatch.setattr(torch, "mm", lambda a, b, *, out_dtype, out: real_mm(a.float(), b.float(), out=out))
    monkeypatch.setattr(
        torch, "addmm", lambda c, a, b, *, out_dtype, out: out.copy_(real_addmm(c, a.float(), b.float()))
    )
    assert chunked.fp32_output_gemm_available(torch.device("cpu"), torch.float16) is True


def test_fp32_output_gemm_probe_never_swallows_out_of_memory(monkeypatch, fresh_gemm_probe):
    def mm(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch, "mm", mm)
    with pytest.raises(torch.OutOfMemoryError):
        chunked.fp32_output_gemm_available(torch.device("cpu"), torch.bfloat16)
    assert chunked._FP32_OUT_GEMM == {}, "an OOM must not be cached as 'capability absent'"


def test_out_of_memory_in_the_gemm_propagates(monkeypatch):
    """The old code caught any RuntimeError from the fp32-output GEMM and retried in 16 bits."""
    _emulate_fp32_output_gemms(monkeypatch)

    def mm(a, b, *, out_dtype=None, out=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch, "mm", mm)
    hidden, weight, bias, targets = make_inputs(17, 16, 67, torch.bfloat16, bias=True)
    with pytest.raises(torch.OutOfMemoryError):
        chunked.linear_ce_chunked(
            hidden, weight, bias, targets, step=ce_chunk_torch, ignore_index=-100, label_smoothing=0.0,
            softcap=None, chunk_size=5, need_grads=(False,) * 3, mm_dtype=torch.bfloat16,
        )  # fmt: skip


def test_gemm_dtype_policy(monkeypatch, fresh_gemm_probe):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(chunked, "fp32_output_gemm_available", lambda device, dtype: True)
    assert chunked.gemm_dtype(cuda, torch.bfloat16) == torch.bfloat16
    assert chunked.gemm_dtype(cuda, torch.float16) == torch.float16
    assert chunked.gemm_dtype(cuda, torch.float32) == torch.float32
    assert chunked.gemm_dtype(cpu, torch.bfloat16) == torch.float32
    monkeypatch.setattr(chunked, "fp32_output_gemm_available", lambda device, dtype: False)
    with pytest.warns(RuntimeWarning, match="fp32"):
        assert chunked.gemm_dtype(cuda, torch.bfloat16) == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per (device, dtype), not on every call
        assert chunked.gemm_dtype(cuda, torch.bfloat16) == torch.float32


def test_low_precision_mm_dtype_without_capability_raises(monkeypatch):
    monkeypatch.setattr(chunked, "fp32_output_gemm_available", lambda device, dtype: False)
    hidden, weight, bias, targets = make_inputs(5, 8, 11, torch.float16)
    with pytest.raises(ValueError, match="mm_dtype"):
        chunked.linear_ce_chunked(
            hidden, weight, bias, targets, step=ce_chunk_torch, ignore_index=-100, label_smoothing=0.0,
            softcap=None, chunk_size=None, need_grads=(False,) * 3, mm_dtype=torch.float16,
        )  # fmt: skip


# ---- bad input


def _good():
    hidden, weight, bias, targets = make_inputs(5, 8, 11, torch.float32, bias=True)
    return dict(hidden=hidden, weight=weight, targets=targets, bias=bias)


def _call(**over):
    args = _good()
    args.update(over)
    return lk.fused_linear_cross_entropy(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)


@pytest.mark.parametrize(
    "over,name",
    [
        pytest.param(dict(hidden=torch.randn(5, 2, 4)), "hidden", id="hidden-3d"),
        pytest.param(dict(hidden=torch.randn(5, 8, dtype=torch.float64)), "hidden", id="hidden-fp64"),
        pytest.param(dict(hidden=torch.randn(5, 8).long()), "hidden", id="hidden-int"),
        pytest.param(dict(weight=torch.randn(11, 9)), "weight", id="weight-d-mismatch"),
        pytest.param(dict(weight=torch.randn(11, 8).half()), "weight", id="weight-dtype-mismatch"),
        pytest.param(
            dict(weight=torch.randn(0, 8), bias=None, targets=torch.full((5,), -100)), "weight", id="V0"
        ),
        pytest.param(dict(weight=torch.randn(11, 8, device="meta")), "weight", id="weight-device"),
        pytest.param(dict(bias=torch.randn(12)), "bias", id="bias-shape"),
        pytest.param(dict(bias=torch.randn(11).half()), "bias", id="bias-dtype"),
        pytest.param(dict(targets=torch.zeros(5)), "targets", id="targets-float"),
        pytest.param(dict(targets=torch.zeros(4, dtype=torch.long)), "targets", id="targets-length"),
        pytest.param(dict(targets=torch.tensor([0, 1, 11, 2, 3])), "targets", id="targets-eq-V"),
        pytest.param(dict(targets=torch.tensor([0, 1, -1, 2, 3])), "targets", id="targets-negative"),
        pytest.param(dict(targets=torch.zeros(5, dtype=torch.bool)), "targets", id="targets-bool"),
        pytest.param(dict(reduction="avg"), "reduction", id="reduction"),
        pytest.param(dict(label_smoothing=1.0), "label_smoothing", id="smoothing-1"),
        pytest.param(dict(label_smoothing=-0.1), "label_smoothing", id="smoothing-neg"),
        pytest.param(dict(logit_softcap=0.0), "logit_softcap", id="softcap-0"),
        pytest.param(dict(logit_softcap=float("inf")), "logit_softcap", id="softcap-inf"),
        pytest.param(dict(chunk_size=0), "chunk_size", id="chunk-0"),
        pytest.param(dict(chunk_size=2.5), "chunk_size", id="chunk-float"),
        pytest.param(dict(ignore_index=None), "ignore_index", id="ignore-none"),
        pytest.param(dict(backend="cuda"), "backend", id="backend"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(over, name):
    with pytest.raises(ValueError, match=name):
        _call(**over)


def test_bad_input_token_ops():
    args = _good()
    with pytest.raises(ValueError, match="targets"):
        lk.token_logprobs(args["hidden"], args["weight"], torch.full((5,), 11))
    with pytest.raises(ValueError, match="weight"):
        lk.token_entropy(args["hidden"], torch.randn(11, 3))
    with pytest.raises(ValueError, match="logit_softcap"):
        lk.token_entropy(args["hidden"], args["weight"], logit_softcap=-1.0)


def test_works_inside_torch_compile():
    hidden, weight, _, targets = make_inputs(17, 8, 67, torch.float32)

    def f(h, w):
        return lk.fused_linear_cross_entropy(h * 2, w, targets, chunk_size=5) + 1

    grads = []
    for fn in (f, torch.compile(f, backend="eager", fullgraph=False)):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        loss = fn(h, w)
        loss.backward()
        grads.append((loss.detach(), h.grad, w.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
