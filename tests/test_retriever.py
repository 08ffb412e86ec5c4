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
