"""Speed of the position remap (C++ op) against plain Python, side by side in one run; prepare throughput.

Script:   PYTHONPATH=. python benchmarks/bench_positions.py [--docs 40 --tokens 24576 --target 81920]
                                                            [--prepare-mb 5]
pytest:   PYTHONPATH=. python -m pytest benchmarks/bench_positions.py --benchmark-only

Baselines: `reference`, the public LongRecipe preprocessing's layout algorithm in plain Python (window
materialised as a list of slots, random.sample, flatten, scan), and `naive`, our exact algorithm in plain
Python (lr_kernels.positions.naive, bit-identical to the op).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import lr_kernels as lk
from lr_kernels.positions import naive


def make_documents(n_docs: int, tokens: int, seed: int = 0) -> list[list[int]]:
    """Segment lengths like sentences (5-40 tokens), each document exactly `tokens` long."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lengths, total = [], 0
        while total < tokens:
            n = min(rng.randint(5, 40), tokens - total)
            lengths.append(n)
            total += n
        docs.append(lengths)
    return docs


def as_batch(docs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.tensor([x for d in docs for x in d], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(d) for d in docs], dtype=torch.int64).cumsum(0)
    return flat, offsets


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(times: list[float]) -> str:
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [min(times), 0, 0, max(times)]
    med = statistics.median(times) * 1e3
    return f"median {med:9.2f} ms  (p20 {q[0] * 1e3:.2f}, p80 {q[3] * 1e3:.2f}, n={len(times)})"


def machine() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), python {platform.python_version()}, commit {commit}"
    )


def bench_remap(n_docs: int, tokens: int, target: int, repeats: int) -> float:
    docs = make_documents(n_docs, tokens)
    flat, offsets = as_batch(docs)
    op = lambda: lk.remap_positions(flat, target, 1, keep_prefix="random", segment_offsets=offsets)
    op()
    t_op = timed(op, repeats)
    rng = random.Random(1)
    t_ref = timed(lambda: [naive.reference_remap(d, target, rng) for d in docs], max(1, repeats // 10))
    t_naive = timed(lambda: naive.remap_positions(docs, target, 1, keep_prefix=-1), 1)
    ratio = statistics.median(t_ref) / statistics.median(t_op)
    print(
        f"remap {n_docs} documents x {tokens} tokens ({len(flat)} segments) -> window {target}; {machine()}"
    )
    print(f"  lk.remap_positions (C++)        {summary(t_op)}")
    print(f"  reference algorithm (Python)    {summary(t_ref)}")
    print(f"  naive.remap_positions (Python)  {summary(t_naive)}")
    print(
        f"  speed-up vs reference algorithm: {ratio:.0f}x;  "
        f"vs naive: {statistics.median(t_naive) / statistics.median(t_op):.0f}x"
    )
    return ratio


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


def test_remap_op(benchmark):
    flat, offsets = as_batch(make_documents(40, 24576))
    benchmark(lambda: lk.remap_positions(flat, 81920, 1, keep_prefix="random", segment_offsets=offsets))


def test_remap_reference_algorithm(benchmark):
    docs = make_documents(40, 24576)
    rng = random.Random(1)
    benchmark.pedantic(lambda: [naive.reference_remap(d, 81920, rng) for d in docs], rounds=3, iterations=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--tokens", type=int, default=24576)
    p.add_argument("--target", type=int, default=81920)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--prepare-mb", type=float, default=5.0, help="0 skips the prepare measurement")
    args = p.parse_args(argv)
    bench_remap(args.docs, args.tokens, args.target, args.repeats)
    if args.prepare_mb > 0:
        bench_prepare(args.prepare_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
