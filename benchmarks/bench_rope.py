"""CPU benchmark: ``lk.apply_rope`` (torch backend) vs HF ``apply_rotary_pos_emb`` on packed tokens.

Forward + backward of RoPE on q ``[T, 32, 128]`` at remapped positions (sorted random ids up to 128k),
float32 and bfloat16. The HF baseline is what a Llama layer runs: ``LlamaRotaryEmbedding`` cos/sin
(float32 ``pos * inv_freq``) and ``apply_rotary_pos_emb``. Each case runs in a fresh subprocess so the
peak RSS belongs to that case alone ("op peak" = peak minus RSS after the inputs were built).

    PYTHONPATH=. python benchmarks/bench_rope.py --compare                  # side-by-side table
    PYTHONPATH=. python -m pytest benchmarks/bench_rope.py --benchmark-only # pytest-benchmark
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lr_kernels as lk  # noqa: E402

H, D = 32, 128
CASES = [(4096, "fp32"), (16384, "fp32"), (16384, "bf16")]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("hf", "lr_kernels")


def make_inputs(T: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, D, generator=g).to(dtype).requires_grad_(True)
    pos = torch.sort(torch.randint(0, 131072, (T,), generator=g)).values
    grad = torch.randn(T, H, D, generator=g).to(dtype)
    return x, pos, grad


def _hf_step(x, pos, grad, rotary):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = rotary(x, pos[None])  # [1, T, D] in x's dtype
    # HF layout is [B, H, T, D]; ours [T, H, D] viewed as [1, H, T, D] without a copy.
    q = x.transpose(0, 1)[None]
    out, _ = apply_rotary_pos_emb(q, q, cos, sin)
    out.backward(grad.transpose(0, 1)[None])


def _ours_step(x, pos, grad, inv_freq):
    lk.apply_rope(x, pos, inv_freq, backend="torch").backward(grad)


def _setup(impl: str):
    f = lk.rope_frequencies({"rope_type": "default", "rope_theta": 500_000.0}, head_dim=D)
    if impl == "lr_kernels":
        return _ours_step, f.inv_freq
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=H * D, num_attention_heads=H, rope_parameters={"rope_theta": 500_000.0})
    return _hf_step, LlamaRotaryEmbedding(config)


def run_case(impl: str, T: int, dtype: str, repeats: int) -> dict:
    step, aux = _setup(impl)
    x, pos, grad = make_inputs(T, DTYPES[dtype])
    with open("/proc/self/statm") as fh:
        base = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    step(x, pos, grad, aux)  # warm-up
    times = []
    for _ in range(repeats):
        x.grad = None
        t0 = time.perf_counter()
        step(x, pos, grad, aux)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    q = statistics.quantiles(times, n=5)
    return {
        "median": statistics.median(times),
        "p20": q[0],
        "p80": q[-1],
        "peak": peak,
        "op_peak": peak - base,
    }


def compare(repeats: int) -> None:
    print(
        f"RoPE fwd+bwd, x [T, {H}, {D}], remapped positions < 131072; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    head = ("T", "dtype", "impl", "median ms", "p20", "p80", "ktok/s", "op peak MB")
    widths = (6, 5, 10, 10, 8, 8, 7, 10)
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for T, dtype in CASES:
        for impl in IMPLS:
            cmd = [sys.executable, __file__, "--case", impl, str(T), dtype, "--repeats", str(repeats)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(
                f"{T:>6} {dtype:>5} {impl:>10} {r['median'] * 1e3:>10.2f} {r['p20'] * 1e3:>8.2f} "
                f"{r['p80'] * 1e3:>8.2f} {T / r['median'] / 1e3:>7.1f} {r['op_peak'] / 2**20:>10.1f}"
            )


def _bench(benchmark, impl: str, T: int, dtype: str) -> None:
    step, aux = _setup(impl)
    x, pos, grad = make_inputs(T, DTYPES[dtype])

    def run():
        x.grad = None
        step(x, pos, grad, aux)

    benchmark(run)


def test_hf_4096_fp32(benchmark):
    _bench(benchmark, "hf", 4096, "fp32")


def test_lr_kernels_4096_fp32(benchmark):
    _bench(benchmark, "lr_kernels", 4096, "fp32")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--case", nargs=3, metavar=("IMPL", "T", "DTYPE"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.case:
        impl, T, dtype = args.case
        print(json.dumps(run_case(impl, int(T), dtype, args.repeats)))
    else:
        compare(args.repeats)
