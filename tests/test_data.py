"""lr_train.data: tokenizer-derived masks, the four position methods, the prepared format, packing and
the collator."""

import json

import numpy as np
import pytest
import torch

import lr_kernels as lk
from lr_train.data import (
    IGNORE_INDEX,
    PackedBatchSampler,
    PackedCollator,
    PositionSettings,
    PreparedDataset,
    PreparedDatasetWriter,
    SampleBuilder,
    build_samples,
    delimiter_mask,
    digit_mask,
    load_impactful_mask,
    pack_samples,
    save_impactful_mask,
    token_class,
    token_texts,
)
from lr_train.toy import toy_corpus, toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


@pytest.fixture(scope="module")
def masks(tok):
    texts = token_texts(tok)
    return texts, delimiter_mask(tok, texts=texts), digit_mask(tok, texts=texts)


@pytest.fixture(scope="module")
def docs(tok):
    return [
        tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in toy_corpus(30, seed=5)
    ]


def test_toy_corpus_is_deterministic_and_mixes_numbers():
    a, b = toy_corpus(5, seed=1), toy_corpus(5, seed=1)
    assert a == b and a != toy_corpus(5, seed=2)
    text = " ".join(a)
    assert any(ch.isdigit() for ch in text) and "." in text and "?" in text and "\n" in text


def test_toy_tokenizer_has_real_digit_and_delimiter_tokens(tok, masks):
    texts, delim, digits = masks
    assert len(texts) == len(tok) > 500
    ids = tok("On May 3, 1999, Ada counted 42 boxes. Why?\nYes!", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "On May 3, 1999, Ada counted 42 boxes. Why?\nYes!"
    assert any(digits[i] for i in ids) and sum(bool(delim[i]) for i in ids) == 4  # ". ? \n !"
    assert toy_tokenizer().get_vocab() == tok.get_vocab(), "the toy tokenizer must be the same on every call"


def test_masks_follow_token_texts(tok, masks):
    texts, delim, digits = masks
    for i, t in enumerate(texts):
        ends = "\n" in t or t.rstrip(" \t").endswith((".", "!", "?"))
        assert bool(delim[i]) == (ends or i == tok.eos_token_id), (i, t)
        assert bool(digits[i]) == any(c.isdigit() for c in t), (i, t)
    assert delim.sum() >= 4 and digits.sum() >= 10


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("7", "number"),
        (" 12", "number"),
        ("3rd", "number"),
        (".", "punctuation"),
        (" ,", "punctuation"),
        (" the", "function_word"),
        ("And", "function_word"),
        (" of", "function_word"),
        (" Ada", "capitalised"),
        ("Paris", "capitalised"),
        (" river", "other"),
        ("\n", "other"),
        ("", "other"),
    ],
    ids=["7", "sp12", "3rd", "dot", "comma", "the", "And", "of", "Ada", "Paris", "river", "newline", "empty"],
)
def test_token_class(text, cls):
    assert token_class(text) == cls


def test_impactful_mask_file_roundtrip_and_errors(tmp_path):
    path = tmp_path / "mask.json"
    save_impactful_mask(path, [5, 2, 5], 10, note="x")
    mask = load_impactful_mask(path, 10)
    assert mask.tolist() == [i in (2, 5) for i in range(10)]
    with pytest.raises(ValueError, match="vocabulary of 10"):
        load_impactful_mask(path, 11)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not an lr_train impactful-mask"):
        load_impactful_mask(path, 10)


def test_settings_validation():
    with pytest.raises(ValueError, match="method"):
        PositionSettings(method="yarn")
    with pytest.raises(ValueError, match="target_length"):
        PositionSettings(train_length=100, target_length=50)
    with pytest.raises(ValueError, match="keep_prefix"):
        PositionSettings(keep_prefix=-3)
    with pytest.raises(ValueError, match="drop_ratio"):
        PositionSettings(drop_ratio=2.0)


def run_builder(settings, docs, masks):
    _, delim, digits = masks
    builder = SampleBuilder(settings, delim, digits, batch_samples=3)
    samples = [s for d in docs for s in builder.add_document(d)] + builder.finish()
    return builder, samples


@pytest.mark.parametrize("method", ["longrecipe", "pose", "randpos", "full"])
def test_every_method_gives_valid_samples(method, docs, masks):
    target = 1024 if method == "full" else 2048
    settings = PositionSettings(
        method=method, train_length=256 if method != "full" else 1024, target_length=target, seed=3
    )
    _, samples = run_builder(settings, docs, masks)
    assert samples and all(len(s.input_ids) == settings.train_length for s in samples)
    for s in samples:
        p = s.position_ids
        assert p.dtype == np.int64 and len(p) == len(s.input_ids)
        assert (np.diff(p) > 0).all() and p[0] >= 0 and p[-1] < target
        if method == "full":
            assert (p == np.arange(len(p))).all()
    if method != "longrecipe":
        stream = np.concatenate([np.asarray(d) for d in docs])
        assert (
            np.concatenate([s.input_ids for s in samples]) == stream[: len(samples) * settings.train_length]
        ).all()
    _, again = run_builder(settings, docs, masks)
    assert all(
        (a.position_ids == b.position_ids).all() and (a.input_ids == b.input_ids).all()
        for a, b in zip(samples, again, strict=True)
    )


