"""The benchmark workloads: each of our ops beside the plain PyTorch / transformers code it replaces.

Shared by the pytest-benchmark suite (the ``test_*`` functions of ``benchmarks/bench_*.py``), the scripts
(``benchmarks/bench_*.py``, for big sizes and per-process memory) and the smoke test
(``tests/test_benchmarks_smoke.py``), so that what is timed is written once.

A comparison (``COMPARISONS``) names the two implementations, builds one of them at a size
(``build(impl, **size) -> step``) and checks that the two agree. ``step()`` does the whole unit of work
once — forward and backward where there is a backward — and returns what the check compares; it leaves
nothing behind between calls (gradients are detached into the result and cleared on the inputs), so
repeated calls do identical work and the memory of one call can be measured on its own.

All on CPU, float32 unless a size says otherwise; our side runs ``backend="torch"`` (the CPU path).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import lr_kernels as lk
from lr_kernels.positions import naive as positions_naive

IMPLS = ("baseline", "ours")
Step = Callable[[], Any]


def _take_grads(leaves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    grads = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    return grads


def remapped_positions(n_seq: int, seq_len: int, generator: torch.Generator, spread: int = 4) -> torch.Tensor:
    """LongRecipe-style positions of ``n_seq`` packed sequences: per sequence, ``seq_len`` sorted distinct
    ids drawn from ``range(spread * seq_len)``. int64 ``[n_seq * seq_len]``."""
    return torch.cat(
        [torch.randperm(spread * seq_len, generator=generator)[:seq_len].sort().values for _ in range(n_seq)]
    )


# ---- attention: lk.varlen_attention vs HF apply_rotary_pos_emb + repeat_kv + SDPA ---------------------


def attention(
    impl: str, n_seq: int, seq_len: int, heads: int = 8, kv_heads: int = 2, head_dim: int = 64, seed: int = 0
) -> Step:
    """Causal GQA attention with RoPE at remapped positions over ``n_seq`` packed sequences, fwd + bwd.

    ours: ``lk.varlen_attention(..., position_ids, inv_freq, backend="torch")`` — RoPE from float64
    angles, then SDPA once per packed sequence. baseline: what transformers runs for a packed row given
    only position ids — cos/sin as ``LlamaRotaryEmbedding`` computes them (fp32 ``pos * inv_freq``),
    ``apply_rotary_pos_emb``, ``repeat_kv`` and one SDPA call over the whole row with the block-diagonal
    causal mask ``[T, T]`` that ``create_causal_mask`` builds for packed sequences.

    q ``[T, H, D]``, k/v ``[T, Hkv, D]`` fp32 with T = n_seq * seq_len. The step returns
    ``(out [T, H, D], dq, dk, dv)``.
    """
    g = torch.Generator().manual_seed(seed)
    T = n_seq * seq_len
    q = torch.randn(T, heads, head_dim, generator=g).requires_grad_(True)
    k = torch.randn(T, kv_heads, head_dim, generator=g).requires_grad_(True)
    v = torch.randn(T, kv_heads, head_dim, generator=g).requires_grad_(True)
    grad_out = torch.randn(T, heads, head_dim, generator=g)
    cu_seqlens = torch.arange(0, T + 1, seq_len, dtype=torch.int32)
    position_ids = remapped_positions(n_seq, seq_len, g)
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))

    if impl == "ours":

        def forward() -> torch.Tensor:
            return lk.varlen_attention(
                q, k, v, cu_seqlens, seq_len, position_ids=position_ids, inv_freq=inv_freq, backend="torch"
            )

    elif impl == "baseline":
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        seq_id = torch.arange(n_seq).repeat_interleave(seq_len)
        idx = torch.arange(T)

        def forward() -> torch.Tensor:
            freqs = position_ids[None, :, None].float() * inv_freq[None, None, :]  # [1, T, D/2], as HF
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
            qh, kh = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
            kh = repeat_kv(kh, heads // kv_heads)  # [1, H, T, D]
            vh = repeat_kv(v.transpose(0, 1)[None], heads // kv_heads)
            # HF builds the mask on every forward, so it is part of the timed work.
            mask = (seq_id[:, None] == seq_id[None, :]) & (idx[:, None] >= idx[None, :])
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[None, None])
            return out[0].transpose(0, 1)

    else:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")

    def step() -> tuple[torch.Tensor, ...]:
        out = forward()
        out.backward(grad_out)
        return (out.detach(), *_take_grads((q, k, v)))

    return step


# ---- cross-entropy: lk.fused_linear_cross_entropy vs F.cross_entropy(hidden @ weight.T) -----------------


def cross_entropy(
    impl: str, tokens: int, vocab: int, hidden_size: int = 256, chunk_size: int | None = None, seed: int = 0
) -> Step:
    """Mean cross-entropy of ``hidden [T, d] @ weight[V, d].T`` against random targets, fwd + bwd, fp32.

    ours: ``lk.fused_linear_cross_entropy(backend="torch")`` (chunks of tokens, never the [T, V] logits);
    baseline: ``F.cross_entropy(hidden @ weight.T, targets)``. The step returns
    ``(loss, d hidden, d weight)``.
    """
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, generator=g).requires_grad_(True)
    weight = (torch.randn(vocab, hidden_size, generator=g) * hidden_size**-0.5).requires_grad_(True)
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    if impl == "ours":
        loss_fn = lambda: lk.fused_linear_cross_entropy(
            hidden, weight, targets, chunk_size=chunk_size, backend="torch"
        )
    elif impl == "baseline":
        loss_fn = lambda: F.cross_entropy(hidden @ weight.T, targets)
    else:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")

    def step() -> tuple[torch.Tensor, ...]:
        loss = loss_fn()
        loss.backward()
        return (loss.detach(), *_take_grads((hidden, weight)))

    return step


# ---- one training step of a small Llama: lr_train.patch vs plain transformers ----------------------------


def llama(vocab: int, layers: int = 2, seed: int = 0):
    """The benchmark model: a randomly initialised small Llama 3.1 (rope scaling, GQA, untied head), fp32."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        attn_implementation="sdpa",
        use_cache=False,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).float().train()


