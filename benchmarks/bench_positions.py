"""Speed of the position remap (C++ op) against the reference algorithm in plain Python, side by side;
then the throughput of ``prepare`` on a generated corpus.

    PYTHONPATH=. python benchmarks/bench_positions.py [--docs 40 --tokens 24576 --target 81920]
                                                      [--repeats 10] [--prepare-mb 5]
    python -m pytest benchmarks/bench_positions.py [--bench-size large]   # pytest-benchmark variant

Baseline (``workloads.positions``): ``lr_kernels.positions.naive.reference_remap``, the public LongRecipe
preprocessing's layout algorithm in plain Python (window materialised as a list of slots,
random.sample, flatten, scan), one document at a time; ours: ``lk.remap_positions`` on the whole batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import harness
import pytest

NAME = "positions"


@pytest.mark.comparison(NAME)
def test_positions(bench, size, impl):
    bench(size, impl)


def bench_prepare(megabytes: float) -> None:
    from lr_train.cli import main
    from lr_train.toy import toy_corpus

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "corpus.jsonl")
        size, n = 0, 0
        with open(path, "w", encoding="utf-8") as f:
            while size < megabytes * 1e6:
                line = json.dumps({"text": toy_corpus(1, seed=n)[0]}) + "\n"
                f.write(line)
                size += len(line)
                n += 1
        print(
            f"prepare on {n} documents, {size / 1e6:.1f} MB of jsonl "
            "(toy tokenizer, longrecipe 4096 -> 16384):"
        )
        t0 = time.perf_counter()
        main(
            [
                "prepare",
                "--tokenizer",
                "toy",
                "--input",
                path,
                "--output",
                os.path.join(tmp, "out"),
                "--train-length",
                "4096",
                "--target-length",
                "16384",
                "--quiet",
            ]
        )
        wall = time.perf_counter() - t0
        print(f"  {wall:.1f} s wall, {size / 1e6 / wall:.2f} MB/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--tokens", type=int, default=24576)
    p.add_argument("--target", type=int, default=81920)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per side after one warm-up")
    p.add_argument("--prepare-mb", type=float, default=5.0, help="0 skips the prepare measurement")
    args = p.parse_args(argv)
    if args.target < args.tokens:
        p.error(f"--target must be >= --tokens ({args.tokens}), got {args.target}")
    harness.set_threads()
    size = dict(n_docs=args.docs, tokens=args.tokens, target=args.target)
    harness.compare(NAME, [size], warmup=1, repeats=args.repeats)
    if args.prepare_mb > 0:
        bench_prepare(args.prepare_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
