"""`python -m lr_train compare --quick`: every arm runs through the real stages and the report adds up."""

import json
import math
import os

import pytest

from lr_train.cli import main
from lr_train.commands.compare import ARMS, t_interval


def test_t_interval_matches_student_t():
    mean, lo, hi = t_interval([0.2, 0.4, 0.6])
    half = 4.303 * math.sqrt(0.04 / 3)  # t(0.975, df=2) * s / sqrt(n)
    assert (
        mean == pytest.approx(0.4)
        and lo == pytest.approx(max(0.0, 0.4 - half))
        and hi == pytest.approx(min(1.0, 0.4 + half))
    )
    assert t_interval([0.5]) == (0.5, 0.5, 0.5)
    assert t_interval([1.0, 1.0]) == (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    argv = ["compare", "--quick", "--seeds", "2", "--output", str(out), "--backend", "torch", "--quiet"]
    assert main([*argv, "--extend-lr", "2e-4"]) == 0
    return out


def test_quick_compare_reports_every_arm(quick):
    report = json.load(open(quick / "results.json"))
    assert list(report["arms"]) == list(ARMS) and report["lengths"] == [256, 512, 1024]
    assert report["scale"]["extend_lr"] == 2e-4  # --extend-lr reaches the run and its record
    logged = [json.loads(line)["lr"] for line in open(quick / "full-0" / "extend" / "train_log.jsonl")]
    assert max(logged) <= 2e-4
    tokens = {a["training_tokens"] for a in report["arms"].values()}
    assert len(tokens) == 1  # the same number of training tokens for every arm
    full, lr = report["arms"]["full"], report["arms"]["longrecipe"]
    assert full["sample_length"] == 1024 and lr["sample_length"] == 320
    assert full["train_flops"] > lr["train_flops"]  # longer samples cost more attention
    for arm in report["arms"].values():
        assert len(arm["runs"]) == 2 and [r["seed"] for r in arm["runs"]] == [0, 1]
        for lo, m, hi in zip(arm["low"], arm["mean"], arm["high"], strict=True):
            assert 0.0 <= lo <= m <= hi <= 1.0
    assert report["table"].count("\n") == len(ARMS) + 2  # header, rule, base, one row per arm
    assert (quick / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert list(report["task_tables"]) == ["niah_single", "vt"]  # the --quick tasks
    for task in ("niah_single", "vt"):
        assert (quick / f"compare-{task}.png").read_bytes()[:4] == b"\x89PNG"
        for arm in report["arms"].values():
            band = arm["tasks"][task]
            assert len(band["mean"]) == 3 and all(
                lo <= m <= hi for lo, m, hi in zip(band["low"], band["mean"], band["high"], strict=True)
            )

    # the random-selection arm really selects at random: its data was prepared without an impactful mask
    manifest = json.load(open(quick / "data" / "random-sel-0" / "manifest.json"))
    assert manifest["impactful"] == "none"


def test_quick_compare_resumes_without_retraining(quick, capsys):
    before = os.path.getmtime(quick / "longrecipe-0" / "merged" / "config.json")
    argv = ["compare", "--quick", "--seeds", "2", "--output", str(quick), "--backend", "torch", "--quiet"]
    with pytest.raises(SystemExit) as e:  # made with --extend-lr 2e-4: not resumed with another lr
        main(argv)
    assert e.value.code != 0 and "extend_lr 0.0002 -> 0.0003" in capsys.readouterr().err
    assert main([*argv, "--extend-lr", "2e-4"]) == 0
    assert os.path.getmtime(quick / "longrecipe-0" / "merged" / "config.json") == before
    printed = capsys.readouterr().out
    assert "niah_single, accuracy by context length" in printed and "mean over all tasks" in printed


def test_bad_extend_lr_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--quick", "--extend-lr", "0", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--extend-lr" in err and not (tmp_path / "o").exists()


def test_unknown_arm_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--quick", "--arms", "yarn", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--arms" in err and "yarn" in err and not (tmp_path / "o").exists()