def model_step(impl: str, tokens: int, vocab: int, layers: int = 2, seed: int = 0) -> Step:
    """Forward + backward of :func:`llama` on one row of ``tokens`` tokens, labels = input ids.

    Positions are the default ``arange``: plain transformers reads every gap in ``position_ids`` as the
    start of another packed sequence (``find_packed_sequence_indices``), so with LongRecipe's remapped
    positions the two sides would attend over different spans.

    ours: the model after ``lr_train.patch(model, backend="torch")`` (varlen attention with RoPE inside,
    fused linear cross-entropy); baseline: the same weights in plain transformers (sdpa attention, loss
    over materialised [T, V] logits). The step returns ``(loss, |grad| of lm_head, |grad| of the
    embeddings, |grad| of the first q_proj)``.
    """
    import lr_train

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    model = llama(vocab, layers, seed)
    if impl == "ours":
        lr_train.patch(model, backend="torch")
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (1, tokens), generator=g)
    watched = (
        model.lm_head.weight,
        model.model.embed_tokens.weight,
        model.model.layers[0].self_attn.q_proj.weight,
    )

    def step() -> tuple[torch.Tensor, ...]:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norms = [p.grad.norm() for p in watched]
        model.zero_grad(set_to_none=True)
        return (loss.detach(), *norms)

    return step


# ---- position remapping: lk.remap_positions vs the reference Python algorithm --------------------------


def make_documents(n_docs: int, tokens: int, seed: int = 0) -> list[list[int]]:
    """Segment lengths of ``n_docs`` documents of exactly ``tokens`` tokens; segments of 5-40 tokens."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lengths, total = [], 0
        while total < tokens:
            n = min(rng.randint(5, 40), tokens - total)
            lengths.append(n)
            total += n
        docs.append(lengths)
    return docs


def as_batch(docs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents as the op takes them: int64 segment lengths [S] and document offsets [B+1]."""
    flat = torch.tensor([x for d in docs for x in d], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(d) for d in docs], dtype=torch.int64).cumsum(0)
    return flat, offsets


def positions(impl: str, n_docs: int, tokens: int, target: int, seed: int = 0) -> Step:
    """LongRecipe position layouts of ``n_docs`` documents of ``tokens`` tokens in a ``target`` window.

    ours: ``lk.remap_positions`` (C++ op) on the whole batch; baseline:
    ``lr_kernels.positions.naive.reference_remap``, the public LongRecipe preprocessing's algorithm in
    plain Python, one document at a time. Both draw a fresh random layout per call (different RNGs, so
    different layouts). The step returns ``(documents, positions)``: ours an int64 tensor of all documents'
    positions, the baseline a list of lists (each side in its native form, so neither pays a conversion).
    """
    docs = make_documents(n_docs, tokens, seed)
    if impl == "ours":
        flat, offsets = as_batch(docs)
        seeds = itertools.count(seed)

        def step() -> tuple[list[list[int]], torch.Tensor]:
            return docs, lk.remap_positions(flat, target, next(seeds), segment_offsets=offsets)

    elif impl == "baseline":
        rng = random.Random(seed + 1)

        def step() -> tuple[list[list[int]], list[list[int]]]:
            return docs, [positions_naive.reference_remap(d, target, rng) for d in docs]

    else:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return step


