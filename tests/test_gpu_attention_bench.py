"""benchmarks/gpu_attention.py without a GPU: FLOP counting, layout, argument parsing, the reference check,
and the whole check -> time -> table/JSON pipeline on CPU tensors with a stand-in timer."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import lr_kernels as lk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_attention.py")
_spec = importlib.util.spec_from_file_location("gpu_attention", SCRIPT)
ga = importlib.util.module_from_spec(_spec)
sys.modules["gpu_attention"] = ga  # dataclasses look their module up there
_spec.loader.exec_module(ga)

SMALL = ["--dtype", "fp32", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--totals", "40",
         "--seq-len", "24", "--target-length", "300"]  # fmt: skip
CHECK_LENS = (33, 7, 1)


def _pairs_by_mask(lengths, causal):
    """Attended (query, key) pairs counted from the reference's own masks."""
    total = 0
    for n in lengths:
        allowed = torch.ones(n, n, dtype=torch.bool)
        total += int((allowed.tril() if causal else allowed).sum())
    return total


@pytest.mark.parametrize("lengths", [[1], [3, 2], [24576] * 5 + [8192], [17, 130, 1]], ids=str)
@pytest.mark.parametrize("causal", [True, False])
def test_attention_flops(lengths, causal):
    H, D = 32, 128
    small = [n for n in lengths if n <= 200]
    if small == lengths:  # count pairs from explicit masks where that is cheap
        assert ga.attention_flops(lengths, H, D, causal=causal) == 4 * H * D * _pairs_by_mask(lengths, causal)
    fwd = ga.attention_flops(lengths, H, D, causal=causal)
    assert ga.attention_flops(lengths, H, D, causal=causal, backward=True) == 3.5 * fwd


def test_attention_flops_known_values():
    # one causal sequence of 8192 tokens, Llama-3-8B heads: 4 * 32 * 128 * 8192 * 8193 / 2
    assert ga.attention_flops([8192], 32, 128) == 549_822_922_752
    # the diagonal counts: L = 1 attends one pair
    assert ga.attention_flops([1], 1, 16) == 64


def test_packed_lengths():
    assert ga.packed_lengths(131072, 24576) == [24576] * 5 + [8192]
    assert ga.packed_lengths(8192, 24576) == [8192]
    assert ga.packed_lengths(49152, 24576) == [24576, 24576]


def test_remapped_positions_layout():
    lengths = [2000, 37, 1]
    pos = ga.remapped_positions(lengths, 8000, seed=3)
    assert pos.dtype == torch.int64 and pos.shape == (2038,)
    for part in pos.split(lengths):
        assert part.min() >= 0 and part.max() < 8000
        assert bool((part[1:] > part[:-1]).all()), "positions rise strictly within a sequence"
    # ~30 segments share 6000 skipped positions: the last one lands far past 0..L-1
    assert pos[:2000].max() > 4000
    cu, _ = lk.cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 2000, 2037, 2038]


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--kv-heads", "5"], "--kv-heads"),
        (["--head-dim", "15"], "--head-dim"),
        (["--totals", "8192", "0"], "--totals"),
        (["--seq-len", "0"], "--seq-len"),
        (["--target-length", "100"], "--target-length"),
        (["--dtype", "fp8"], "--dtype"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v),
)
def test_bad_arguments_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        ga.parse_args(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_defaults_are_llama3_8b():
    args = ga.parse_args([])
    assert (args.heads, args.kv_heads, args.head_dim, args.dtype) == (32, 8, 128, "bf16")
    assert args.totals == [8192, 16384, 32768, 65536, 131072]


def test_without_gpu_exits_zero_with_a_message():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, SCRIPT, "--totals", "8192"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    assert "no CUDA device" in run.stdout


def _wrong_rope(x):
    """Attention with RoPE forgotten: what the check must catch."""
    return lk.varlen_attention(x.q, x.k, x.v, x.cu_seqlens, x.max_seqlen, backend="torch")


def test_check_catches_a_wrong_variant():
    args = ga.parse_args(SMALL)
    bad = ga.check_variant(ga.Variant("no-rope", _wrong_rope), args, torch.device("cpu"), CHECK_LENS)
    assert not bad["ok"] and min(bad["errors"].values()) > 10 * bad["tolerance"]


def test_pipeline_on_cpu_with_a_stand_in_timer(monkeypatch):
    """Check, time and tabulate every variant on CPU tensors (Triton in the interpreter)."""
    args = ga.parse_args(SMALL)
    calls = []

    def timer(fn, grads):
        assert all(t.grad is None for t in grads), "gradients are reset before timing"
        fn()
        calls.append(all(t.grad is not None for t in grads))
        return 2.0, 1.5, 2.5

    def peak_memory(fn):
        fn()
        return 0.25

    real_variants = ga.variants
    monkeypatch.setattr(
        ga, "variants", lambda dtype: [*real_variants(dtype), ga.Variant("no-rope", _wrong_rope)]
    )
    report = ga.run_benchmark(args, torch.device("cpu"), timer, peak_memory, check_lens=CHECK_LENS,
                              meta={"device": "cpu (stand-in timer)"})  # fmt: skip

    checks = {c["variant"]: c["ok"] for c in report["checks"]}
    assert checks == {"fused": True, "rope+varlen": True, "rope+sdpa": True, "no-rope": False}
    assert [s["variant"] for s in report["skipped"]] == ["rope+flash-attn"]  # not installed here, or fp32
    rows = report["results"]
    assert [r["variant"] for r in rows] == ["fused", "rope+varlen", "rope+sdpa"], (
        "failed checks are not timed"
    )
    assert calls == [False, True] * 3, "forward-only calls leave no gradients; forward+backward fills them"
    lengths = ga.packed_lengths(40, 24)
    for r in rows:
        assert (r["tokens"], r["sequences"], r["status"]) == (40, 2, "ok")
        assert r["fwd_ms"] == [2.0, 1.5, 2.5]
        assert r["fwd_tflops"] == pytest.approx(ga.attention_flops(lengths, 2, 16) / 2.0e9)
        assert r["fwd_bwd_tflops"] == pytest.approx(3.5 * r["fwd_tflops"])
        assert r["fwd_peak_gib"] == r["fwd_bwd_peak_gib"] == 0.25

    assert json.loads(json.dumps(report)) == report
    table = ga.format_report(report)
    assert "# device: cpu (stand-in timer)" in table
    assert "- skipped rope+flash-attn:" in table
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| tokens"))
    assert [c.strip() for c in lines[header].strip("|").split("|")][:5] == [
        "tokens", "seqs", "variant", "fwd ms (p20-p80)", "fwd TFLOP/s"
    ]  # fmt: skip
    rows_cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[header + 2 :]]
    cells = next(c for c in rows_cells if c[2] == "fused")
    tflops = ga.attention_flops(lengths, 2, 16) / 2.0e9
    assert cells == ["40", "2", "fused", "2.000 (1.500-2.500)", f"{tflops:.1f}", "2.000 (1.500-2.500)",
                     f"{3.5 * tflops:.1f}", "0.25", "0.25"]  # fmt: skip
    assert any("no-rope" in line and "FAIL" in line for line in lines)
