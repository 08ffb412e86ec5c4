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


def test_impactful_mask_file_drives_selection(corpus, tmp_path):
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
    assert prepare(tmp_path / "b", [corpus["jsonl"]], "--impactful", str(nothing), "--drop-ratio", "1.0") == 0
    st = PreparedDataset(tmp_path / "b").manifest["stats"]
    assert st["kept_tokens"] == 0 and st["samples"] == 0


def test_option_checks(corpus, tmp_path, capsys):
    assert prepare(tmp_path / "a", [corpus["jsonl"]], "--drop-ratio", "0.3", positions="pose") == 2
    assert "--drop-ratio" in capsys.readouterr().err
    assert prepare(tmp_path / "a", [corpus["jsonl"]], train=4096, target=2048) == 2
    assert "target_length" in capsys.readouterr().err
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
