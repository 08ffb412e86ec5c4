"""`python -m lr_train analyze` with tiny random models saved locally (no download, CPU)."""

import json

import pytest
import torch

from lr_train.cli import main
from lr_train.commands.analyze import Scores, aggregate, token_logprobs_of
from lr_train.data import PreparedDataset, digit_mask, load_impactful_mask, token_texts
from lr_train.toy import toy_corpus, toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "docs.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": d}) for d in toy_corpus(4, seed=9, max_sentences=25)) + "\n"
    )
    return str(path)


def save(model, tok, folder):
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llama_pair(tok, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    torch.manual_seed(1)
    long = LlamaForCausalLM(cfg)
    return save(base, tok, root / "base"), save(long, tok, root / "long"), base, long


@pytest.fixture(scope="module")
def phi_digit_pair(tok, tmp_path_factory):
    """A long model that differs from the base only by a higher LM-head bias on digit tokens (planted)."""
    from transformers import PhiConfig, PhiForCausalLM

    cfg = PhiConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=1024,
    )
    torch.manual_seed(2)
    base = PhiForCausalLM(cfg)
    long = PhiForCausalLM(cfg)
    long.load_state_dict(base.state_dict())
    with torch.no_grad():
        long.lm_head.bias[digit_mask(tok)] += 4.0
    root = tmp_path_factory.mktemp("phi")
    return save(base, tok, root / "base"), save(long, tok, root / "long")


def analyze(base, long, text_file, out, *extra):
    argv = [
        "analyze",
        "--base",
        base,
        "--long",
        long,
        "--input",
        text_file,
        "--output",
        str(out),
        "--device",
        "cpu",
        "--max-length",
        "200",
        *extra,
    ]
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_logprobs_match_full_logits(llama_pair, tok):
    *_, base, long = llama_pair
    ids = torch.tensor(tok(toy_corpus(1, seed=3)[0])["input_ids"][:97])
    for model in (base, long):
        with torch.no_grad():
            logits = model(ids[None]).logits[0, :-1].float()
        expected = logits.log_softmax(-1).gather(1, ids[1:, None])[:, 0]
        torch.testing.assert_close(token_logprobs_of(model, ids), expected, rtol=1e-5, atol=1e-5)


