"""One training step (forward + backward) of a small Llama on CPU: lr_train.patch (backend="torch") against
plain transformers (sdpa attention, the model's own loss over materialised logits), side by side.

Model (``workloads.llama``): hidden 256, intermediate 1024, 2 layers, 4 heads / 2 kv heads, untied
lm_head, Llama 3.1 rope scaling, fp32, one row of T tokens, labels = input ids. With Llama 3's vocabulary
(128256, the script's default) the [T, V] logits dominate plain transformers' memory exactly as they do
for the real 8B model. Every (variant, T) runs in a fresh process: one warm-up step, then ``--repeats``
timed steps; the peak is the memory those steps add over the built model (the parameter gradients
included, the same in both variants).

    PYTHONPATH=. python benchmarks/bench_patch_cpu.py --tokens 2048 8192   # ~15 GB of RAM at 8k
    python -m pytest benchmarks/bench_patch_cpu.py [--bench-size large]      # pytest-benchmark variant
"""

from __future__ import annotations

import argparse

import harness
import pytest
import workloads

NAME = "model_step"


@pytest.mark.comparison(NAME)
def test_model_step(bench, size, impl):
    bench(size, impl)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    large = workloads.COMPARISONS[NAME].sizes["large"]
    parser.add_argument("--tokens", type=int, nargs="+", default=[s["tokens"] for s in large])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    args = parser.parse_args(argv)
    harness.set_threads()
    sizes = [dict(tokens=t, vocab=args.vocab) for t in args.tokens]
    harness.compare(NAME, sizes, warmup=1, repeats=args.repeats)


if __name__ == "__main__":
    main()
