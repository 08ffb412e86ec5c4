"""Units of the training recipe: RoPE base rule, schedules, atomic directories, merge, heat map."""

import os
from itertools import pairwise

import pytest
import torch

from lr_train.checkpoint import atomic_dir, prune, step_dirs
from lr_train.merge import merge_state_dicts
from lr_train.models import extended_rope_theta, set_context_window
from lr_train.plots import heatmap
from lr_train.training import StageConfig, lr_factor


@pytest.mark.parametrize(
    "theta, d, l0, target, paper",
    [
        pytest.param(500000.0, 128, 8192, 81920, 48.9e6, id="llama3-8b-80k"),
        pytest.param(500000.0, 128, 8192, 131072, 131.5e6, id="llama3-8b-128k"),
        pytest.param(1000000.0, 128, 32768, 131072, 13.5e6, id="qwen2-7b-128k"),
    ],
)
def test_extended_rope_theta_matches_paper_table4(theta, d, l0, target, paper):
    assert extended_rope_theta(theta, d, l0, target) == pytest.approx(paper, rel=3e-3)


def test_extended_rope_theta_keeps_base_when_not_extending():
    assert extended_rope_theta(10000.0, 64, 4096, 4096) == 10000.0
    with pytest.raises(ValueError, match="head_dim"):
        extended_rope_theta(10000.0, 2, 4096, 8192)


def test_set_context_window_updates_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256)
    theta = set_context_window(cfg, 1024)
    assert cfg.max_position_embeddings == 1024
    assert (
        cfg.rope_parameters["rope_theta"]
        == theta
        == pytest.approx(extended_rope_theta(10000.0, 16, 256, 1024))
    )


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedule_shapes(schedule):
    cfg = StageConfig(output="x", max_steps=10, warmup_steps=2, schedule=schedule, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    if schedule == "constant":
        assert all(x == 1.0 for x in f[1:])
    else:
        assert all(a >= b for a, b in pairwise(f[1:]))
        assert lr_factor(10, cfg) == pytest.approx(0.1)


def test_stage_config_rejects_bad_values():
    with pytest.raises(ValueError, match="schedule"):
        StageConfig(output="x", max_steps=3, schedule="step").validate()
    with pytest.raises(ValueError, match="max_steps"):
        StageConfig(output="x", max_steps=0).validate()


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(str(target)) as tmp:
        (open(os.path.join(tmp, "half"), "w")).write("x")
        raise RuntimeError("boom")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_dir(str(target)) as tmp:
        open(os.path.join(tmp, "done"), "w").write("ok")
    assert (target / "done").read_text() == "ok"
    with pytest.raises(ValueError, match="pass --overwrite"), atomic_dir(str(target)):
        pass
    with atomic_dir(str(target), overwrite=True) as tmp:
        open(os.path.join(tmp, "new"), "w").write("ok")
    assert sorted(os.listdir(target)) == ["new"] and sorted(os.listdir(tmp_path)) == ["out"]


def test_step_dirs_and_prune(tmp_path):
    for s in (5, 10, 15):
        (tmp_path / f"step-{s:08d}").mkdir()
    (tmp_path / "step-00000020.partial").mkdir()
    assert [s for s, _ in step_dirs(str(tmp_path))] == [5, 10, 15]
    prune(str(tmp_path), keep=2)
    assert [s for s, _ in step_dirs(str(tmp_path))] == [10, 15]


def test_merge_state_dicts_averages_and_checks():
    a = {"w": torch.ones(2, 2, dtype=torch.bfloat16), "n": torch.tensor([1])}
    b = {"w": torch.full((2, 2), 3.0, dtype=torch.bfloat16), "n": torch.tensor([7])}
    m = merge_state_dicts(a, b)
    assert m["w"].dtype == torch.bfloat16 and torch.equal(
        m["w"], torch.full((2, 2), 2.0, dtype=torch.bfloat16)
    )
    assert torch.equal(m["n"], torch.tensor([7]))
    assert torch.equal(merge_state_dicts(a, b, weight=1.0)["w"], b["w"])
    with pytest.raises(ValueError, match="different parameters"):
        merge_state_dicts(a, {"w": b["w"]})
    with pytest.raises(ValueError, match="shape"):
        merge_state_dicts(a, {"w": torch.ones(3), "n": b["n"]})


def test_heatmap_png_is_valid_and_colours_cells(tmp_path):
    from PIL import Image

    path = str(tmp_path / "grid.png")
    heatmap(
        path,
        [[0.0, 1.0], [float("nan"), 0.5]],
        rows=[0.0, 1.0],
        cols=[256, 1024],
        row_label="depth",
        col_label="length",
        title="tiny — passkey",
    )
    img = Image.open(path)
    assert img.format == "PNG" and img.width > 100 and img.height > 100
    colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 20)}
    near = lambda rgb: any(sum(abs(a - b) for a, b in zip(c, rgb, strict=True)) < 40 for c in colours)
    assert near((165, 0, 38)) and near((0, 104, 55)) and near((160, 160, 160))  # 0 red, 1 green, NaN grey
    assert os.listdir(tmp_path) == ["grid.png"]
    with pytest.raises(ValueError, match="non-empty"):
        heatmap(path, [], rows=[], cols=[], row_label="", col_label="", title="")
    with pytest.raises(ValueError, match="rows"):
        heatmap(path, [[0.5]], rows=[0, 1], cols=[8], row_label="", col_label="", title="")
