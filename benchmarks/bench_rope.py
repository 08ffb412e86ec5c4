"""CPU benchmark: ``lk.apply_rope`` (torch backend) vs HF ``apply_rotary_pos_emb`` on packed tokens.

Forward + backward of RoPE on one layer's q ``[T, 32, 128]`` and k ``[T, 8, 128]`` at remapped positions
(sorted random ids below 131072), fp32 and bf16 (``workloads.rope``). The HF baseline is what a Llama
layer runs: ``LlamaRotaryEmbedding`` cos/sin (fp32 ``pos * inv_freq``) and ``apply_rotary_pos_emb``.
Each case runs in a fresh process, so its peak memory belongs to it alone.

    PYTHONPATH=. python benchmarks/bench_rope.py --compare [--cases 16384-bf16]   # side-by-side table
    python -m pytest benchmarks/bench_rope.py [--bench-size large]                 # pytest-benchmark
"""

from __future__ import annotations

import argparse

import harness
import pytest
import workloads

NAME = "rope"


@pytest.mark.comparison(NAME)
def test_rope(bench, size, impl):
    bench(size, impl)


def main(argv: list[str] | None = None) -> None:
    sizes = [dict(tokens=4096, dtype="fp32"), *workloads.COMPARISONS[NAME].sizes["large"]]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true", help="print the side-by-side table (the default)")
    parser.add_argument(
        "--cases", nargs="+", default=[f"{s['tokens']}-{s['dtype']}" for s in sizes],
        help="T-dtype, dtype fp32 or bf16, e.g. 16384-bf16",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per case after one warm-up")
    args = parser.parse_args(argv)
    cases = []
    for case in args.cases:
        tokens, _, dtype = case.partition("-")
        if not tokens.isdigit() or dtype not in workloads.DTYPES:
            parser.error(f"--cases: expected T-dtype such as 16384-bf16, got {case!r}")
        cases.append(dict(tokens=int(tokens), dtype=dtype))
    harness.set_threads()
    harness.compare(NAME, cases, warmup=1, repeats=args.repeats)


if __name__ == "__main__":
    main()
