"""CPU benchmark: fused linear cross-entropy vs ``F.cross_entropy(hidden @ weight.T, targets)``.

Forward + backward (grads for hidden and weight), d = 256, T in {2k, 8k}, V in {32k, 128k}. Every
forward + backward runs in a fresh subprocess so its peak RSS (VmHWM) belongs to it alone, and
baseline and fused processes alternate (``--reps`` rounds) so both see the same machine load. The table
shows the process peak, the increase over the RSS right after the inputs were built ("op peak"), wall
and CPU time.

    PYTHONPATH=. python benchmarks/bench_cross_entropy_cpu.py --compare            # side-by-side table
    PYTHONPATH=. python benchmarks/bench_cross_entropy_cpu.py --compare --cases 8192x128256
    PYTHONPATH=. python -m pytest benchmarks/bench_cross_entropy_cpu.py --benchmark-only   # pytest-benchmark

The baseline at T=8192, V=128256 peaks at about 12.3 GB of RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lr_kernels as lk  # noqa: E402

D = 256
CASES = [(2048, 32000), (2048, 128256), (8192, 32000), (8192, 128256)]
IMPLS = ("baseline", "fused")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """Peak RSS of this process image: VmHWM, which starts afresh at exec.

    ``ru_maxrss`` does not: Linux folds the parent's high-water mark at fork into the child's, so a child of
    a big process (pytest after an in-process baseline run) would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(T: int, V: int, d: int = D, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, d, generator=g).to(dtype).requires_grad_(True)
    weight = (torch.randn(V, d, generator=g) * d**-0.5).to(dtype).requires_grad_(True)
    targets = torch.randint(0, V, (T,), generator=g)
    return hidden, weight, targets


def step(impl: str, hidden, weight, targets, chunk_size: int | None = None) -> float:
    """One forward + backward; returns the loss."""
    hidden.grad = None
    weight.grad = None
    if impl == "baseline":
        loss = F.cross_entropy(hidden @ weight.T, targets)
    else:
        loss = lk.fused_linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size, backend="torch")
    loss.backward()
    return loss.item()


def worker(impl: str, T: int, V: int, reps: int, chunk_size: int | None) -> dict:
    hidden, weight, targets = make_inputs(T, V)
    rss_setup = _rss_bytes()
    times, cpu_times = [], []
    loss = float("nan")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(impl, hidden, weight, targets, chunk_size)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = _peak_rss_bytes()
    return {
        "impl": impl,
        "T": T,
        "V": V,
        "loss": loss,
        "times": times,
        "cpu_times": cpu_times,
        "peak_rss": peak,
        "rss_setup": rss_setup,
        "grad_w_norm": weight.grad.norm().item(),
    }


def run_subprocess(impl: str, T: int, V: int, reps: int, chunk_size: int | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--T", str(T), "--V", str(V)]
    cmd += ["--reps", str(reps)]
    if chunk_size:
        cmd += ["--chunk-size", str(chunk_size)]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=5, method="inclusive")
    return statistics.median(xs), q[0], q[3]


def compare(cases: list[tuple[int, int]], reps: int, chunk_size: int | None) -> None:
    try:
        commit = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), commit {commit}, d={D}, fp32, fwd+bwd, {reps} rounds"
    )
    header = (
        f"{'T':>6} {'V':>7} | {'impl':>8} | {'median s':>8} {'p20':>6} {'p80':>6} {'cpu s':>6} | "
        f"{'tok/s':>8} | "
        f"{'peak RSS':>9} {'op peak':>9} | {'time':>6} {'cpu':>6} {'op mem':>7} {'RSS':>6}"
    )
    print(header)
    print("-" * len(header))
    for T, V in cases:
        # one fwd+bwd per process, baseline and fused interleaved (order alternating per round) so both
        # see the same machine load; peak RSS is the largest over a case's processes
        runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
        for rnd in range(reps):
            for impl in IMPLS if rnd % 2 == 0 else IMPLS[::-1]:
                runs[impl].append(run_subprocess(impl, T, V, 1, chunk_size))
        res = {}
        for impl, rs in runs.items():
            res[impl] = {
                "times": [t for r in rs for t in r["times"]],
                "cpu_times": [t for r in rs for t in r["cpu_times"]],
                "peak_rss": max(r["peak_rss"] for r in rs),
                "op_peak": max(r["peak_rss"] - r["rss_setup"] for r in rs),
                "loss": rs[0]["loss"],
            }
        base = res["baseline"]
        b_med = _quantiles(base["times"])[0]
        b_cpu = statistics.median(base["cpu_times"])
        for impl in IMPLS:
            r = res[impl]
            med, p20, p80 = _quantiles(r["times"])
            cpu = statistics.median(r["cpu_times"])
            ratio = ""
            if impl == "fused":
                ratio = (
                    f" | {med / b_med:6.2f} {cpu / b_cpu:6.2f} {r['op_peak'] / base['op_peak']:7.1%} "
                    f"{r['peak_rss'] / base['peak_rss']:6.1%}"
                )
            print(
                f"{T:>6} {V:>7} | {impl:>8} | {med:8.2f} {p20:6.2f} {p80:6.2f} {cpu:6.2f} | {T / med:8.0f} | "
                f"{r['peak_rss'] / 2**30:7.2f}GB {r['op_peak'] / 2**30:7.2f}GB{ratio}"
            )
        assert abs(res["fused"]["loss"] - base["loss"]) < 1e-3 * abs(base["loss"]), (res["fused"], base)
        sys.stdout.flush()
    print("ratio columns: fused / baseline (median wall time, median CPU time, op peak memory, peak RSS)")
    print("cpu s: median process CPU time (user+sys) of one fwd+bwd; steadier than wall time when busy")


# ---- pytest-benchmark: time in process, peak memory of the same case from a subprocess (extra_info)

try:
    import pytest
except ImportError:  # the script mode needs no pytest
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("impl", IMPLS)
    @pytest.mark.parametrize("T,V", CASES, ids=[f"T{t}-V{v}" for t, v in CASES])
    def test_cpu_linear_cross_entropy(benchmark, T, V, impl):
        mem = run_subprocess(impl, T, V, reps=1)
        benchmark.extra_info.update(
            peak_rss_gb=mem["peak_rss"] / 2**30,
            op_peak_gb=(mem["peak_rss"] - mem["rss_setup"]) / 2**30,
            subprocess_wall_s=mem["times"][0],
            subprocess_cpu_s=mem["cpu_times"][0],
        )
        hidden, weight, targets = make_inputs(T, V)
        loss = benchmark.pedantic(step, args=(impl, hidden, weight, targets), rounds=2, iterations=1)
        assert abs(loss - mem["loss"]) < 1e-3 * abs(mem["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", action="store_true", help="print the side-by-side table")
    ap.add_argument("--cases", nargs="*", help="TxV, e.g. 8192x128256 (default: all four)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds (one process per impl each)")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--V", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.T, args.V, args.reps, args.chunk_size)))
        return
    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases] if args.cases else CASES
    compare(cases, args.reps, args.chunk_size)


if __name__ == "__main__":
    main()
