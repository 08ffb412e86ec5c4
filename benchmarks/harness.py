"""Measuring the workloads of ``workloads.py``: threads, memory, CPU time, the machine line and the
side-by-side table printed by both the pytest-benchmark suite (``conftest.py``) and the scripts.

Memory on CPU: freed heap is handed back to the OS (``malloc_trim``), the resident set is read (the
baseline), the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` <- 5), the step runs, and its
peak is ``VmHWM - baseline``: every byte the step touched beyond what existed before it (outputs and
gradients included). torch's CPU allocator hands large blocks back to the OS, so RSS follows live
tensors; tracemalloc would see none of them. Where the counter cannot be reset (not Linux) the peak is
not reported. The scripts run each (implementation, size) in a fresh process (:func:`run_in_subprocess`)
so nothing else lives in the heap; the pytest suite measures in its own process, after a warm-up step.

Time: wall (``time.perf_counter``) and process CPU time (user + system, all threads) per step. On a
shared machine CPU time is the steadier comparison; the table prints the load average beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads() -> int:
    """torch intra-op threads = available cores (more would oversubscribe a container's share)."""
    n = available_cores()
    torch.set_num_threads(n)
    return n


# ---- memory ---------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """VmHWM: the peak resident set since exec or since the last :func:`reset_peak`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM missing from /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel offers no way to."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    # Without glibc the baseline may include some cached free heap (the peak then reads a little low).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def peak_above_baseline():
    """``with peak_above_baseline() as peak: work()`` then ``peak()`` is the bytes of RSS the work added at
    its highest point, or None where that cannot be measured."""
    trim_heap()
    try:
        base = rss_bytes()
        ok = reset_peak()
    except OSError:
        ok = False
    result: list[int | None] = [None]
    yield lambda: result[0]
    if ok:
        result[0] = max(peak_rss_bytes() - base, 0)


# ---- results and the table ----------------------------------------------------------------------------


@dataclass
class Result:
    """Measurements of one implementation at one size of a comparison (times in seconds)."""

    comparison: str
    case: str
    impl: str
    tokens: int
    wall: list[float]
    cpu: list[float]
    peak_bytes: int | None
    loadavg: float  # 1-minute load average when the measurement ended


def quantiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, p20, p80); a single value stands for all three."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=5, method="inclusive")
    return statistics.median(xs), q[0], q[3]


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_lines() -> list[str]:
    """Machine, library versions and commit: the header of every table."""
    import transformers
    import triton

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"{_cpu_model()}; {available_cores()} cores available of {os.cpu_count()}, torch threads "
        f"{torch.get_num_threads()}; load average {load} (1/5/15 min)",
        f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"transformers {transformers.__version__}; commit {_commit()}",
    ]


def format_table(results: Sequence[Result]) -> list[str]:
    """Rows per (comparison, case): baseline, ours, and the ratio ours/baseline (< 1: ours is faster or
    smaller). Times in ms, memory in MiB."""
    head = (
        f"{'case':<18} {'impl':<8} {'median ms':>10} {'p20':>9} {'p80':>9} {'cpu ms':>9} {'tok/s':>10} "
        f"{'peak MiB':>9} {'load':>5}"
    )
    lines = []
    by_key: dict[tuple[str, str], dict[str, Result]] = {}
    for r in results:
        by_key.setdefault((r.comparison, r.case), {})[r.impl] = r
    current = None
    for (name, case), rows in by_key.items():
        if name != current:
            comp = workloads.COMPARISONS[name]
            lines += ["", f"{comp.title}", f"  ours:     {comp.ours}", f"  baseline: {comp.baseline}", head]
            lines.append("-" * len(head))
            current = name
        for impl in workloads.IMPLS:
            if impl not in rows:
                continue
            r = rows[impl]
            med, p20, p80 = quantiles(r.wall)
            peak = f"{r.peak_bytes / 2**20:9.1f}" if r.peak_bytes is not None else f"{'-':>9}"
            lines.append(
                f"{case:<18} {impl:<8} {med * 1e3:10.2f} {p20 * 1e3:9.2f} {p80 * 1e3:9.2f} "
                f"{statistics.median(r.cpu) * 1e3:9.2f} {r.tokens / med:10.0f} {peak} {r.loadavg:5.1f}"
            )
        if len(rows) == 2:
            ours, base = rows["ours"], rows["baseline"]
            t = quantiles(ours.wall)[0] / quantiles(base.wall)[0]
            c = statistics.median(ours.cpu) / statistics.median(base.cpu)
            mem = "-"
            if ours.peak_bytes is not None and base.peak_bytes:
                mem = f"{ours.peak_bytes / base.peak_bytes:.3f}"
            lines.append(f"{'':<18} {'ratio':<8} {t:10.3f} {'':>9} {'':>9} {c:9.3f} {1 / t:10.3f} {mem:>9}")
    lines += [
        "",
        "median/p20/p80: wall time of one step; cpu ms: median process CPU time (all threads) of one step;",
        "peak MiB: RSS the step adds at its highest point; load: 1-min load average after the runs;",
        "ratio: ours / baseline in every column (time, CPU, memory: < 1 is better; tok/s: > 1 is better).",
    ]
    return lines


