"""CPU benchmark: fused linear cross-entropy vs ``F.cross_entropy(hidden @ weight.T, targets)``.

Forward + backward (grads for hidden and weight), d = 256, fp32 (``workloads.cross_entropy``). In the
script every forward + backward runs in a fresh process, so its peak memory belongs to it alone, and
baseline and fused processes alternate (``--reps`` rounds) so both see the same machine load.

    PYTHONPATH=. python benchmarks/bench_cross_entropy_cpu.py --compare            # side-by-side table
    PYTHONPATH=. python benchmarks/bench_cross_entropy_cpu.py --compare --cases 8192x128256
    python -m pytest benchmarks/bench_cross_entropy_cpu.py [--bench-size large]    # pytest-benchmark

The baseline at T=8192, V=128256 peaks at about 12.3 GB of RAM.
"""

from __future__ import annotations

import argparse

import harness
import pytest
import workloads

NAME = "cross_entropy"


@pytest.mark.comparison(NAME)
def test_cross_entropy(bench, size, impl):
    bench(size, impl)


def main(argv: list[str] | None = None) -> None:
    sizes = [dict(tokens=2048, vocab=32000), *workloads.COMPARISONS[NAME].sizes["large"]]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", action="store_true", help="print the side-by-side table (the default)")
    ap.add_argument(
        "--cases", nargs="+", default=[f"{s['tokens']}x{s['vocab']}" for s in sizes],
        help="TxV, e.g. 8192x128256",
    )  # fmt: skip
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds (one process per impl each)")
    ap.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk of the fused loss")
    args = ap.parse_args(argv)
    cases = []
    for case in args.cases:
        try:
            tokens, vocab = (int(x) for x in case.split("x"))
        except ValueError:
            ap.error(f"--cases: expected TxV such as 8192x128256, got {case!r}")
        cases.append(dict(tokens=tokens, vocab=vocab, chunk_size=args.chunk_size))
    harness.set_threads()
    harness.compare(NAME, cases, rounds=args.reps, warmup=0, repeats=1)


if __name__ == "__main__":
    main()
