"""Strided (non-contiguous) inputs give the same results as their contiguous copies, in both backends.

Index tensors (position_ids, cu_seqlens, inv_freq, targets, the data ops' ids and offsets) are made
contiguous by the public functions; kernels used to index a strided view as if it were dense and read the
neighbouring elements instead (issue 9: results off by up to 2.49). Every strided view here interleaves
its values with garbage, so reading it densely gives a visibly wrong answer.
"""

from __future__ import annotations

import pytest
import torch

import lr_kernels as lk

BACKENDS = ["torch", "triton"]


def strided(t: torch.Tensor, junk: float | int) -> torch.Tensor:
    """A view with the values of ``t`` and ``junk`` in every other element of its last (or only) dim."""
    return torch.stack([t, torch.full_like(t, junk)], dim=-1)[..., 0]


def last_dim_strided(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` whose last dim has stride 2 (a copy of t interleaved with NaN)."""
    return strided(t, float("nan"))


def head_major(t: torch.Tensor) -> torch.Tensor:
    """``t [T, H, D]`` as a transposed view of a head-major ``[H, T, D]`` tensor."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


# ---- varlen_attention -------------------------------------------------------------------------------------

LENS = (17, 23)
T, H, HKV, D = sum(LENS), 2, 2, 16


def same(t: torch.Tensor) -> torch.Tensor:
    return t


def _attention_inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(T, H, D, generator=g)
    k = torch.randn(T, HKV, D, generator=g)
    v = torch.randn(T, HKV, D, generator=g)
    do = torch.randn(T, H, D, generator=g)
    cu = torch.tensor([0, LENS[0], T], dtype=torch.int32)
    # remapped positions with gaps, each sequence from its own offset
    pos = torch.cat([torch.arange(LENS[0]) * 3, 1000 + torch.arange(LENS[1]) * 7])
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    return q, k, v, do, cu, pos, inv_freq


# variant -> (layout of q/k/v, layout of cu_seqlens, of position_ids, of inv_freq); a layout maps a tensor to
# a view holding the same values (applied to the differentiable leaves, so gradients flow through it).
ATTENTION_VARIANTS = {
    "position_ids": (same, same, lambda p: strided(p, 10**6), same),
    "cu_seqlens": (same, lambda c: strided(c, 9999), same, same),
    "inv_freq": (same, same, same, lambda f: strided(f, 7.0)),
    "all-index": (same, lambda c: strided(c, 9999), lambda p: strided(p, 10**6), lambda f: strided(f, 7.0)),
    "qkv-last-dim": (last_dim_strided, same, same, same),
    "qkv-head-major": (head_major, same, same, same),
}


@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_attention_strided_inputs(backend, variant):
    q, k, v, do, cu, pos, inv_freq = _attention_inputs()

    def run(qkv_layout, cu_layout, pos_layout, freq_layout):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        views = [qkv_layout(t) for t in leaves]
        idx = (cu_layout(cu), pos_layout(pos), freq_layout(inv_freq))
        assert qkv_layout is same or not any(t.is_contiguous() for t in views)
        assert all(layout is same or not t.is_contiguous() for layout, t in zip(
            (cu_layout, pos_layout, freq_layout), idx, strict=True))  # fmt: skip
        out = lk.varlen_attention(
            *views, idx[0], max(LENS), position_ids=idx[1], inv_freq=idx[2], backend=backend
        )
        out.backward(do)
        return [out.detach(), *(leaf.grad for leaf in leaves)]

    want = run(same, same, same, same)
    got = run(*ATTENTION_VARIANTS[variant])
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(a, b, msg=f"{name} differs with a strided {variant}")


def test_cu_seqlens_from_strided_position_ids():
    pos = torch.cat([torch.arange(5), torch.arange(3), torch.arange(9)])
    cu, max_seqlen = lk.cu_seqlens_from_position_ids(strided(pos, -1))
    assert cu.tolist() == [0, 5, 8, 17] and max_seqlen == 9


# ---- apply_rope -------------------------------------------------------------------------------------------

# variant -> (layout of x, of position_ids, of inv_freq)
ROPE_VARIANTS = {
    "position_ids": (same, lambda p: strided(p, 10**6), same),
    "inv_freq": (same, same, lambda f: strided(f, 7.0)),
    "x-last-dim": (last_dim_strided, same, same),
    "x-head-major": (head_major, same, same),
}


@pytest.mark.parametrize("variant", list(ROPE_VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_rope_strided_inputs(backend, variant):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, 3, D, generator=g)
    dy = torch.randn(T, 3, D, generator=g)
    _, _, _, _, _, pos, inv_freq = _attention_inputs()

    def run(x_layout, pos_layout, freq_layout):
        leaf = x.detach().clone().requires_grad_(True)
        args = (x_layout(leaf), pos_layout(pos), freq_layout(inv_freq))
        assert all(layout is same or not t.is_contiguous() for layout, t in zip(
            (x_layout, pos_layout, freq_layout), args, strict=True))  # fmt: skip
        y = lk.apply_rope(*args, 1.1, backend=backend)
        y.backward(dy)
        return y.detach(), leaf.grad

    want, got = run(same, same, same), run(*ROPE_VARIANTS[variant])
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


# ---- fused linear cross-entropy / token log-probs ---------------------------------------------------------

V, DM = 67, 24


def transposed_storage(t: torch.Tensor) -> torch.Tensor:
    """``t [m, n]`` as the transposed view of a contiguous ``[n, m]`` tensor."""
    return t.t().contiguous().t()


# variant -> (layout of hidden, of weight, of targets)
CE_VARIANTS = {
    "targets-int64": (same, same, lambda t: strided(t, 10**9)),
    "targets-int32": (same, same, lambda t: strided(t.int(), 2**30)),
    "hidden-last-dim": (last_dim_strided, same, same),
    "hidden-transposed": (transposed_storage, same, same),
    "weight-transposed": (same, transposed_storage, same),
}


@pytest.mark.parametrize("variant", list(CE_VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_linear_cross_entropy_strided_inputs(backend, variant):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(T, DM, generator=g)
    weight = torch.randn(V, DM, generator=g) / DM**0.5
    targets = torch.randint(0, V, (T,), generator=g)
    targets[[3, 11]] = -100

    def run(h_layout, w_layout, t_layout):
        h_leaf, w_leaf = (x.detach().clone().requires_grad_(True) for x in (hidden, weight))
        h, w, t = h_layout(h_leaf), w_layout(w_leaf), t_layout(targets)
        assert all(layout is same or not x.is_contiguous() for layout, x in zip(
            (h_layout, w_layout, t_layout), (h, w, t), strict=True))  # fmt: skip
        loss = lk.fused_linear_cross_entropy(h, w, t, chunk_size=16, backend=backend)
        loss.backward()
        logp = lk.token_logprobs(h.detach(), w.detach(), t, chunk_size=16, backend=backend)
        return [loss.detach(), logp, h_leaf.grad, w_leaf.grad]

    want, got = run(same, same, same), run(*CE_VARIANTS[variant])
    for name, a, b in zip(("loss", "logprobs", "grad_hidden", "grad_weight"), got, want, strict=True):
        torch.testing.assert_close(a, b, msg=f"{name} differs with strided {variant}")


# ---- data ops (C++ extension) -----------------------------------------------------------------------------


def test_data_ops_strided_inputs():
    vocab = 20
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (64,), generator=g)
    delim = torch.zeros(vocab, dtype=torch.bool)
    delim[[2, 5]] = True
    impactful = torch.zeros(vocab, dtype=torch.bool)
    impactful[[7]] = True

    starts = lk.split_segments(ids, delim)
    assert torch.equal(lk.split_segments(strided(ids, vocab + 5), strided(delim, True)), starts)
    kept = lk.select_segments(ids, starts, impactful, 0.5, 11)
    got = lk.select_segments(strided(ids, -7), strided(starts, -1), strided(impactful, True), 0.5, 11)
    assert torch.equal(got, kept)

    lengths = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    offsets = torch.tensor([0, 3, 8])
    remapped = lk.remap_positions(lengths, 100, 5, segment_offsets=offsets, keep_prefix=2)
    got = lk.remap_positions(strided(lengths, 0), 100, 5, segment_offsets=strided(offsets, 99), keep_prefix=2)
    assert torch.equal(got, remapped)
    for op in (lk.pose_positions, lk.randpos_positions):
        assert torch.equal(op(strided(lengths, 10**6), 50, 5), op(lengths, 50, 5))