# ---- measuring one (comparison, implementation, size) --------------------------------------------------


def measure(name: str, impl: str, size: dict, warmup: int, repeats: int) -> Result:
    """Build the step, run ``warmup`` steps, then ``repeats`` timed steps; the peak is over the timed ones."""
    comp = workloads.COMPARISONS[name]
    step = comp.build(impl, **size)
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    with peak_above_baseline() as peak:
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return Result(
        name,
        comp.case(size),
        impl,
        comp.tokens(size),
        wall,
        cpu,
        peak() if comp.memory else None,
        os.getloadavg()[0],
    )


def run_in_subprocess(name: str, impl: str, size: dict, warmup: int, repeats: int) -> Result:
    """:func:`measure` in a fresh Python process, so that its peak memory belongs to this case alone."""
    spec = json.dumps({"name": name, "impl": impl, "size": size, "warmup": warmup, "repeats": repeats})
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", spec],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    ).stdout
    return Result(**json.loads(out.strip().splitlines()[-1]))


def compare(
    name: str, sizes: Sequence[dict], *, rounds: int = 1, warmup: int = 1, repeats: int = 5,
    print_fn: Callable[[str], None] = print,
) -> list[Result]:  # fmt: skip
    """Script mode: for each size, ``rounds`` rounds of one fresh process per implementation (order
    alternating between rounds, so both see the same machine load), each running ``warmup`` + ``repeats``
    steps; print the machine line and the side-by-side table. Returns the merged results."""
    for line in machine_lines():
        print_fn(f"# {line}")
    results = []
    for size in sizes:
        runs: dict[str, list[Result]] = {impl: [] for impl in workloads.IMPLS}
        for rnd in range(rounds):
            for impl in workloads.IMPLS if rnd % 2 == 0 else workloads.IMPLS[::-1]:
                runs[impl].append(run_in_subprocess(name, impl, size, warmup, repeats))
                print(f"measured {name} {runs[impl][-1].case} {impl}", file=sys.stderr, flush=True)
        for impl, rs in runs.items():
            peaks = [r.peak_bytes for r in rs if r.peak_bytes is not None]
            merged = Result(
                name,
                rs[0].case,
                impl,
                rs[0].tokens,
                [t for r in rs for t in r.wall],
                [t for r in rs for t in r.cpu],
                max(peaks) if peaks else None,
                rs[-1].loadavg,
            )
            results.append(merged)
    for line in format_table(results):
        print_fn(line)
    return results


def _worker(spec: str) -> None:
    set_threads()
    args = json.loads(spec)
    print(
        json.dumps(asdict(measure(args["name"], args["impl"], args["size"], args["warmup"], args["repeats"])))
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: measure one case in this process")
    parser.add_argument("--worker", required=True, help="JSON: name, impl, size, warmup, repeats")
    _worker(parser.parse_args().worker)
