"""CPU benchmark: ``lk.varlen_attention(backend="torch")`` vs plain transformers on the same packed batch.

Forward + backward of causal GQA attention (8 / 2 heads, D = 64, fp32) with RoPE at remapped positions
over packed sequences (``workloads.attention``): ours applies RoPE from float64 angles and runs SDPA once
per packed sequence (memory linear in the sequence length); the baseline is what transformers does for a
packed row — ``apply_rotary_pos_emb``, ``repeat_kv`` and one SDPA call with a block-diagonal causal mask.

    PYTHONPATH=. python benchmarks/bench_attention_cpu.py                  # side-by-side table, big sizes
    PYTHONPATH=. python benchmarks/bench_attention_cpu.py --cases 4x2048 --reps 5
    python -m pytest benchmarks/bench_attention_cpu.py [--bench-size large] # pytest-benchmark variant

The script runs each (implementation, case) in a fresh process, so each peak memory belongs to one case.
"""

from __future__ import annotations

import argparse

import harness
import pytest
import workloads

NAME = "attention"


@pytest.mark.comparison(NAME)
def test_attention(bench, size, impl):
    bench(size, impl)


def main(argv: list[str] | None = None) -> None:
    large = workloads.COMPARISONS[NAME].sizes["large"]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", nargs="+", default=[f"{s['n_seq']}x{s['seq_len']}" for s in large],
        help="packed sequences x tokens per sequence, e.g. 4x1024",
    )  # fmt: skip
    parser.add_argument("--reps", type=int, default=5, help="timed steps per case, after one warm-up step")
    args = parser.parse_args(argv)
    sizes = []
    for case in args.cases:
        try:
            n_seq, seq_len = (int(x) for x in case.split("x"))
        except ValueError:
            parser.error(f"--cases: expected BxL such as 4x1024, got {case!r}")
        sizes.append(dict(n_seq=n_seq, seq_len=seq_len))
    harness.set_threads()
    harness.compare(NAME, sizes, warmup=1, repeats=args.reps)


if __name__ == "__main__":
    main()