def test_analyze_llama_end_to_end_and_prepare_reads_the_mask(llama_pair, tok, text_file, tmp_path, capsys):
    base, long, *_ = llama_pair
    out = tmp_path / "mask.json"
    assert analyze(base, long, text_file, out, "--top-fraction", "0.25") == 0
    captured = capsys.readouterr()
    printed = captured.out
    for kind in ("number", "capitalised", "punctuation", "function_word", "other"):
        assert f"| {kind} |" in printed, kind
    assert "windows of <= 200 tokens" in captured.err and "forward passes" in captured.err
    payload = json.loads(out.read_text())
    assert payload["top_fraction"] == 0.25 and payload["positions_scored"] > 300
    shares = [c["share_of_top"] for c in payload["classes"].values()]
    assert abs(sum(shares) - 1.0) < 1e-9
    mask = load_impactful_mask(out, len(tok))
    assert 0 < int(mask.sum()) < len(tok)
    assert (tmp_path / "mask.report.md").exists()
    ds = tmp_path / "ds"
    rc = main(
        [
            "prepare",
            "--tokenizer",
            base,
            "--input",
            text_file,
            "--output",
            str(ds),
            "--train-length",
            "128",
            "--target-length",
            "512",
            "--impactful",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0 and PreparedDataset(ds).manifest["impactful"] == str(out)


def test_analyze_finds_a_planted_digit_signal(phi_digit_pair, tok, text_file, tmp_path):
    base, long = phi_digit_pair
    out = tmp_path / "mask.json"
    # Digits are ~20% of the positions: the top 10% are all digits, and every digit id clears the bar.
    assert analyze(base, long, text_file, out, "--min-count", "1", "--top-fraction", "0.1") == 0
    payload = json.loads(out.read_text())
    texts = token_texts(tok)
    found = {texts[i] for i in payload["impactful_token_ids"]}
    assert found and all(any(c.isdigit() for c in t) for t in found), found
    assert len(found) >= 8, found
    assert payload["classes"]["number"]["share_of_top"] > 0.9
    assert payload["classes"]["number"]["mean_delta"] > 2.0 > 0 > payload["classes"]["other"]["mean_delta"]
    by_position = payload["by_position"]
    assert (
        len(by_position) == 4
        and sum(b["top_count"] for b in by_position) >= 0.09 * payload["positions_scored"]
    )
    assert all(b["share_of_top"]["number"] > 0.9 for b in by_position if b["top_count"])


def test_aggregate_rule():
    texts = ["a", " b", "7", ".", "9"]
    targets = torch.tensor([0, 0, 1, 2, 2, 3, 4, 1])
    delta = torch.tensor([0.0, 0.1, -1.0, 5.0, 4.0, 0.2, 9.0, -2.0])
    res = aggregate(Scores(targets, delta), texts, top_fraction=0.25, min_count=2)
    # Sorted Δ: -2 -1 0 .1 .2 4 5 9; the 0.75 quantile (linear) is 4 + 0.25 * (5 - 4) = 4.25.
    assert res["threshold"] == pytest.approx(4.25)
    # "7": mean (5 + 4) / 2 = 4.5 >= 4.25 and seen twice; "9" has the top Δ but is seen once (< min_count).
    assert res["impactful_token_ids"] == [2]
    assert aggregate(Scores(targets, delta), texts, top_fraction=0.25, min_count=1)[
        "impactful_token_ids"
    ] == [2, 4]
    classes = res["classes"]
    assert classes["number"]["count"] == 3 and classes["number"]["share_of_top"] == 1.0
    # "a" is a function word (Δ 0.0 and 0.1), " b" is other (Δ -1.0 and -2.0).
    assert classes["function_word"]["count"] == 2
    assert classes["function_word"]["mean_delta"] == pytest.approx(0.05)
    assert classes["other"]["count"] == 2 and classes["other"]["mean_delta"] == pytest.approx(-1.5)
    assert classes["punctuation"]["share_of_all"] == pytest.approx(1 / 8)
    assert classes["capitalised"]["count"] == 0 and classes["capitalised"]["mean_delta"] is None
    assert res["by_position"] == []  # no window positions given
    with_pos = aggregate(Scores(targets, delta, torch.arange(8)), texts, top_fraction=0.25, min_count=2)
    # Positions 0..7 in four ranges of two; the top positions (Δ 5 and 9) are 3 and 6, both digits.
    assert [b["top_count"] for b in with_pos["by_position"]] == [0, 1, 0, 1]
    assert [b["share_of_top"]["number"] for b in with_pos["by_position"]] == [None, 1.0, None, 1.0]
    assert with_pos["by_position"][1]["share_of_top"]["other"] == 0.0


def test_analyze_checks_options(llama_pair, text_file, tmp_path, capsys):
    base, long, *_ = llama_pair
    assert analyze(base, long, text_file, tmp_path / "m.json", "--top-fraction", "1.5") == 2
    assert "--top-fraction" in capsys.readouterr().err
    (tmp_path / "exists.json").write_text("{}")
    assert analyze(base, long, text_file, tmp_path / "exists.json") == 2
    assert "--overwrite" in capsys.readouterr().err


def test_default_windows_cover_the_long_models_window(llama_pair, tmp_path, capsys):
    base, long, *_ = llama_pair
    doc = tmp_path / "long.jsonl"
    doc.write_text(json.dumps({"text": toy_corpus(1, seed=4, min_sentences=80, max_sentences=80)[0]}))
    out = tmp_path / "mask.json"
    argv = ["analyze", "--base", base, "--long", long, "--input", str(doc), "--output", str(out)]
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    # No --max-length: the paper's 24,576 capped at the long model's window (1024 here), so windows are
    # as long as the documents allow, not the old 4,096 cut-off.
    payload = json.loads(out.read_text())
    assert payload["max_length"] == 1024
    assert "windows of <= 1024 tokens" in capsys.readouterr().err
    assert payload["by_position"][-1]["positions"][1] > 512


def test_windows_start_with_bos_and_respect_the_length(tok, text_file, tmp_path):
    from lr_train.commands.analyze import windows_of

    bos_tok = toy_tokenizer()
    bos_tok.add_special_tokens({"bos_token": "<|begin|>"})
    bos = bos_tok.bos_token_id
    windows, n = windows_of([text_file], bos_tok, len(bos_tok), 64, None)
    assert n == 4 and len(windows) > 8
    assert all(w[0] == bos and 2 <= w.numel() <= 64 and (w[1:] != bos).all() for w in windows)
    plain, _ = windows_of([text_file], tok, len(tok), 64, None)
    assert torch.equal(torch.cat([w[1:] for w in windows]), torch.cat(plain))


def test_analyze_output_is_checked_before_loading(llama_pair, text_file, tmp_path, capsys, monkeypatch):
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    base, long, *_ = llama_pair
    folder = tmp_path / "adir"
    folder.mkdir()
    assert analyze(base, long, text_file, folder, "--overwrite") == 2
    assert "--output" in capsys.readouterr().err
    assert analyze(base, long, text_file, tmp_path / "m.json", "--min-count", "0") == 2
    assert "argument --min-count" in capsys.readouterr().err
