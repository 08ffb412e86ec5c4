"""The recipe's commands end to end on a tiny model: demo, then train/merge/eval on its outputs."""

import json
import os

import pytest
import torch

from lr_train.cli import main


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from lr_train.retriever import train_retriever

    out = tmp_path_factory.mktemp("base") / "retriever"
    train_retriever(str(out), window=256, steps=3, batch=2, progress=False)
    return out


DEMO_ARGS = ["--steps", "4", "--samples", "1", "--backend", "torch", "--quiet"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, tiny_base):
    out = tmp_path_factory.mktemp("demo") / "run"
    main(["demo", "--output", str(out), "--base", str(tiny_base), *DEMO_ARGS])
    return out


def test_demo_writes_every_stage(demo_dir):
    for sub in ("data/longrecipe", "data/anneal", "extend/model", "anneal/model", "merged"):
        assert os.path.isdir(demo_dir / sub), sub
    report = json.load(open(demo_dir / "report.json"))
    assert report["lengths"] == [256, 512, 1024]
    for name in ("base", "extended"):
        acc = report["accuracy"][name]
        assert len(acc) == 3 and all(0.0 <= a <= 1.0 for a in acc)
    ruler = json.load(open(demo_dir / "eval" / "merged.json"))
    assert list(ruler["tasks"]) == ["niah_single"] and ruler["lengths"] == [256, 512, 1024]
    assert (demo_dir / "needle.png").read_bytes()[:4] == b"\x89PNG"
    leftovers = [n for n in os.listdir(demo_dir) if ".tmp" in n or n.endswith(".partial")]
    assert leftovers == []


def test_demo_extends_rope_base_and_merges_weights(demo_dir, tiny_base):
    from transformers import AutoModelForCausalLM

    from lr_train.models import extended_rope_theta

    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    annealed = AutoModelForCausalLM.from_pretrained(demo_dir / "anneal/model")
    merged = AutoModelForCausalLM.from_pretrained(demo_dir / "merged")
    assert merged.config.max_position_embeddings == 1024
    assert merged.config.rope_parameters["rope_theta"] == pytest.approx(
        extended_rope_theta(10000.0, 32, 256, 1024)
    )
    sb, sa, sm = base.state_dict(), annealed.state_dict(), merged.state_dict()
    for name in sm:
        torch.testing.assert_close(sm[name], (sb[name] + sa[name]) / 2, rtol=1e-6, atol=1e-6, msg=name)


def test_demo_is_resumable(demo_dir, tiny_base, capsys):
    before = os.path.getmtime(demo_dir / "merged" / "config.json")
    main(["demo", "--output", str(demo_dir), "--base", str(tiny_base), *DEMO_ARGS])
    assert os.path.getmtime(demo_dir / "merged" / "config.json") == before
    out = capsys.readouterr().out
    assert "needle-in-a-haystack accuracy" in out and "python -m lr_train eval" in out


def test_demo_names_a_missing_base(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--output", str(tmp_path / "o"), "--base", str(tmp_path / "nope"), "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--base" in err and len(err.strip().splitlines()) == 1


def test_eval_ruler_on_the_demos_merged_model(demo_dir, tmp_path):
    out = tmp_path / "ruler"
    model = str(demo_dir / "merged")
    sizes = ["--lengths", "256", "512", "--depths", "0.5", "--samples", "1"]
    main(["eval", "--model", model, "--tokenizer", "toy", "--suite", "ruler", "--tasks", "all", *sizes,
          "--output", str(out), "--quiet", "--backend", "torch"])  # fmt: skip
    results = json.load(open(out / "results.json"))
    assert set(results["ruler"]["tasks"]) == {
        "niah_single",
        "niah_multikey",
        "niah_multivalue",
        "niah_multiquery",
        "vt",
    }
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "ruler-by-length.png" in pngs and "ruler-niah_single.png" in pngs


def test_train_command_errors_are_clear(tmp_path, demo_dir, tiny_base, capsys):
    common = ["--output", str(tmp_path / "o"), "--max-steps", "1", "--tokens-per-batch", "512"]
    missing, short_data = str(tmp_path / "missing"), str(demo_dir / "data" / "longrecipe")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "--stage",
                "extend",
                "--model",
                "tiny-llama",
                "--tokenizer",
                "toy",
                "--data",
                missing,
                *common,
            ]
        )
    assert e.value.code == 2 and "not a prepared dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--stage", "anneal", "--model", str(tiny_base), "--data", short_data, *common])
    assert e.value.code == 2 and "window" in capsys.readouterr().err


def test_eval_command_refuses_to_overwrite(tmp_path, demo_dir, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(demo_dir / "merged"), "--lengths", "64", "--output", str(out)])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