def check_layout(docs: list[list[int]], positions: torch.Tensor | list[list[int]], target: int) -> None:
    """Raise AssertionError unless ``positions`` (flat tensor or one list per document) are a valid
    LongRecipe layout of ``docs``: per document they start at 0, are consecutive inside a segment,
    strictly increase and stay below ``target``."""
    if isinstance(positions, torch.Tensor):
        flat_positions = positions.tolist()
    else:
        flat_positions = [p for doc in positions for p in doc]
    assert len(flat_positions) == sum(map(sum, docs)), "one position per token"
    i = 0
    for d, lengths in enumerate(docs):
        doc = flat_positions[i : i + sum(lengths)]
        assert doc[0] == 0, f"document {d} starts at {doc[0]}"
        assert doc[-1] < target, f"document {d} ends at {doc[-1]} >= {target}"
        j = 0
        for length in lengths:
            seg = doc[j : j + length]
            assert seg == list(range(seg[0], seg[0] + length)), f"document {d}: a segment is not contiguous"
            assert j == 0 or seg[0] > doc[j - 1], f"document {d}: positions do not increase"
            j += length
        i += sum(lengths)


# ---- RoPE: lk.apply_rope on q and k vs HF LlamaRotaryEmbedding + apply_rotary_pos_emb ------------------


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rope(
    impl: str, tokens: int, dtype: str = "fp32", heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
    max_position: int = 131072, seed: int = 0,
) -> Step:  # fmt: skip
    """RoPE of one attention layer's q ``[T, H, D]`` and k ``[T, Hkv, D]`` at remapped positions (sorted
    random ids below ``max_position``), fwd + bwd.

    ours: ``lk.apply_rope(backend="torch")`` on q and on k (angles accurate to float64);
    baseline: ``LlamaRotaryEmbedding`` cos/sin (fp32 ``pos * inv_freq``, in x's dtype) and
    ``apply_rotary_pos_emb`` on q and k in HF's ``[1, H, T, D]`` layout (a view of ours, no copy).
    The step returns ``(rotated q, rotated k, dq, dk)``.
    """
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    q = torch.randn(tokens, heads, head_dim, generator=g).to(dt).requires_grad_(True)
    k = torch.randn(tokens, kv_heads, head_dim, generator=g).to(dt).requires_grad_(True)
    dq_out = torch.randn(tokens, heads, head_dim, generator=g).to(dt)
    dk_out = torch.randn(tokens, kv_heads, head_dim, generator=g).to(dt)
    pos = torch.sort(torch.randint(0, max_position, (tokens,), generator=g)).values
    freqs = lk.rope_frequencies({"rope_type": "default", "rope_theta": 500_000.0}, head_dim=head_dim)

    if impl == "ours":

        def forward() -> tuple[torch.Tensor, torch.Tensor]:
            return (
                lk.apply_rope(q, pos, freqs.inv_freq, backend="torch"),
                lk.apply_rope(k, pos, freqs.inv_freq, backend="torch"),
            )

    elif impl == "baseline":
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

        config = LlamaConfig(
            hidden_size=heads * head_dim,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            rope_parameters={"rope_theta": 500_000.0},
        )
        rotary = LlamaRotaryEmbedding(config)

        def forward() -> tuple[torch.Tensor, torch.Tensor]:
            cos, sin = rotary(q, pos[None])  # [1, T, D]
            qh, kh = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
            return qh[0].transpose(0, 1), kh[0].transpose(0, 1)

    else:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")

    def step() -> tuple[torch.Tensor, ...]:
        rq, rk = forward()
        torch.autograd.backward((rq, rk), (dq_out, dk_out))
        return (rq.detach(), rk.detach(), *_take_grads((q, k)))

    return step


# ---- the table the suite, the scripts and the smoke test iterate over ----------------------------------


def _close(rtol: float, atol: float) -> Callable[[Any, Any, dict], None]:
    def check(ours: Sequence[torch.Tensor], baseline: Sequence[torch.Tensor], size: dict) -> None:
        assert len(ours) == len(baseline)
        for a, b in zip(ours, baseline, strict=True):
            torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol)

    return check


def _check_positions(ours: tuple, baseline: tuple, size: dict) -> None:
    for docs, flat in (ours, baseline):
        check_layout(docs, flat, size["target"])


