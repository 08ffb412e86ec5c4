"""pytest-benchmark suite set-up: collect ``bench_*.py``, size option, torch threads, the comparison table.

``python -m pytest benchmarks/`` runs every comparison of ``workloads.COMPARISONS`` at its "small" sizes
(``--bench-size large`` for the big ones, ``tiny`` for a seconds-long check that everything runs). Each
(comparison, size) is one pytest-benchmark group holding ours and the baseline, so pytest-benchmark's
own table puts them together; after it, the terminal summary prints the side-by-side table of
``harness.format_table`` (median, p20/p80, CPU time, tokens/s, peak memory, ratios) under the machine line.
This file is only loaded when benchmarks/ is collected: ``python -m pytest`` (testpaths = tests) never
runs a benchmark.
"""

from __future__ import annotations

import os
import statistics
import time

import harness
import pytest
import workloads

SIZES = ("tiny", "small", "large")
_RESULTS: list[harness.Result] = []
_START: dict[str, float] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-size",
        choices=SIZES,
        default="small",
        help="benchmark sizes: small (default, a few minutes on 2 cores, < 4 GB), large (the scripts' "
        "sizes; the largest baselines need ~15 GB of RAM) or tiny (seconds; checks that everything runs)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # The suite's files are named bench_* (they are also scripts); a pattern added here applies only when
    # this directory is collected.
    config.addinivalue_line("python_files", "bench_*.py")
    config.addinivalue_line("markers", "comparison(name): a benchmark of workloads.COMPARISONS[name]")
    harness.set_threads()
    _START["wall"], _START["cpu"] = time.perf_counter(), time.process_time()
    _START["load"] = os.getloadavg()[0]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("comparison")
    if marker is None:
        return
    comp = workloads.COMPARISONS[marker.args[0]]
    sizes = comp.sizes[metafunc.config.getoption("bench_size")]
    metafunc.parametrize("size", sizes, ids=[comp.case(s) for s in sizes])
    metafunc.parametrize("impl", workloads.IMPLS)


@pytest.fixture
def bench(benchmark, request: pytest.FixtureRequest):
    """``bench(size, impl)``: time one implementation of the test's comparison at one size.

    One step under the memory probe, then ``rounds`` timed steps (pytest-benchmark's
    pedantic mode, one step per round; 2 rounds at --bench-size tiny). Under ``--benchmark-disable`` the
    step just runs once.
    """
    comp = workloads.COMPARISONS[request.node.get_closest_marker("comparison").args[0]]
    tiny = request.config.getoption("bench_size") == "tiny"

    def run(size: dict, impl: str) -> None:
        step = comp.build(impl, **size)
        benchmark.group = f"{comp.name} {comp.case(size)}"
        if benchmark.disabled:
            benchmark(step)
            return
        # The probed step doubles as the warm-up: the timed rounds start with every buffer touched once.
        with harness.peak_above_baseline() as peak:
            step()
        cpu: list[float] = []

        def timed() -> None:
            c0 = time.process_time()
            step()
            cpu.append(time.process_time() - c0)

        benchmark.pedantic(timed, rounds=2 if tiny else comp.rounds, iterations=1)
        peak_bytes = peak() if comp.memory else None
        benchmark.extra_info.update(
            cpu_median_s=statistics.median(cpu),
            tokens=comp.tokens(size),
            peak_mib=None if peak_bytes is None else round(peak_bytes / 2**20, 1),
        )
        _RESULTS.append(
            harness.Result(
                comp.name,
                comp.case(size),
                impl,
                comp.tokens(size),
                list(benchmark.stats.stats.data),
                cpu,
                peak_bytes,
                os.getloadavg()[0],
            )
        )

    return run


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _RESULTS:
        return
    order = {name: i for i, name in enumerate(workloads.COMPARISONS)}
    results = sorted(_RESULTS, key=lambda r: order[r.comparison])  # stable: sizes keep collection order
    tr = terminalreporter
    tr.write_sep("=", "ours vs baseline")
    for line in harness.machine_lines():
        tr.write_line(line)
    wall = time.perf_counter() - _START["wall"]
    cpu = time.process_time() - _START["cpu"]
    tr.write_line(
        f"benchmark session: {wall:.0f} s wall, {cpu:.0f} s CPU of this process; 1-min load average "
        f"{_START['load']:.2f} at the start; --bench-size {config.getoption('bench_size')}"
    )
    for line in harness.format_table(results):
        tr.write_line(line)
