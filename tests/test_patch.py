"""lr_train.patch: patched vs unpatched (eager) models, packing, padding, reversibility, bad input.

The reference is always the same weights run by plain transformers with eager attention. For remapped
(LongRecipe) positions the reference gets an all-ones ``attention_mask``: without one, transformers
splits a row wherever positions jump by more than 1 (its packed-sequence detection), while a remapped row
is one sequence; with the mask it applies RoPE from ``position_ids`` over a plain causal mask.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import lr_train
from lr_train.patching import FAMILIES

TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=128,
    max_position_embeddings=64,
    attn_implementation="eager",
    tie_word_embeddings=False,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
YARN_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 32,
}
DYNAMIC_ROPE = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}

# name -> (config class, model class, extra config)
MODELS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama3-rope": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        {"rope_parameters": LLAMA3_ROPE},
    ),
    "llama-yarn": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"rope_parameters": YARN_ROPE}),
    "llama-dynamic": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        {"rope_parameters": DYNAMIC_ROPE},
    ),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {}),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {}),
    "arcee": (transformers.ArceeConfig, transformers.ArceeForCausalLM, {}),
}
FAMILY_MODELS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "arcee")
BACKENDS = ("torch", "triton")


def tiny_model(name: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A random fp32 model of family ``name`` (see MODELS), eager attention, training mode."""
    config_cls, model_cls, extra = MODELS[name]
    config = config_cls(**{**TINY, **extra, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).float()
    with torch.no_grad():
        # Random norm weights and biases: a norm or bias the patch forgot cannot hide behind ones/zeros.
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith(".bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model.train()


def patched_copy(model, backend: str, **kwargs):
    return lr_train.patch(copy.deepcopy(model), backend=backend, **kwargs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def remapped_positions(batch: int, length: int, max_gap: int, seed: int) -> torch.Tensor:
    """LongRecipe-style positions: strictly increasing per row, random gaps in [1, max_gap]."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.randint(1, max_gap + 1, (batch, length), generator=g)
    gaps[:, 0] = torch.randint(0, max_gap, (batch,), generator=g)
    return gaps.cumsum(dim=1)


def logits_and_grads(model, ids, weights, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits of ``model(ids, **kwargs)`` and the gradients of ``sum(logits * weights)``."""
    model.zero_grad(set_to_none=True)
    logits = model(ids, **kwargs).logits
    (logits * weights).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def assert_grads_close(got: dict, want: dict, tol: float = 1e-3) -> None:
    assert got.keys() == want.keys()
    for name in want:
        err = rel_err(got[name], want[name])
        assert err <= tol, f"grad of {name}: relative error {err:.2e} > {tol}"


@pytest.fixture(scope="module")
def models():
    cache: dict[str, transformers.PreTrainedModel] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = tiny_model(name)
        return copy.deepcopy(cache[name])

    return get


CASES = (
    [
        pytest.param(name, positions, backend, id=f"{name}-{positions}-{backend}")
        for name in FAMILY_MODELS
        for positions in ("ordinary", "remapped")
        for backend in BACKENDS
    ]
    + [
        pytest.param(name, "remapped", "torch", id=f"{name}-remapped-torch")
        for name in ("llama3-rope", "llama-yarn", "llama-dynamic")
    ]
    + [pytest.param("llama3-rope", "remapped", "triton", id="llama3-rope-remapped-triton")]
)


@pytest.mark.parametrize(("name", "positions", "backend"), CASES)
def test_logits_and_grads_match_unpatched(models, name, positions, backend):
    ref = models(name)
    patched = patched_copy(ref, backend, cross_entropy=False)
    B, S = 2, 19
    ids = torch.randint(0, TINY["vocab_size"], (B, S), generator=torch.Generator().manual_seed(1))
    kwargs = {}
    if positions == "remapped":
        kwargs["position_ids"] = remapped_positions(B, S, max_gap=2**12, seed=2)
    weights = torch.randn(B, S, TINY["vocab_size"], generator=torch.Generator().manual_seed(3))

    want_logits, want_grads = logits_and_grads(
        ref, ids, weights, attention_mask=torch.ones_like(ids), **kwargs
    )
    got_logits, got_grads = logits_and_grads(patched, ids, weights, **kwargs)

    assert rel_err(got_logits, want_logits) <= 1e-4
    assert_grads_close(got_grads, want_grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["llama", "qwen3"])
@pytest.mark.parametrize("boundaries", ["from-positions", "explicit-cu-seqlens"])
def test_packed_row_equals_separate_sequences(models, name, backend, boundaries):
    """One row holding two sequences gives each sequence the logits it gets on its own."""
    ref = models(name)
    patched = patched_copy(ref, backend, cross_entropy=False)
    g = torch.Generator().manual_seed(4)
    first, second = torch.randint(0, 128, (1, 11), generator=g), torch.randint(0, 128, (1, 6), generator=g)
    pos_a, pos_b = remapped_positions(1, 11, 300, seed=5), remapped_positions(1, 6, 300, seed=6)
    pos_b[0, 0] = 0  # a restart is how the position-id fallback sees a new sequence
    kwargs = {"position_ids": torch.cat([pos_a, pos_b], dim=1)}
    if boundaries == "explicit-cu-seqlens":
        cu = torch.tensor([0, 11, 17], dtype=torch.int32)
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=11, max_length_k=11)
        # With explicit boundaries the positions need no restart: both may start anywhere.
        kwargs["position_ids"] = torch.cat([pos_a, pos_b + 5], dim=1)
    with torch.no_grad():
        packed = patched(torch.cat([first, second], dim=1), **kwargs).logits
        alone_a = ref(
            first, position_ids=kwargs["position_ids"][:, :11], attention_mask=torch.ones_like(first)
        )
        alone_b = ref(
            second, position_ids=kwargs["position_ids"][:, 11:], attention_mask=torch.ones_like(second)
        )
    assert rel_err(packed[:, :11], alone_a.logits) <= 1e-4
    assert rel_err(packed[:, 11:], alone_b.logits) <= 1e-4


def test_rows_with_packing_and_padding(models):
    """Row 0 packs two sequences (positions restart), row 1 is one right-padded sequence: three sequences,
    each with the logits it gets alone; no sequence leaks across rows."""
    ref = models("llama")
    patched = patched_copy(ref, "torch", cross_entropy=False)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(20))
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3], [7, 9, 12, 20, 21, 22, 23, 30, 0, 0]])
    mask = torch.tensor([[1] * 10, [1] * 8 + [0] * 2])
    with torch.no_grad():
        got = patched(ids, position_ids=pos, attention_mask=mask).logits
        for row, start, end in [(0, 0, 6), (0, 6, 10), (1, 0, 8)]:
            piece = ids[row : row + 1, start:end]
            want = ref(
                piece, position_ids=pos[row : row + 1, start:end], attention_mask=torch.ones_like(piece)
            )
            assert rel_err(got[row, start:end], want.logits[0]) <= 1e-4, (row, start)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_is_unpadded_and_restored(models, backend):
    """Left- and right-padded rows: the real tokens match the model run on each row alone, pads stay zero
    in every attention output, and gradients match the reference restricted to the real tokens."""
    ref = models("qwen2")
    patched = patched_copy(ref, backend, cross_entropy=False)
    S = 13
    ids = torch.randint(0, 128, (3, S), generator=torch.Generator().manual_seed(7))
    mask = torch.ones(3, S, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, 9:] = 0  # right padding
    weights = torch.randn(3, S, 128, generator=torch.Generator().manual_seed(8)) * mask[..., None]

    got_logits, got_grads = logits_and_grads(patched, ids, weights, attention_mask=mask)

    ref.zero_grad(set_to_none=True)
    total = 0.0
    for row in range(3):
        keep = mask[row].bool()
        pos = torch.arange(S)[keep][None]  # transformers' default positions ignore the mask
        logits = ref(
            ids[row][keep][None], position_ids=pos, attention_mask=torch.ones(1, int(keep.sum()))
        ).logits
        assert rel_err(got_logits[row][keep], logits[0].detach()) <= 1e-4
        total = total + (logits[0] * weights[row][keep]).sum()
    total.backward()
    want_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert_grads_close(got_grads, want_grads)


