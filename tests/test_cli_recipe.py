"""The recipe's commands end to end on a tiny model: demo, then train/merge/eval on its outputs."""

import json
import os

import pytest
import torch

from lr_train.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    main(["demo", "--output", str(out), "--steps", "4", "--docs", "40", "--backend", "torch", "--quiet"])
    return out


def test_demo_writes_every_stage(demo_dir):
    for sub in (
        "data-base",
        "data-longrecipe",
        "data-anneal",
        "base/model",
        "extend/model",
        "anneal/model",
        "merged",
        "eval-base",
        "eval-merged",
    ):
        assert os.path.isdir(demo_dir / sub), sub
    report = json.load(open(demo_dir / "report.json"))
    ppl = report["results"]["merged"]["perplexity"]["ppl"]
    assert len(ppl) == 8 and all(p == p and p > 1 for p in ppl)
    grid = report["results"]["merged"]["passkey"]["accuracy"]
    assert len(grid) == 3 and all(0.0 <= a <= 1.0 for row in grid for a in row)
    assert (demo_dir / "eval-merged" / "passkey.png").read_bytes()[:4] == b"\x89PNG"
    leftovers = [n for n in os.listdir(demo_dir) if ".tmp" in n or n.endswith(".partial")]
    assert leftovers == []


def test_demo_extends_rope_base_and_merges_weights(demo_dir):
    from transformers import AutoModelForCausalLM

    from lr_train.models import extended_rope_theta

    base = AutoModelForCausalLM.from_pretrained(demo_dir / "base/model")
    annealed = AutoModelForCausalLM.from_pretrained(demo_dir / "anneal/model")
    merged = AutoModelForCausalLM.from_pretrained(demo_dir / "merged")
    assert merged.config.max_position_embeddings == 1024
    assert merged.config.rope_parameters["rope_theta"] == pytest.approx(
        extended_rope_theta(10000.0, 32, 256, 1024)
    )
    sb, sa, sm = base.state_dict(), annealed.state_dict(), merged.state_dict()
    for name in sm:
        torch.testing.assert_close(sm[name], (sb[name] + sa[name]) / 2, rtol=1e-6, atol=1e-6, msg=name)


def test_demo_is_resumable(demo_dir, capsys):
    before = os.path.getmtime(demo_dir / "merged" / "config.json")
    main(["demo", "--output", str(demo_dir), "--steps", "4", "--docs", "40", "--backend", "torch", "--quiet"])
    assert os.path.getmtime(demo_dir / "merged" / "config.json") == before
    assert "perplexity by position" in capsys.readouterr().out


def test_train_command_errors_are_clear(tmp_path, demo_dir, capsys):
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
                str(tmp_path / "missing"),
                "--output",
                str(tmp_path / "o"),
                "--max-steps",
                "1",
                "--tokens-per-batch",
                "512",
            ]
        )
    assert e.value.code == 2 and "not a prepared dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "--stage",
                "anneal",
                "--model",
                str(demo_dir / "base/model"),
                "--data",
                str(demo_dir / "data-longrecipe"),
                "--output",
                str(tmp_path / "o"),
                "--max-steps",
                "1",
                "--tokens-per-batch",
                "512",
            ]
        )
    assert e.value.code == 2 and "window" in capsys.readouterr().err


def test_eval_command_refuses_to_overwrite(tmp_path, demo_dir, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(demo_dir / "merged"), "--lengths", "64", "--output", str(out)])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