@dataclass(frozen=True)
class Comparison:
    """One of our ops and its baseline, with the sizes the suite runs."""

    name: str
    title: str  # what one step does
    ours: str  # what "ours" runs
    baseline: str  # what "baseline" runs
    build: Callable[..., Step]  # build(impl, **size) -> step
    tokens: Callable[[dict], int]  # tokens processed by one step, for tokens/s
    sizes: dict[str, list[dict]]  # "tiny" (smoke test), "small" (default suite), "large"
    check: Callable[[Any, Any, dict], None]  # check(ours result, baseline result, size); raises on mismatch
    case: Callable[[dict], str]  # short label of a size, e.g. "4x512"
    memory: bool = True  # RSS peak is meaningful (tensor work; not Python object churn)
    rounds: int = 5  # timed steps per implementation in the pytest suite


COMPARISONS: dict[str, Comparison] = {
    c.name: c
    for c in (
        Comparison(
            name="attention",
            title="attention fwd+bwd, RoPE at remapped positions, GQA 8/2 heads, D=64, fp32",
            ours="lk.varlen_attention (torch backend)",
            baseline="HF apply_rotary_pos_emb + repeat_kv + SDPA with block-diagonal mask",
            build=attention,
            tokens=lambda s: s["n_seq"] * s["seq_len"],
            case=lambda s: f"{s['n_seq']}x{s['seq_len']}",
            sizes={
                "tiny": [dict(n_seq=2, seq_len=24)],
                "small": [dict(n_seq=4, seq_len=512), dict(n_seq=2, seq_len=1024)],
                "large": [
                    dict(n_seq=4, seq_len=1024),
                    dict(n_seq=2, seq_len=2048),
                    dict(n_seq=2, seq_len=4096),
                ],
            },
            check=_close(1e-4, 1e-4),
        ),
        Comparison(
            name="cross_entropy",
            title="linear + cross-entropy fwd+bwd, d=256, fp32",
            ours="lk.fused_linear_cross_entropy (torch backend)",
            baseline="F.cross_entropy(hidden @ weight.T, targets)",
            build=cross_entropy,
            tokens=lambda s: s["tokens"],
            case=lambda s: f"T{s['tokens']}-V{s['vocab']}",
            sizes={
                "tiny": [dict(tokens=40, vocab=300)],
                "small": [dict(tokens=1024, vocab=32000)],
                "large": [
                    dict(tokens=2048, vocab=128256),
                    dict(tokens=8192, vocab=32000),
                    dict(tokens=8192, vocab=128256),
                ],
            },
            check=_close(1e-4, 1e-6),
        ),
        Comparison(
            name="model_step",
            title="training step (fwd+bwd) of a 2-layer Llama 3.1 (hidden 256), fp32, one packed row",
            ours="lr_train.patch(model, backend='torch')",
            baseline="plain transformers (sdpa attention, loss over [T, V] logits)",
            build=model_step,
            tokens=lambda s: s["tokens"],
            case=lambda s: f"T{s['tokens']}-V{s['vocab']}",
            sizes={
                "tiny": [dict(tokens=32, vocab=256)],
                "small": [dict(tokens=512, vocab=32000)],
                "large": [dict(tokens=2048, vocab=128256), dict(tokens=8192, vocab=128256)],
            },
            check=_close(1e-4, 1e-5),
        ),
        Comparison(
            name="positions",
            title="position remapping of documents into a long window (LongRecipe layout)",
            ours="lk.remap_positions (C++ op)",
            baseline="reference LongRecipe algorithm in Python (naive.reference_remap)",
            build=positions,
            tokens=lambda s: s["n_docs"] * s["tokens"],
            case=lambda s: f"{s['n_docs']}x{s['tokens']}-w{s['target']}",
            sizes={
                "tiny": [dict(n_docs=3, tokens=200, target=800)],
                "small": [dict(n_docs=8, tokens=8192, target=32768)],
                "large": [dict(n_docs=40, tokens=24576, target=81920)],
            },
            check=_check_positions,
            memory=False,
            rounds=20,
        ),
        Comparison(
            name="rope",
            title="RoPE of q [T, 32, 128] and k [T, 8, 128] fwd+bwd, remapped positions < 131072",
            ours="lk.apply_rope (torch backend) on q and k",
            baseline="HF LlamaRotaryEmbedding + apply_rotary_pos_emb",
            build=rope,
            tokens=lambda s: s["tokens"],
            case=lambda s: f"T{s['tokens']}-{s['dtype']}",
            sizes={
                # HF's fp32 angles are off by up to ~1e-2 rad near 131072; small positions keep the
                # tiny case's comparison tight.
                "tiny": [dict(tokens=16, dtype="fp32", max_position=64)],
                "small": [dict(tokens=2048, dtype="fp32"), dict(tokens=2048, dtype="bf16")],
                "large": [dict(tokens=16384, dtype="fp32"), dict(tokens=16384, dtype="bf16")],
            },
            check=_close(1e-4, 1e-4),
        ),
    )
}