def test_unpatch_restores_exactly(models):
    model = models("qwen3")
    pristine = copy.deepcopy(model)
    before = {name: dict(vars(m)) for name, m in model.named_modules()}
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    lr_train.patch(model, backend="torch")
    lr_train.patch(model, backend="torch")  # idempotent
    assert lr_train.is_patched(model)
    assert model.state_dict().keys() == state_before.keys()
    lr_train.patch(model, backend="torch", cross_entropy=False)  # re-patch with other options
    lr_train.unpatch(model)
    lr_train.unpatch(model)  # no-op

    assert not lr_train.is_patched(model)
    after = {name: dict(vars(m)) for name, m in model.named_modules()}
    assert after.keys() == before.keys()
    for name in before:
        assert after[name].keys() == before[name].keys(), f"attributes left on {name or 'model'}"
        assert "forward" not in after[name]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, pristine(ids).logits)


def test_patch_is_scoped_to_one_instance(models):
    model, other = models("llama"), models("llama")
    lr_train.patch(model, backend="torch")
    assert not lr_train.is_patched(other)
    for m in other.modules():
        assert "forward" not in vars(m)
    assert "forward" in vars(model) and "forward" in vars(model.model.layers[0].self_attn)
    # The class is untouched: its forward is still transformers' own function.
    assert transformers.LlamaForCausalLM.forward is type(other).forward
    assert "forward" not in vars(model.model.layers[0].mlp)


def test_existing_instance_forward_is_kept_and_restored(models):
    """A forward already set on the instance (as accelerate hooks do) serves the cached path and comes back
    on unpatch as the very same object."""
    import types

    model = models("llama").eval()
    attn = model.model.layers[0].self_attn
    calls = []

    def hooked(self, *args, **kwargs):
        calls.append(1)
        return type(self).forward(self, *args, **kwargs)

    wrapper = types.MethodType(hooked, attn)
    attn.forward = wrapper
    lr_train.patch(model, backend="torch")
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        model(ids)  # fused path: the hook is bypassed
        assert calls == []
        model(ids, use_cache=True)  # cached path: the original (hooked) forward runs
        assert calls == [1]
    lr_train.unpatch(model)
    assert vars(attn)["forward"] is wrapper


