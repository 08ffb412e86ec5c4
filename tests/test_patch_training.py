"""lr_train.patch in training and inference: fused loss vs the model's own loss, a 20-step convergence
comparison, gradient checkpointing, bf16 autocast, DataCollatorWithFlattening, the HF Trainer, generate().
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from test_patch import BACKENDS, TINY, patched_copy, rel_err, remapped_positions, tiny_model

import lr_train

V = TINY["vocab_size"]


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama")
    return lambda: copy.deepcopy(model)


def labelled_batch(B: int, S: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, S), generator=g)
    labels = ids.clone()
    labels[torch.rand(B, S, generator=g) < 0.25] = -100
    return ids, labels


def loss_and_grads(model, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**kwargs)
    out.loss.backward()
    return out, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got, want, tol=1e-3):
    assert got.keys() == want.keys()
    for name in want:
        assert rel_err(got[name], want[name]) <= tol, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_items", [None, 57], ids=["mean", "num_items_in_batch"])
@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_fused_loss_equals_model_loss(backend, num_items, name):
    ref = tiny_model(name, tie_word_embeddings=(name == "qwen3"))
    patched = patched_copy(ref, backend)
    ids, labels = labelled_batch(2, 17, seed=11)
    pos = remapped_positions(2, 17, 512, seed=12)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}

    want, want_grads = loss_and_grads(
        ref, input_ids=ids, labels=labels, position_ids=pos, attention_mask=torch.ones_like(ids), **extra
    )
    got, got_grads = loss_and_grads(patched, input_ids=ids, labels=labels, position_ids=pos, **extra)

    assert got.logits is None
    assert got.loss.dtype == torch.float32
    assert rel_err(got.loss.detach(), want.loss.detach()) <= 1e-5
    assert_grads_close(got_grads, want_grads)


def test_shift_labels_and_tuple_output(llama):
    ref = llama()
    patched = patched_copy(ref, "torch")
    ids, labels = labelled_batch(1, 12, seed=13)
    shifted = torch.cat([labels[:, 1:], torch.full((1, 1), -100)], dim=1)
    with torch.no_grad():
        want = ref(ids, labels=labels).loss
        got = patched(ids, shift_labels=shifted, labels=labels).loss
        as_tuple = patched(ids, labels=labels, return_dict=False)
    assert rel_err(got, want) <= 1e-5
    assert isinstance(as_tuple, tuple) and rel_err(as_tuple[0], want) <= 1e-5


def test_logits_without_labels_and_logits_to_keep(llama):
    ref = llama().eval()
    patched = patched_copy(ref, "torch")
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        full = ref(ids).logits
        kept = patched(ids, logits_to_keep=1).logits
        assert patched(ids).past_key_values is None  # the fused path builds no cache
    assert kept.shape == (2, 1, V)
    assert rel_err(kept, full[:, -1:]) <= 1e-4


def test_twenty_steps_converge_like_unpatched(llama):
    """Same seed, same data, AdamW: the patched model's 20 losses match the unpatched ones."""
    g = torch.Generator().manual_seed(14)
    # A learnable stream (each row repeats a short random motif) so the loss actually falls.
    motifs = torch.randint(0, V, (4, 2, 6), generator=g)
    batches = [motif.repeat(1, 5) for motif in motifs]

    def train(model):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for step in range(20):
            ids = batches[step % len(batches)]
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return torch.tensor(losses, dtype=torch.float64)

    ref = llama()
    patched = patched_copy(ref, "torch")
    want, got = train(ref), train(patched)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)
    assert got[-1] < 0.8 * got[0]  # it did learn


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_checkpointing(llama, backend, monkeypatch):
    import lr_kernels as lk

    calls = []
    real = lk.varlen_attention
    monkeypatch.setattr(lk, "varlen_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = llama()
    patched = patched_copy(ref, backend)
    patched.gradient_checkpointing_enable()
    ids, labels = labelled_batch(2, 11, seed=15)
    want, want_grads = loss_and_grads(ref, input_ids=ids, labels=labels)
    got, got_grads = loss_and_grads(patched, input_ids=ids, labels=labels)
    assert len(calls) == 2 * TINY["num_hidden_layers"]  # forward + recompute in backward, per layer
    assert rel_err(got.loss.detach(), want.loss.detach()) <= 1e-5
    assert_grads_close(got_grads, want_grads)


def test_bf16_autocast(llama):
    """Under CPU bf16 autocast the patched step runs in bf16 and lands within bf16 error of the unpatched."""
    ref = llama()
    patched = patched_copy(ref, "torch")
    ids, labels = labelled_batch(2, 16, seed=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, want_grads = loss_and_grads(ref, input_ids=ids, labels=labels)
        got, got_grads = loss_and_grads(patched, input_ids=ids, labels=labels)
        logits = patched(ids).logits
    assert logits.dtype == torch.bfloat16
    assert rel_err(got.loss.detach(), want.loss.detach()) <= 2e-2
    for name in want_grads:
        assert rel_err(got_grads[name], want_grads[name]) <= 1e-1, name


def test_flattening_collator_packs_like_separate_sequences(llama):
    """DataCollatorWithFlattening's cu_seq_lens kwargs: loss equals the unpatched model on the same packed row
    (where transformers' own packed-sequence detection separates the sequences).
    """
    ref = llama()
    patched = patched_copy(ref, "torch")
    g = torch.Generator().manual_seed(17)
    features = [{"input_ids": torch.randint(0, V, (n,), generator=g).tolist()} for n in (7, 12, 5)]
    batch = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)(features)
    assert batch["cu_seq_lens_q"].tolist() == [0, 7, 19, 24]
    plain = {k: batch[k] for k in ("input_ids", "labels", "position_ids")}
    # use_cache=False: transformers skips its packed-sequence detection whenever a cache object exists.
    want, want_grads = loss_and_grads(ref, use_cache=False, **plain)
    got, got_grads = loss_and_grads(patched, **batch)
    assert rel_err(got.loss.detach(), want.loss.detach()) <= 1e-5
    assert_grads_close(got_grads, want_grads)


def test_hf_trainer_with_gradient_accumulation(llama, tmp_path):
    """Three Trainer steps (gradient accumulation 2, so num_items_in_batch is used) log the same losses."""
    g = torch.Generator().manual_seed(18)
    rows = [{"input_ids": torch.randint(0, V, (n,), generator=g).tolist()} for n in (9, 14, 6, 11, 8, 13)]

    def run(model):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=1,
            gradient_accumulation_steps=2,
            max_steps=3,
            learning_rate=1e-3,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            seed=0,
            data_seed=0,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True),
        )
        trainer.train()
        return [log["loss"] for log in trainer.state.log_history if "loss" in log]

    ref = llama()
    ref.config.use_cache = False  # else the unpatched reference attends across the packed sequences
    patched = patched_copy(ref, "torch")
    want, got = run(ref), run(patched)
    assert len(want) == 3
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=0)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_generate(llama, use_cache):
    """generate() on a patched model: the cached path falls back to transformers' attention, the uncached
    path re-runs the fused attention over the whole prefix every step; both decode like the unpatched."""
    ref = llama().eval()
    patched = patched_copy(ref, "torch")
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(19))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding, as for batched generation
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=use_cache, pad_token_id=0)
    want = ref.generate(ids, **kwargs)
    got = patched.generate(ids, **kwargs)
    assert torch.equal(got, want)
    assert lr_train.is_patched(patched)
