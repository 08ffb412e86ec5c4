"""The tiny base that retrieves: the routine that trains it, and the copy bundled for the demo."""

import json
import os

import pytest
import torch

from lr_train.commands.demo import BUNDLED_BASE
from lr_train.retriever import train_retriever


def test_train_retriever_saves_a_model_and_its_log(tmp_path):
    out = tmp_path / "base"
    log = train_retriever(str(out), window=256, steps=2, batch=2, tasks=("niah_single", "vt"), progress=False)
    files = {"config.json", "generation_config.json", "model.safetensors", "retriever_log.json"}
    assert set(os.listdir(out)) == files | {"tokenizer.json", "tokenizer_config.json"}
    saved = json.load(open(out / "retriever_log.json"))
    assert saved["settings"]["tasks"] == ["niah_single", "vt"] and log["final_loss"] > 0
    assert json.load(open(out / "config.json"))["max_position_embeddings"] == 256


def test_train_retriever_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="too short for task niah_multivalue"):
        train_retriever(str(tmp_path / "a"), window=100, steps=1, tasks=("niah_multivalue",), progress=False)
    with pytest.raises(ValueError, match="unknown task"):
        train_retriever(str(tmp_path / "b"), window=256, steps=1, tasks=("needle",), progress=False)
    assert os.listdir(tmp_path) == []


def test_bundled_base_retrieves_a_single_needle_in_its_window():
    """The demo's premise: the bundled base answers the single-needle task inside its 256-token window."""
    from transformers import AutoModelForCausalLM

    from lr_train.evaluation import ruler_suite
    from lr_train.toy import toy_tokenizer

    model = AutoModelForCausalLM.from_pretrained(BUNDLED_BASE, dtype=torch.float32)
    assert model.config.max_position_embeddings == 256
    r = ruler_suite(
        model,
        toy_tokenizer(),
        tasks=["niah_single"],
        lengths=[256],
        depths=[0.0, 1.0],
        samples=3,
        progress=False,
    )
    assert r["tasks"]["niah_single"]["mean"] >= 5 / 6


def test_training_rows_ask_every_question_the_needles_answer_inside_the_window():
    """A multi-key prompt is followed by its question and the other keys' questions, each with its answer
    (labels on the answers only), and the row stays within the length cap plus the first answer."""
    import random

    from lr_train import ruler
    from lr_train.retriever import _batch
    from lr_train.toy import toy_tokenizer

    tok = toy_tokenizer()
    enc = ruler._Encoder(tok)
    floors = {"niah_multikey": ruler.min_length(tok, "niah_multikey")}
    plain = _batch(tok, enc, ["niah_multikey"], floors, 256, 8, random.Random(0))
    assert all(tok.decode(row).count("What is") == 1 for row in plain[0])  # the default: one question
    ids, answers, text = _batch(tok, enc, ["niah_multikey"], floors, 256, 8, random.Random(0), None, True)
    asked = []
    for row, ans, txt in zip(ids, answers, text, strict=True):
        real = row[txt != -100]
        words = tok.decode(real)
        asked.append(words.count("What is the special magic number for"))
        assert len(real) <= 256 + len(enc(" 12345."))
        # every labelled answer is a number stated by a needle of the same row
        spans = tok.decode(row[ans != -100])
        for value in ruler._NUMBER.findall(spans):
            assert f"is {value}." in words.split("What is")[0]
    assert min(asked) >= 1 and max(asked) >= 2  # extra questions where the window has room for them


def test_continuing_from_a_saved_base_records_every_phase(tmp_path):
    first = tmp_path / "first"
    train_retriever(str(first), steps=2, batch=2, tasks=("niah_single",), progress=False)
    log = train_retriever(
        str(tmp_path / "second"),
        steps=3,
        batch=2,
        tasks=("niah_single", "niah_multikey"),
        weights=(1, 3),
        first_task_share=0.0,
        extra_questions=True,
        init=str(first),
        lr=5e-4,
        progress=False,
    )
    assert [p["steps"] for p in log["phases"]] == [2, 3]
    assert log["phases"][1]["init"] == str(first) and log["phases"][1]["weights"] == [1.0, 3.0]
    assert log["seconds"] == pytest.approx(sum(p["seconds"] for p in log["phases"]))
    saved = json.load(open(tmp_path / "second" / "retriever_log.json"))
    assert saved["phases"] == log["phases"]


def test_retriever_refuses_bad_weights_and_init(tmp_path):
    with pytest.raises(ValueError, match="weights must be 2"):
        train_retriever(
            str(tmp_path / "a"), steps=1, tasks=("niah_single", "vt"), weights=(1,), progress=False
        )
    with pytest.raises(ValueError, match=r"init: .* not a folder written by train_retriever"):
        train_retriever(str(tmp_path / "b"), steps=1, init=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="first_task_share"):
        train_retriever(str(tmp_path / "c"), steps=1, first_task_share=1.5, progress=False)
    assert os.listdir(tmp_path) == []


def test_retriever_command_line(tmp_path, capsys):
    from lr_train.retriever import main

    out = tmp_path / "base"
    assert main([str(out), "--steps", "2", "--batch", "3", "--tasks", "niah_single", "--quiet"]) == 0
    assert "final loss" in capsys.readouterr().out
    assert json.load(open(out / "retriever_log.json"))["settings"]["batch"] == 3
    assert main([str(out), "--steps", "1", "--quiet"]) != 0  # exists: refused, left as it was
    assert "output" in capsys.readouterr().err
    assert main([str(tmp_path / "other"), "--tasks", "needle", "--quiet"]) != 0
    assert "--tasks: unknown task 'needle'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "other"), "--lr", "0", "--quiet"])
    assert e.value.code == 2 and "--lr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "other"), "--preset", "huge", "--quiet"])
    assert e.value.code == 2 and "--preset" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["base"]
    wide = tmp_path / "wide"
    preset = ["--preset", "tiny-llama-4l-wide"]
    assert (
        main([str(wide), *preset, "--steps", "1", "--batch", "1", "--tasks", "niah_single", "--quiet"]) == 0
    )
    assert json.load(open(wide / "config.json"))["hidden_size"] == 256
    assert json.load(open(wide / "retriever_log.json"))["settings"]["preset"] == "tiny-llama-4l-wide"