def test_patched_model_uses_the_fused_kernels(models, monkeypatch):
    """The patched forward really goes through lk.varlen_attention (once per layer) and builds no mask."""
    import lr_kernels as lk

    calls = []
    real = lk.varlen_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["position_ids"])
        return real(*args, **kwargs)

    monkeypatch.setattr(lk, "varlen_attention", spy)
    model = patched_copy(models("llama"), "torch", cross_entropy=False)
    pos = remapped_positions(1, 7, 1000, seed=10)
    with torch.no_grad():
        model(torch.randint(0, 128, (1, 7)), position_ids=pos)
    assert len(calls) == TINY["num_hidden_layers"]
    assert torch.equal(calls[0], pos[0])


def test_unsupported_model_names_supported_families():
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)
    )
    with pytest.raises(lr_train.UnsupportedModelError, match="llama, mistral, qwen2, qwen3, gemma, arcee"):
        lr_train.patch(gpt2)
    assert issubclass(lr_train.UnsupportedModelError, ValueError)
    assert tuple(spec.name for spec in FAMILIES) == lr_train.SUPPORTED_MODELS
    assert not lr_train.is_patched(gpt2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"position_ids": torch.arange(5)[None]}, "position_ids", id="position_ids-short"),
        pytest.param({"position_ids": torch.arange(18).view(3, 6)}, "position_ids", id="position_ids-rows"),
        pytest.param({"position_ids": torch.arange(6.0)[None]}, "position_ids", id="position_ids-float"),
        pytest.param(
            {"position_ids": torch.tensor([[0, 1, 2, -3, 4, 5]] * 2)}, "position_ids", id="negative"
        ),
        pytest.param({"position_ids": torch.full((2, 6), 2**31)}, "position_ids", id="beyond-rope-range"),
        pytest.param(
            {"cu_seq_lens_q": torch.tensor([0, 4, 10], dtype=torch.int32)},
            "cu_seq_lens_q",
            id="cu_seqlens-short-of-batch",
        ),
        pytest.param(
            {"cu_seq_lens_q": torch.tensor([0, 6, 6, 12], dtype=torch.int32)},
            "cu_seq_lens_q",
            id="cu_seqlens-empty-sequence",
        ),
        pytest.param(
            {
                "cu_seq_lens_q": torch.tensor([0, 6, 12], dtype=torch.int32),
                "cu_seq_lens_k": torch.tensor([0, 5, 12], dtype=torch.int32),
            },
            "cu_seq_lens_k",
            id="cu_seqlens-k-differs",
        ),
        pytest.param(
            {"cu_seq_lens_q": torch.tensor([0, 6, 12], dtype=torch.int32), "max_length_q": 4},
            "max_length_q",
            id="max_length-too-small",
        ),
        pytest.param({"attention_mask": torch.ones(2, 1, 6, 6)}, "attention_mask", id="4d-mask"),
    ],
)
def test_bad_input_names_the_argument(models, kwargs, match):
    model = patched_copy(models("llama"), "torch")
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(2, 6, dtype=torch.long), **kwargs)


def test_bad_patch_arguments(models):
    model = models("llama")
    with pytest.raises(ValueError, match="backend"):
        lr_train.patch(model, backend="cuda")
    with pytest.raises(ValueError, match="attention"):
        lr_train.patch(model, attention="yes")
    with pytest.raises(ValueError, match="cross_entropy"):
        lr_train.patch(model.model)  # a bare decoder stack has no lm_head
    assert not lr_train.is_patched(model)


def test_sliding_window_refused_past_the_window():
    model = lr_train.patch(tiny_model("mistral", sliding_window=8), backend="torch", cross_entropy=False)
    ref = tiny_model("mistral", sliding_window=8)
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():  # up to the window it is plain causal attention
        assert rel_err(model(ids).logits, ref(ids).logits) <= 1e-4
    with pytest.raises(ValueError, match="sliding_window"):
        model(torch.randint(0, 128, (1, 9)))


def test_attention_dropout_refused_in_training():
    model = lr_train.patch(tiny_model("llama", attention_dropout=0.1), backend="torch", cross_entropy=False)
    with pytest.raises(ValueError, match="attention_dropout"):
        model(torch.randint(0, 128, (1, 5)))
    model.eval()
    with torch.no_grad():
        assert model(torch.randint(0, 128, (1, 5))).logits.isfinite().all()


def test_bare_decoder_stack_attention_only(models):
    ref = models("qwen2")
    base = lr_train.patch(copy.deepcopy(ref.model), backend="torch", cross_entropy=False)
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        assert rel_err(base(ids).last_hidden_state, ref.model(ids).last_hidden_state) <= 1e-4
