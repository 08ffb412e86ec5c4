"""`python -m lr_train prepare` end to end on the toy corpus and tokenizer."""

import json
import os

import numpy as np
import pytest

from lr_train.cli import main
from lr_train.data import PreparedDataset, save_impactful_mask
from lr_train.toy import toy_corpus, toy_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = toy_corpus(40, seed=2)
    jsonl = root / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d}) for d in docs[:30]) + "\n")
    txt = root / "one.txt"
    txt.write_text(docs[30])
    tok = toy_tokenizer()
    ids = root / "ids.jsonl"
    ids.write_text("\n".join(json.dumps({"input_ids": tok(d)["input_ids"]}) for d in docs[31:]) + "\n")
    return {"jsonl": str(jsonl), "txt": str(txt), "ids": str(ids), "docs": docs}


def prepare(out, inputs, *extra, positions="longrecipe", train=512, target=2048):
    argv = [
        "prepare",
        "--tokenizer",
        "toy",
        "--input",
        *inputs,
        "--output",
        str(out),
        "--positions",
        positions,
        "--train-length",
        str(train),
        "--target-length",
        str(target),
        "--quiet",
        *extra,
    ]
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_prepare_longrecipe_writes_a_readable_dataset(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    assert prepare(out, [corpus["jsonl"], corpus["txt"], corpus["ids"]], "--seed", "4") == 0
    summary = capsys.readouterr().out
    for word in ("documents", "tokens kept", "impactful", "mean segment", "coverage", "tokens/s"):
        assert word in summary
    ds = PreparedDataset(out)
    m = ds.manifest
    assert m["settings"]["method"] == "longrecipe" and m["settings"]["seed"] == 4
    st = m["stats"]
    assert st["documents"] == 40 and st["samples"] == len(ds) > 0
    assert 0 < st["kept_tokens"] < st["input_tokens"] and 0 < st["impactful_segment_share"] < 1
    assert st["sample_tokens"] == 512 * len(ds)
    assert set(os.listdir(tmp_path)) == {"ds"}, "temporary folder left behind"
    for i in range(len(ds)):
        pos = ds[i]["position_ids"].numpy()
        assert pos[0] == 0 and (np.diff(pos) > 0).all() and pos[-1] < 2048


def test_prepare_is_deterministic_for_a_seed(corpus, tmp_path):
    files = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert prepare(tmp_path / name, [corpus["jsonl"]], "--seed", str(seed)) == 0
        files[name] = {
            f: (tmp_path / name / f).read_bytes() for f in ("tokens.bin", "positions.bin", "offsets.bin")
        }
    assert files["a"] == files["b"]
    assert files["a"]["positions.bin"] != files["c"]["positions.bin"]


@pytest.mark.parametrize("method", ["pose", "randpos", "full"])
def test_prepare_baselines_keep_all_tokens(corpus, tmp_path, method):
    target = 512 if method == "full" else 2048
    assert prepare(tmp_path / "ds", [corpus["jsonl"]], positions=method, target=target) == 0
    ds = PreparedDataset(tmp_path / "ds")
    st = ds.manifest["stats"]
    assert st["kept_tokens"] == st["input_tokens"] and st["impactful_segment_share"] is None
    assert "drop_ratio" not in ds.manifest["settings"] and "keep_prefix" not in ds.manifest["settings"]
    tok = toy_tokenizer()
    stream = []
    for d in corpus["docs"][:30]:
        stream += tok(d)["input_ids"] + [tok.eos_token_id]
    assert ds.tokens.tolist() == stream[: len(ds.tokens)]


def test_malformed_line_names_file_and_line_and_leaves_nothing(corpus, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    with open(corpus["jsonl"]) as f:
        lines = f.read().splitlines()
    lines.insert(3, '{"text": "unterminated')
    bad.write_text("\n".join(lines))
    out = tmp_path / "out"
    assert prepare(out, [str(bad)]) == 2
    assert f"{bad}:4:" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"], "partial output left behind"
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    assert prepare(out, [str(wrong)]) == 2
    assert f"{wrong}:2:" in capsys.readouterr().err
    assert not out.exists()


def test_refuses_to_overwrite_unless_asked(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert prepare(out, [corpus["txt"]], "--min-length", "1") == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert prepare(out, [corpus["txt"]], "--min-length", "1", "--overwrite") == 0
    assert not (out / "keep.txt").exists() and len(PreparedDataset(out)) >= 1


def test_impactful_mask_file_drives_selection(corpus, tmp_path, capsys):
    vocab = len(toy_tokenizer())
    everything = tmp_path / "all.json"
    save_impactful_mask(everything, range(vocab), vocab)
    assert (
        prepare(tmp_path / "a", [corpus["jsonl"]], "--impactful", str(everything), "--drop-ratio", "1.0") == 0
    )
    st = PreparedDataset(tmp_path / "a").manifest["stats"]
    assert st["kept_tokens"] == st["input_tokens"]
    nothing = tmp_path / "none.json"
    save_impactful_mask(nothing, [], vocab)
    # Nothing impactful and every other segment dropped: no sample, which is an error naming --input.
    assert prepare(tmp_path / "b", [corpus["jsonl"]], "--impactful", str(nothing), "--drop-ratio", "1.0") == 2
    err = capsys.readouterr().err
    assert "--input gave 0 samples" in err and "0 tokens kept" in err
    assert not (tmp_path / "b").exists()


def test_option_checks(corpus, tmp_path, capsys):
    assert prepare(tmp_path / "a", [corpus["jsonl"]], "--drop-ratio", "0.3", positions="pose") == 2
    assert "--drop-ratio" in capsys.readouterr().err
    assert prepare(tmp_path / "a", [corpus["jsonl"]], train=4096, target=2048) == 2
    assert "--target-length 2048 must be >= --train-length 4096" in capsys.readouterr().err
    assert prepare(tmp_path / "a", [str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert prepare(tmp_path / "a", [corpus["jsonl"]], "--keep-prefix", "-2") == 2  # argparse error
    assert not (tmp_path / "a").exists()


def test_datasets_folder_input(corpus, tmp_path):
    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_dict({"text": corpus["docs"][:30]}).save_to_disk(str(folder))
    assert prepare(tmp_path / "from_hf", [str(folder)], "--seed", "3") == 0
    assert prepare(tmp_path / "from_jsonl", [corpus["jsonl"]], "--seed", "3") == 0
    a, b = PreparedDataset(tmp_path / "from_hf"), PreparedDataset(tmp_path / "from_jsonl")
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.positions, b.positions)


@pytest.fixture(scope="module")
def bos_tokenizer(tmp_path_factory):
    """The toy tokenizer with a BOS token added, saved to a folder (as a real model's would be)."""
    tok = toy_tokenizer()
    tok.add_special_tokens({"bos_token": "<|begin|>"})
    folder = tmp_path_factory.mktemp("bos_tok")
    tok.save_pretrained(folder)
    return str(folder), tok


@pytest.mark.parametrize("method", ["longrecipe", "pose", "randpos", "full"])
def test_every_sample_starts_with_bos(corpus, bos_tokenizer, tmp_path, method):
    folder, tok = bos_tokenizer
    bos = tok.bos_token_id
    train, target = 200, (200 if method == "full" else 1000)
    argv = ["prepare", "--tokenizer", folder, "--input", corpus["jsonl"], "--output", str(tmp_path / "ds")]
    argv += ["--positions", method, "--train-length", str(train), "--target-length", str(target), "--quiet"]
    assert main(argv) == 0
    ds = PreparedDataset(tmp_path / "ds")
    assert ds.manifest["bos_token_id"] == bos and len(ds) > 10
    for i in range(len(ds)):
        ids, pos = ds[i]["input_ids"].numpy(), ds[i]["position_ids"].numpy()
        assert len(ids) == train and ids[0] == bos and (ids[1:] != bos).all()
        assert (np.diff(pos) > 0).all() and pos[-1] < target
        if method != "randpos":  # RandPos draws every position, the first one included
            assert pos[0] == 0
    if method != "longrecipe":
        # Samples cut the document stream (EOS after each document) into train - 1 tokens plus a BOS.
        stream = []
        for d in corpus["docs"][:30]:
            stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        body = np.concatenate([ds[i]["input_ids"].numpy()[1:] for i in range(len(ds))])
        assert body.tolist() == stream[: len(body)]


def test_no_second_bos_when_the_text_starts_with_one():
    from lr_train.data import PositionSettings, build_samples

    s = PositionSettings(method="full", train_length=4, target_length=4, min_length=1)
    docs = [[9, 1, 2, 3, 4, 5], [9, 6]]
    got = [x.input_ids.tolist() for x in build_samples(docs, s, bos_token_id=9)]
    assert got == [[9, 1, 2, 3], [9, 4, 5, 9], [9, 6]]
    assert [x.input_ids.tolist() for x in build_samples(docs, s)] == [[9, 1, 2, 3], [4, 5, 9, 6]]


def _replay(tmp_path, rows, tokenizer="toy"):
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "anneal"
    argv = ["prepare", "--tokenizer", tokenizer, "--input", str(path), "--output", str(out), "--quiet"]
    argv += ["--positions", "full", "--train-length", "512", "--target-length", "512", "--min-length", "2"]
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, path, out


REPLAY_ROWS = [
    {"prompt": "What is 2+2?", "response": "It is 4."},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a river."},
            {"role": "assistant", "content": "The Nile."},
        ]
    },
    {"text": "Plain text 7."},
]


def test_replay_rows_without_a_chat_template_use_the_plain_format(tmp_path):
    rc, _, out = _replay(tmp_path, REPLAY_ROWS)
    assert rc == 0
    ds = PreparedDataset(out)
    text = toy_tokenizer().decode(ds.tokens.tolist())
    assert text == (
        "User: What is 2+2?\n\nAssistant: It is 4.<|endoftext|>"
        "System: Be brief.\n\nUser: Name a river.\n\nAssistant: The Nile.<|endoftext|>"
        "Plain text 7.<|endoftext|>"
    )


def test_replay_rows_use_the_tokenizers_chat_template(tmp_path):
    tok = toy_tokenizer()
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(tmp_path / "tok")
    rc, _, out = _replay(tmp_path, REPLAY_ROWS[:2], tokenizer=str(tmp_path / "tok"))
    assert rc == 0
    text = tok.decode(PreparedDataset(out).tokens.tolist())
    assert text == (
        "[user] What is 2+2?\n[assistant] It is 4.\n<|endoftext|>"
        "[system] Be brief.\n[user] Name a river.\n[assistant] The Nile.\n<|endoftext|>"
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "x"}, ":2: missing field 'response'"),
        ({"response": "y"}, ":2: missing field 'prompt'"),
        ({"prompt": 3, "response": "y"}, ":2: 'prompt' must be a string"),
        ({"messages": [{"role": "user"}]}, ":2: messages[0]: missing field 'content'"),
        ({"messages": [{"content": "hi"}]}, ":2: messages[0]: missing field 'role'"),
        ({"messages": []}, ":2: 'messages' must be a non-empty list"),
        ({"body": "z"}, ":2: expected an object with a 'text', 'input_ids', 'prompt' + 'response'"),
    ],
    ids=["no-response", "no-prompt", "prompt-int", "no-content", "no-role", "empty", "unknown"],
)
def test_replay_rows_with_missing_fields_name_file_line_and_field(tmp_path, capsys, row, message):
    rc, path, out = _replay(tmp_path, [REPLAY_ROWS[0], row])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{path}{message}" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_empty_input_is_an_error_naming_the_flag(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "ds"
    assert prepare(out, [str(empty)]) == 2
    assert "--input" in capsys.readouterr().err and not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["empty.jsonl"]


def test_chat_template_refusal_names_file_and_line(tmp_path, capsys):
    tok = toy_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    tok.save_pretrained(tmp_path / "tok")
    rc, path, out = _replay(tmp_path, REPLAY_ROWS, tokenizer=str(tmp_path / "tok"))
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{path}:2: the tokenizer's chat template refused it" in err and "no system role" in err
    assert not out.exists()
