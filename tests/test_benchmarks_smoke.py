"""The benchmarks still run and still compare like with like (tiny sizes; no timing is checked).

Every workload of ``benchmarks/workloads.py`` against its baseline (same numbers, twice in a row, so no
state leaks between steps), the memory probe and table of ``benchmarks/harness.py``, and the README's
benchmark command end to end at ``--bench-size tiny`` (collection of ``bench_*.py``, the pytest-benchmark
groups and the side-by-side summary).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "benchmarks")
COMPARISONS = ("attention", "cross_entropy", "model_step", "positions", "rope")


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)
    return importlib.import_module("workloads"), importlib.import_module("harness")


def test_comparison_table_is_complete(bench_modules):
    workloads, _ = bench_modules
    assert tuple(workloads.COMPARISONS) == COMPARISONS
    for comp in workloads.COMPARISONS.values():
        assert set(comp.sizes) == {"tiny", "small", "large"}, comp.name


@pytest.mark.parametrize("name", COMPARISONS)
def test_workload_matches_baseline(bench_modules, name):
    workloads, _ = bench_modules
    comp = workloads.COMPARISONS[name]
    for size in comp.sizes["tiny"]:
        ours, baseline = comp.build("ours", **size), comp.build("baseline", **size)
        first = ours()
        comp.check(ours(), baseline(), size)
        # The first result is still intact after a second step (nothing is reused in place).
        comp.check(first, baseline(), size)


def test_workload_rejects_unknown_impl(bench_modules):
    workloads, _ = bench_modules
    with pytest.raises(ValueError, match="impl must be one of"):
        workloads.cross_entropy("fused", tokens=4, vocab=8)


def test_positions_check_rejects_a_bad_layout(bench_modules):
    workloads, _ = bench_modules
    docs = [[2, 3]]
    workloads.check_layout(docs, [[0, 1, 5, 6, 7]], target=8)
    for bad in ([[0, 1, 5, 7, 8]], [[1, 2, 5, 6, 7]], [[0, 1, 1, 2, 3]], [[0, 1, 6, 7, 8]]):
        with pytest.raises(AssertionError):
            workloads.check_layout(docs, bad, target=8)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS reset needs Linux procfs")
def test_memory_probe_sees_an_allocation(bench_modules):
    _, harness = bench_modules
    with harness.peak_above_baseline() as peak:
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        del x
    assert 60 * 2**20 <= peak() <= 200 * 2**20


def test_table_has_ratio_rows(bench_modules):
    _, harness = bench_modules
    results = [harness.measure("cross_entropy", impl, {"tokens": 8, "vocab": 16}, 0, 2) for impl in
               ("baseline", "ours")]  # fmt: skip
    lines = harness.format_table(results)
    base, ours = results
    rows = [line.split() for line in lines if line.split()[:1] in (["T8-V16"], ["ratio"])]
    assert [r[:2] for r in rows[:2]] == [["T8-V16", "baseline"], ["T8-V16", "ours"]] and len(rows) == 3, lines
    time_ratio = harness.quantiles(ours.wall)[0] / harness.quantiles(base.wall)[0]
    assert float(rows[2][1]) == pytest.approx(time_ratio, abs=1e-3), lines


@pytest.mark.slow
def test_readme_benchmark_command_runs(tmp_path):
    # Two cheap comparisons run (the workloads above cover the rest); all ten tests must be collected.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "--bench-size", "tiny", "-q"]
    cmd += ["-p", "no:cacheprovider", f"--benchmark-storage={tmp_path}", "-k", "positions or cross_entropy"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 passed, 6 deselected" in out.stdout, out.stdout[-3000:]
    summary = out.stdout.split("ours vs baseline", 1)[1]
    for name, case in (("cross_entropy", "T40-V300"), ("positions", "3x200-w800")):
        assert f"benchmark '{name} {case}': 2 tests" in out.stdout, name  # pytest-benchmark's group
        assert f"{case} " in summary, case
    assert summary.count("ratio ") == 2, summary