def test_longrecipe_samples_are_selected_segments_with_remapped_positions(docs, masks):
    _, delim, digits = masks
    settings = PositionSettings(
        method="longrecipe", train_length=300, target_length=1000, drop_ratio=0.5, keep_prefix=0, seed=11
    )
    builder, samples = run_builder(settings, docs, masks)
    # The kept stream is exactly the selected segments of every document, in order.
    kept = []
    for i, d in enumerate(docs):
        ids = torch.tensor(d)
        starts = lk.split_segments(ids, delim)
        kept.append(ids[lk.select_segments(ids, starts, digits, 0.5, 11, document_index=i)])
    kept = torch.cat(kept).numpy()
    out = np.concatenate([s.input_ids for s in samples])
    assert (out == kept[: len(out)]).all()
    st = builder.stats
    assert st.kept_tokens == len(kept) and st.input_tokens == sum(map(len, docs))
    assert 0 < st.impactful_segments <= st.kept_segments < st.segments
    # Dropped share of the plain segments: near 0.5.
    plain = st.segments - st.impactful_segments
    assert abs((st.kept_segments - st.impactful_segments) / plain - 0.5) < 0.1
    # No prefix: a position jump happens only right after a delimiter (every document ends with EOS, a
    # delimiter too), and gaps do occur.
    n_jumps = 0
    for s in samples:
        jumps = np.nonzero(np.diff(s.position_ids) > 1)[0]
        assert delim[torch.from_numpy(s.input_ids[jumps])].all()
        assert s.position_ids[0] == 0
        n_jumps += len(jumps)
    assert n_jumps > len(samples)


def test_build_samples_with_remainder(docs, masks):
    _, delim, digits = masks
    total = sum(map(len, docs))
    settings = PositionSettings(method="full", train_length=1000, target_length=1000, min_length=1)
    samples = list(build_samples(docs, settings, delim, digits))
    assert sum(len(s.input_ids) for s in samples) == total
    assert len(samples[-1].input_ids) == (total % 1000 or 1000)


def test_prepared_dataset_roundtrip(tmp_path):
    writer = PreparedDatasetWriter(tmp_path)
    rows = [(np.arange(5), np.array([0, 1, 4, 5, 9])), (np.array([7, 8]), np.array([0, 3]))]
    for ids, pos in rows:
        writer.write(ids, pos)
    writer.close({"settings": {"method": "longrecipe"}})
    ds = PreparedDataset(tmp_path)
    assert len(ds) == 2 and ds.lengths.tolist() == [5, 2] and ds.settings["method"] == "longrecipe"
    assert ds[1]["input_ids"].tolist() == [7, 8] and ds[-2]["position_ids"].tolist() == [0, 1, 4, 5, 9]
    assert ds[0]["input_ids"].dtype == torch.int64
    with pytest.raises(IndexError):
        ds[2]
    (tmp_path / "tokens.bin").write_bytes(b"\0" * 4)
    with pytest.raises(ValueError, match="truncated"):
        PreparedDataset(tmp_path)


def test_pack_samples():
    assert pack_samples([3, 4, 2, 5, 1], 6) == [[0], [1, 2], [3, 4]]
    assert pack_samples([], 6) == []
    with pytest.raises(ValueError, match="tokens_per_batch"):
        pack_samples([7], 6)
    with pytest.raises(ValueError, match="tokens_per_batch"):
        pack_samples([1], 0)


def test_batch_sampler_is_seeded_and_covers_everything():
    lengths = [5, 3, 8, 2, 7, 1, 4]
    sampler = PackedBatchSampler(lengths, 10, seed=1)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(7))
    assert all(sum(lengths[i] for i in b) <= 10 for b in first)
    assert list(PackedBatchSampler(lengths, 10, seed=1)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_collator_matches_hf_flattening_and_keeps_positions():
    from transformers import DataCollatorWithFlattening

    feats = [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}, {"input_ids": [1]}]
    ours = PackedCollator()(feats)
    hf = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(feats)
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k"):
        assert torch.equal(ours[key], torch.as_tensor(hf[key])), key
        assert ours[key].dtype == torch.as_tensor(hf[key]).dtype, key
    assert ours["max_length_q"] == ours["max_length_k"] == hf["max_length_q"] == 3
    assert ours["cu_seq_lens_q"].dtype == torch.int32 and ours["input_ids"].shape == (1, 6)

    remapped = PackedCollator()(
        [{"input_ids": [5, 6, 7], "position_ids": [0, 40, 41]}, {"input_ids": [8, 9]}]
    )
    assert remapped["position_ids"].tolist() == [[0, 40, 41, 0, 1]]
    assert remapped["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]


def test_collator_labels_do_not_cross_samples_after_hf_shift():
    # HF's causal-LM loss compares logits[t] with labels[t+1]: the last token of sample 0 must not be asked
    # to predict the first token of sample 1.
    batch = PackedCollator()([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    shifted = batch["labels"][0, 1:]
    cu = batch["cu_seq_lens_q"].tolist()
    for boundary in cu[1:-1]:
        assert shifted[boundary - 1] == IGNORE_INDEX


def test_dataloader_over_prepared_dataset(tmp_path):
    writer = PreparedDatasetWriter(tmp_path)
    for n in (4, 6, 3, 5):
        writer.write(np.arange(n), np.arange(n) * 2)
    writer.close({})
    ds = PreparedDataset(tmp_path)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=PackedBatchSampler(ds.lengths, 10, shuffle=False), collate_fn=PackedCollator()
    )
    batches = list(loader)
    assert [b["cu_seq_lens_q"].tolist() for b in batches] == [[0, 4, 10], [0, 3, 8]]
    assert batches[0]["position_ids"][0, 4:].tolist() == [0, 2, 4, 6, 8, 10]
