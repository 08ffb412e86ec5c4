"""GPU benchmark: fused RoPE + varlen attention (Triton) vs flash-attn varlen + a separate RoPE pass vs SDPA.

For total tokens in 8k..128k (packed sequences of --seq-len tokens, remapped LongRecipe-style
positions), times forward and forward+backward with ``triton.testing.do_bench`` and prints TFLOP/s:

- ours:        ``lk.varlen_attention(..., position_ids, inv_freq)``, RoPE inside the kernels;
- flash-attn:  ``lk.apply_rope`` on q and k (rotated copies in memory), then
               ``flash_attn.flash_attn_varlen_func`` (skipped when flash_attn is not installed);
- torch SDPA:  ``lk.varlen_attention(..., backend="torch")``: RoPE in PyTorch + SDPA per sequence.

FLOPs count the useful causal work only: 4 * sum(L_i^2) / 2 * H * D forward, 2.5x that for backward.

    python benchmarks/gpu_attention.py [--dtype bf16] [--heads 32 --kv-heads 8 --head-dim 128]
                                       [--seq-len 8192] [--totals 8192 131072]

Exits 0 with a message where no CUDA device exists.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TOTALS = (8192, 16384, 32768, 65536, 131072)


def make_inputs(total: int, seq_len: int, H: int, Hkv: int, D: int, dtype: torch.dtype):
    seq_len = min(seq_len, total)
    n_seq = total // seq_len
    T = n_seq * seq_len
    dev = "cuda"
    q = torch.randn(T, H, D, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(T, Hkv, D, device=dev, dtype=dtype, requires_grad=True)
    v = torch.randn(T, Hkv, D, device=dev, dtype=dtype, requires_grad=True)
    cu_seqlens = torch.arange(0, T + 1, seq_len, device=dev, dtype=torch.int32)
    position_ids = torch.cat(
        [torch.randperm(4 * seq_len, device=dev)[:seq_len].sort().values for _ in range(n_seq)]
    )
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
    return q, k, v, cu_seqlens, seq_len, position_ids, inv_freq, n_seq


def impls():
    import lr_kernels as lk

    def ours(q, k, v, cu, L, pos, inv_freq):
        return lk.varlen_attention(q, k, v, cu, L, position_ids=pos, inv_freq=inv_freq, backend="triton")

    def sdpa(q, k, v, cu, L, pos, inv_freq):
        return lk.varlen_attention(q, k, v, cu, L, position_ids=pos, inv_freq=inv_freq, backend="torch")

    fns = {"ours (fused RoPE)": ours, "torch SDPA + RoPE": sdpa}
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        print("# flash_attn not importable: skipping the flash-attn baseline")
    else:

        def flash(q, k, v, cu, L, pos, inv_freq):
            qr = lk.apply_rope(q, pos, inv_freq)
            kr = lk.apply_rope(k, pos, inv_freq)
            return flash_attn_varlen_func(qr, kr, v, cu, cu, L, L, causal=True)

        fns["flash-attn varlen + RoPE pass"] = flash
    return fns


def bench_total(fns, total: int, seq_len: int, H: int, Hkv: int, D: int, dtype: torch.dtype) -> None:
    from triton.testing import do_bench

    q, k, v, cu, L, pos, inv_freq, n_seq = make_inputs(total, seq_len, H, Hkv, D, dtype)
    flops_fwd = 4 * n_seq * L * L / 2 * H * D
    flops_all = flops_fwd * 3.5
    do = torch.randn_like(q)
    for name, fn in fns.items():

        def fwd(fn=fn):
            return fn(q, k, v, cu, L, pos, inv_freq)

        def fwd_bwd(fn=fn):
            q.grad = k.grad = v.grad = None
            fn(q, k, v, cu, L, pos, inv_freq).backward(do)

        try:
            ms_fwd, ms_all = do_bench(fwd), do_bench(fwd_bwd)
        except torch.OutOfMemoryError:
            print(f"{total:>7} {name:>30} {'out of memory':>18}")
            torch.cuda.empty_cache()
            continue
        print(
            f"{total:>7} {name:>30} {flops_fwd / ms_fwd * 1e-9:>8.1f} ({ms_fwd:7.2f}) "
            f"{flops_all / ms_all * 1e-9:>8.1f} ({ms_all:7.2f})",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=8192, help="tokens per packed sequence")
    parser.add_argument("--totals", type=int, nargs="*", default=list(TOTALS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_attention.py: no CUDA device found; this benchmark needs a GPU. Nothing to do.")
        return 0
    import triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    H, Hkv, D = args.heads, args.kv_heads, args.head_dim
    print(
        f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
        f"H={H} Hkv={Hkv} D={D} {args.dtype} causal, sequences of {args.seq_len} tokens; TFLOP/s (ms)"
    )
    fns = impls()
    print(f"{'tokens':>7} {'impl':>30} {'fwd':>18} {'fwd+bwd':>18}")
    for total in args.totals:
        bench_total(fns, total, args.seq_len, H, Hkv, D, dtype)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
