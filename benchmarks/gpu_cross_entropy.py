"""GPU benchmark: fused linear cross-entropy (Triton) vs ``F.cross_entropy((hidden @ weight.T).float(), t)``.

Forward + backward (grads for hidden and weight), timed with ``triton.testing.do_bench`` (median, p20,
p80), peak memory from ``torch.cuda.max_memory_allocated`` minus the inputs. Exits 0 with a message when no
CUDA device is present.

    PYTHONPATH=. python benchmarks/gpu_cross_entropy.py
    PYTHONPATH=. python benchmarks/gpu_cross_entropy.py --d 4096 --cases 32768x128256 --dtype bf16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def bench_case(T: int, V: int, d: int, dtype: torch.dtype, chunk_size: int | None):
    """Yields (impl, median ms, p20, p80, peak GB over the inputs) — ms None when out of memory."""
    import triton.testing

    import lr_kernels as lk

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(T, d, device=dev, dtype=dtype, generator=g).requires_grad_(True)
    weight = (torch.randn(V, d, device=dev, generator=g) * d**-0.5).to(dtype).requires_grad_(True)
    targets = torch.randint(0, V, (T,), device=dev, generator=g)

    def baseline():
        hidden.grad = weight.grad = None
        F.cross_entropy((hidden @ weight.T).float(), targets).backward()

    def fused():
        hidden.grad = weight.grad = None
        lk.fused_linear_cross_entropy(
            hidden, weight, targets, chunk_size=chunk_size, backend="triton"
        ).backward()

    for name, fn in (("baseline", baseline), ("fused", fused)):
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base_mem = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**30
            med, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        except torch.cuda.OutOfMemoryError:
            hidden.grad = weight.grad = None
            yield name, None, None, None, None
            continue
        yield name, med, p20, p80, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cases", nargs="*", default=["8192x32000", "8192x128256", "32768x128256", "16384x152064"]
    )
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--chunk-size", type=int, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_cross_entropy: no CUDA device on this machine, nothing to benchmark "
            "(CPU: benchmarks/bench_cross_entropy_cpu.py)"
        )
        return 0

    import triton

    dtype = DTYPES[args.dtype]
    dev = torch.device("cuda")
    commit = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    print(
        f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {triton.__version__}, "
        f"commit {commit.stdout.strip() or '?'}, d={args.d}, {args.dtype}, fwd+bwd"
    )
    header = (
        f"{'T':>6} {'V':>7} | {'impl':>8} | {'median ms':>9} {'p20':>7} {'p80':>7} | "
        f"{'Mtok/s':>7} | {'peak GB':>8}"
    )
    print(header)
    print("-" * len(header))
    for case in args.cases:
        T, V = (int(x) for x in case.split("x"))
        for name, med, p20, p80, peak in bench_case(T, V, args.d, dtype, args.chunk_size):
            if med is None:
                print(f"{T:>6} {V:>7} | {name:>8} | out of memory")
                continue
            print(
                f"{T:>6} {V:>7} | {name:>8} | {med:9.2f} {p20:7.2f} {p80:7.2f} | "
                f"{T / med / 1e3:7.2f} | {peak:8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
