"""GPU benchmark: RoPE fused into varlen attention against the unfused ways of getting the same numbers.

Variants, all computing causal attention of RoPE-rotated q and k over packed sequences (GQA, no padding):

- ``fused``: ``lk.varlen_attention(q, k, v, cu, L, position_ids=pos, inv_freq=f)``: RoPE inside the
  attention kernels, no rotated copy of q or k in memory.
- ``rope+varlen``: ``lk.apply_rope`` on q and k (rotated copies), then ``lk.varlen_attention`` with RoPE
  off: the same attention kernels without the fused rotation.
- ``rope+flash-attn``: ``lk.apply_rope``, then ``flash_attn.flash_attn_varlen_func(..., causal=True)``
  (when flash_attn imports; it needs fp16/bf16).
- ``rope+sdpa``: ``lk.apply_rope``, then ``F.scaled_dot_product_attention(is_causal=True,
  enable_gqa=True)`` once per sequence (a Python loop over cu_seqlens, each call on a ``[1, H, L, D]``
  view), with the math backend disabled: it would materialise ``[H, L, L]`` scores (36 GiB in bf16 at
  L = 24k), so PyTorch must pick a flash / memory-efficient / cuDNN kernel. Not one call with a block
  mask: a dense bool ``[T, T]`` mask alone is 16 GiB at T = 128k and forces the slow paths.

Before any timing, each variant runs forward and backward on a small packed batch (sequences of 193, 64
and 1 tokens, remapped positions) and is compared with the float64 reference
(``lr_kernels.attention.naive``): the largest error of the output and of dq, dk, dv, relative to the
largest magnitude of that reference tensor, must stay within ``TOLERANCES[dtype]``. A variant that fails
is reported and not timed, and the script exits 1.

Timing: ``triton.testing.do_bench`` (median, p20, p80 in ms) of the forward and of forward + backward
(gradients of q, k, v reset between runs). Peak memory: ``torch.cuda.max_memory_allocated`` during one
call, minus what was allocated before it (the inputs), in GiB. TFLOP/s: the useful causal attention FLOPs
(``attention_flops``: 4·H·D per attended (query, key) pair, L(L+1)/2 pairs per causal sequence of L
tokens; backward 2.5x the forward), the same for every variant, so it compares speed.

Layout (LongRecipe-like): each batch of ``--totals`` tokens is packed from sequences of ``--seq-len``
tokens (the last one shorter when it does not divide), positions remapped over a ``--target-length``
window by ``lk.remap_positions`` (segments of 16-128 tokens, random prefix kept); Llama-3-8B head shape
by default (32 query heads, 8 key/value heads, D = 128, bf16, RoPE theta 500000).

    python benchmarks/gpu_attention.py                       # markdown table on stdout
    python benchmarks/gpu_attention.py --json > attention.json
    python benchmarks/gpu_attention.py --totals 8192 32768 --seq-len 8192 --dtype fp16

Exits 0 with a message where no CUDA device exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lr_kernels as lk  # noqa: E402
from lr_kernels.attention.naive import naive_varlen_attention  # noqa: E402

TOTALS = (8192, 16384, 32768, 65536, 131072)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Largest |variant - float64 reference| over the output and each gradient, relative to the reference's
# largest magnitude. Measured on CPU at the check shape (D = 128): fp16 <= 1.1e-3 (Triton interpreter and
# SDPA), bf16 <= 1.5e-2 (SDPA, H = 32, Hkv = 8), fp32 <= 5.3e-7; GPU kernels also round the probabilities
# and dS to 16 bits, hence the margin. A wrong rotation or mask gives errors of order 1.
TOLERANCES = {"bf16": 5e-2, "fp16": 1e-2, "fp32": 1e-4}
CHECK_LENS = (193, 64, 1)
ROPE_THETA = 500000.0
QUANTILES = (0.5, 0.2, 0.8)

Timer = Callable[[Callable[[], object], Sequence[torch.Tensor]], tuple[float, float, float]]
PeakMemory = Callable[[Callable[[], object]], float | None]


# ---- what is measured ------------------------------------------------------------------------------------


def attention_flops(lengths: Sequence[int], heads: int, head_dim: int, *, causal: bool = True,
                    backward: bool = False) -> float:  # fmt: skip
    """Useful FLOPs of (causal) attention over packed sequences of ``lengths`` tokens.

    Each attended (query, key) pair costs, per query head, the dot product ``q.k`` (2·D FLOPs) and the
    accumulation ``p * v`` into the output (2·D FLOPs). A causal sequence of L tokens attends L(L+1)/2
    pairs (the diagonal included), a full one L². Forward + backward is 3.5x the forward: the backward
    recomputes ``q.k`` and forms dV, dP, dQ and dK (five matmuls to the forward's two). RoPE, softmax
    and scaling are not counted.
    """
    pairs = sum(n * (n + 1) // 2 if causal else n * n for n in lengths)
    forward = 4.0 * heads * head_dim * pairs
    return 3.5 * forward if backward else forward


def packed_lengths(total: int, seq_len: int) -> list[int]:
    """Sequence lengths of one packed batch of ``total`` tokens: full ``seq_len`` sequences, then the rest."""
    lengths = [seq_len] * (total // seq_len)
    if total % seq_len:
        lengths.append(total % seq_len)
    return lengths


def remapped_positions(lengths: Sequence[int], target_length: int, seed: int) -> torch.Tensor:
    """int64 [sum(lengths)] LongRecipe positions (CPU): each sequence spread over ``target_length``.

    Segments of 16-128 tokens (a sentence each, as the data pipeline cuts them) placed with random gaps by
    ``lk.remap_positions``, the first tokens of each sequence kept at their positions (``keep_prefix=
    "random"``). Without the C++ extension: a sorted random subset of the window (RandPos), which has the
    same position range and gaps for the kernels.
    """
    g = torch.Generator().manual_seed(seed)
    segments, offsets = [], [0]
    for n in lengths:
        cuts = torch.randint(16, 129, (n // 16 + 1,), generator=g).cumsum(0)
        cuts = torch.cat([cuts[cuts < n], torch.tensor([n])])
        segments.append(torch.diff(cuts, prepend=torch.tensor([0])))
        offsets.append(offsets[-1] + len(cuts))
    try:
        return lk.remap_positions(torch.cat(segments), target_length, seed, keep_prefix="random",
                                  segment_offsets=torch.tensor(offsets))  # fmt: skip
    except ImportError:
        parts = [torch.randperm(target_length, generator=g)[:n].sort().values for n in lengths]
        return torch.cat(parts)


@dataclass
class Inputs:
    q: torch.Tensor  # [T, H, D], requires grad
    k: torch.Tensor  # [T, Hkv, D], requires grad
    v: torch.Tensor  # [T, Hkv, D], requires grad
    do: torch.Tensor  # [T, H, D]
    cu_seqlens: torch.Tensor  # int32 [B+1]
    max_seqlen: int
    position_ids: torch.Tensor  # int64 [T]
    inv_freq: torch.Tensor  # fp32 [D/2]
    lengths: list[int]


def make_inputs(lengths: Sequence[int], heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                device: torch.device, target_length: int, seed: int = 0) -> Inputs:  # fmt: skip
    g = torch.Generator(device=device).manual_seed(seed)
    T = sum(lengths)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    q, k, v = randn(T, heads, head_dim), randn(T, kv_heads, head_dim), randn(T, kv_heads, head_dim)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return Inputs(
        q=q.requires_grad_(True), k=k.requires_grad_(True), v=v.requires_grad_(True),
        do=randn(T, heads, head_dim), cu_seqlens=cu, max_seqlen=max(lengths),
        position_ids=remapped_positions(lengths, target_length, seed).to(device),
        inv_freq=inv_freq.to(device), lengths=list(lengths),
    )  # fmt: skip


# ---- the variants ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    fn: Callable[[Inputs], torch.Tensor] | None
    skip: str | None = None  # why it cannot run here


def _fused(x: Inputs) -> torch.Tensor:
    return lk.varlen_attention(x.q, x.k, x.v, x.cu_seqlens, x.max_seqlen, position_ids=x.position_ids,
                               inv_freq=x.inv_freq, backend="triton")  # fmt: skip


def _rotated(x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    return (lk.apply_rope(x.q, x.position_ids, x.inv_freq, backend="triton"),
            lk.apply_rope(x.k, x.position_ids, x.inv_freq, backend="triton"))  # fmt: skip


def _rope_varlen(x: Inputs) -> torch.Tensor:
    q, k = _rotated(x)
    return lk.varlen_attention(q, k, x.v, x.cu_seqlens, x.max_seqlen, backend="triton")


def _rope_sdpa(x: Inputs) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k = _rotated(x)
    outs, start = [], 0
    fast = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fast):
        for n in x.lengths:  # host-side lengths: no device sync per call
            # [L, H, D] -> [1, H, L, D] views
            qs, ks, vs = (t[start : start + n].transpose(0, 1).unsqueeze(0) for t in (q, k, x.v))
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            outs.append(o[0].transpose(0, 1))
            start += n
    return torch.cat(outs)


def variants(dtype: str) -> list[Variant]:
    """The variants to check and time, with a reason for the ones that cannot run here."""
    found = [
        Variant("fused", _fused),
        Variant("rope+varlen", _rope_varlen),
    ]
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as exc:
        found.append(Variant("rope+flash-attn", None, f"flash_attn does not import ({exc})"))
    else:
        if dtype == "fp32":
            found.append(Variant("rope+flash-attn", None, "flash-attn needs fp16 or bf16"))
        else:

            def rope_flash(x: Inputs) -> torch.Tensor:
                q, k = _rotated(x)
                return flash_attn_varlen_func(q, k, x.v, x.cu_seqlens, x.cu_seqlens, x.max_seqlen,
                                              x.max_seqlen, causal=True)  # fmt: skip

            found.append(Variant("rope+flash-attn", rope_flash))
    found.append(Variant("rope+sdpa", _rope_sdpa))
    return found


# ---- check, then time ------------------------------------------------------------------------------------


def _forward_backward(fn: Callable[[Inputs], torch.Tensor], x: Inputs) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(True) for t in (x.q, x.k, x.v)]
    y = Inputs(*leaves, x.do, x.cu_seqlens, x.max_seqlen, x.position_ids, x.inv_freq, x.lengths)
    out = fn(y)
    out.backward(y.do)
    return [out.detach(), *(t.grad for t in leaves)]


def check_variant(variant: Variant, args: argparse.Namespace, device: torch.device,
                  lengths: Sequence[int] = CHECK_LENS) -> dict:  # fmt: skip
    """Forward and backward of ``variant`` on a small packed batch against the float64 reference."""
    x = make_inputs(lengths, args.heads, args.kv_heads, args.head_dim, DTYPES[args.dtype], device,
                    args.target_length, seed=1)  # fmt: skip

    def reference(y: Inputs) -> torch.Tensor:
        q, k, v = (t.double() for t in (y.q, y.k, y.v))
        return naive_varlen_attention(q, k, v, y.cu_seqlens, y.max_seqlen, position_ids=y.position_ids,
                                      inv_freq=y.inv_freq)  # fmt: skip

    want = _forward_backward(reference, x)
    tol = TOLERANCES[args.dtype]
    try:
        got = _forward_backward(variant.fn, x)
    except RuntimeError as exc:  # e.g. no SDPA kernel for this GPU / dtype: reported, not timed
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"variant": variant.name, "ok": False, "tolerance": tol, "errors": None, "error": message}
    errors = {
        name: ((g.double() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item()
        for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True)
    }
    return {"variant": variant.name, "ok": all(e <= tol for e in errors.values()), "tolerance": tol,
            "errors": errors, "error": None}  # fmt: skip


def bench_variant(variant: Variant, x: Inputs, args: argparse.Namespace, timer: Timer,
                  peak_memory: PeakMemory) -> dict:  # fmt: skip
    """One row of the table: times, TFLOP/s and peak memory of ``variant`` on the batch ``x``."""
    fn = variant.fn
    grads = (x.q, x.k, x.v)

    def forward() -> torch.Tensor:
        return fn(x)

    def forward_backward() -> None:
        fn(x).backward(x.do)

    row = {"tokens": sum(x.lengths), "sequences": len(x.lengths), "variant": variant.name, "status": "ok"}
    flops = {
        "fwd": attention_flops(x.lengths, args.heads, args.head_dim),
        "fwd_bwd": attention_flops(x.lengths, args.heads, args.head_dim, backward=True),
    }
    try:
        for mode, call in (("fwd", forward), ("fwd_bwd", forward_backward)):
            call()  # compile and warm up outside the measurements
            for t in grads:
                t.grad = None  # the measured call allocates its gradients afresh, as a training step does
            row[f"{mode}_peak_gib"] = peak_memory(call)
            for t in grads:
                t.grad = None
            median, p20, p80 = timer(call, grads)
            row[f"{mode}_ms"] = [median, p20, p80]
            row[f"{mode}_tflops"] = flops[mode] / median * 1e-9
    except torch.OutOfMemoryError:
        row["status"] = "out of memory"
    finally:
        for t in grads:
            t.grad = None
    return row


def run_benchmark(args: argparse.Namespace, device: torch.device, timer: Timer, peak_memory: PeakMemory,
                  *, check_lens: Sequence[int] = CHECK_LENS, meta: dict | None = None) -> dict:  # fmt: skip
    """Check every variant, then time the ones that passed at every total; returns the JSON report."""
    report = {"meta": meta or {}, "checks": [], "skipped": [], "results": []}
    runnable = []
    for variant in variants(args.dtype):
        if variant.fn is None:
            report["skipped"].append({"variant": variant.name, "reason": variant.skip})
            continue
        check = check_variant(variant, args, device, check_lens)
        report["checks"].append(check)
        if check["ok"]:
            runnable.append(variant)
    for total in args.totals:
        lengths = packed_lengths(total, args.seq_len)
        x = make_inputs(lengths, args.heads, args.kv_heads, args.head_dim, DTYPES[args.dtype], device,
                        args.target_length)  # fmt: skip
        for variant in runnable:
            report["results"].append(bench_variant(variant, x, args, timer, peak_memory))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del x
    return report


# ---- output ----------------------------------------------------------------------------------------------


def _markdown(
    headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[str] = ("variant",)
) -> str:
    """A markdown table; the ``left`` columns are left-aligned, the others (numbers) right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    is_left = [h in left for h in headers]

    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(cells, widths, is_left, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 2)) if lft else ("-" * (w + 1) + ":") for w, lft in zip(widths, is_left, strict=True)
    )
    return "\n".join([line(headers), rule + "|", *(line(r) for r in rows)])


def _ms(t: Sequence[float] | None) -> str:
    return "-" if t is None else f"{t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f})"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_report(report: dict) -> str:
    """The report as markdown: a header, the reference checks, the skipped variants and the timing table."""
    meta = report["meta"]
    out = [f"# {k}: {v}" for k, v in meta.items()]
    checks = []
    for c in report["checks"]:
        errors = c["error"] if c["errors"] is None else " / ".join(f"{e:.1e}" for e in c["errors"].values())
        checks.append([c["variant"], "pass" if c["ok"] else "FAIL", errors, f"{c['tolerance']:.0e}"])
    headers = ["variant", "check", "out / dq / dk / dv", "tolerance"]
    out += ["", "Reference check (float64), max error / max |reference|:", "",
            _markdown(headers, checks, left=("variant", "check"))]  # fmt: skip
    out += [f"- skipped {s['variant']}: {s['reason']}" for s in report["skipped"]]
    rows = []
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append([str(r["tokens"]), str(r["sequences"]), r["variant"], r["status"], *["-"] * 5])
            continue
        rows.append([
            str(r["tokens"]), str(r["sequences"]), r["variant"],
            _ms(r["fwd_ms"]), _num(r["fwd_tflops"], ".1f"),
            _ms(r["fwd_bwd_ms"]), _num(r["fwd_bwd_tflops"], ".1f"),
            _num(r["fwd_peak_gib"], ".2f"), _num(r["fwd_bwd_peak_gib"], ".2f"),
        ])  # fmt: skip
    headers = ["tokens", "seqs", "variant", "fwd ms (p20-p80)", "fwd TFLOP/s", "fwd+bwd ms (p20-p80)",
               "fwd+bwd TFLOP/s", "fwd peak GiB", "fwd+bwd peak GiB"]  # fmt: skip
    out += ["", _markdown(headers, rows)]
    return "\n".join(out)


# ---- command line ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--heads", type=int, default=32, help="query heads H (Llama-3-8B: 32)")
    p.add_argument("--kv-heads", type=int, default=8, help="key/value heads Hkv, dividing H (Llama-3-8B: 8)")
    p.add_argument("--head-dim", type=int, default=128, help="head dim D, even, 16..256 (Llama-3-8B: 128)")
    p.add_argument("--totals", type=int, nargs="+", default=list(TOTALS), help="tokens per packed batch")
    p.add_argument("--seq-len", type=int, default=24576, help="tokens per packed sequence (LongRecipe: 24k)")
    p.add_argument("--target-length", type=int, default=131072, help="position window of the remapping")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--heads", args.heads), ("--kv-heads", args.kv_heads), ("--seq-len", args.seq_len)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.heads % args.kv_heads:
        parser.error(f"--kv-heads must divide --heads ({args.heads}), got {args.kv_heads}")
    if args.head_dim % 2 or not 16 <= args.head_dim <= 256:
        parser.error(f"--head-dim must be even and in [16, 256], got {args.head_dim}")
    if min(args.totals) < 1:
        parser.error(f"--totals must all be >= 1, got {min(args.totals)}")
    low = max(args.seq_len, *CHECK_LENS)
    if not low <= args.target_length <= 2**28 - 1:
        parser.error(
            f"--target-length must lie in [{low}, 2**28 - 1] (>= --seq-len), got {args.target_length}"
        )
    return args


def _git_commit() -> str:
    try:
        run = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return run.stdout.strip() or "unknown"


def _cuda_timer(fn: Callable[[], object], grads: Sequence[torch.Tensor]) -> tuple[float, float, float]:
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, grad_to_none=list(grads), quantiles=list(QUANTILES))
    return median, p20, p80


def _cuda_peak_memory(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_attention.py: no CUDA device found; this benchmark needs a GPU. Nothing to do.")
        return 0
    import triton

    try:
        import flash_attn

        fa_version = flash_attn.__version__
    except ImportError:
        fa_version = "not installed"
    meta = {
        "device": torch.cuda.get_device_name(),
        "versions": f"torch {torch.__version__}, triton {triton.__version__}, flash-attn {fa_version}, "
        f"python {platform.python_version()}",
        "commit": _git_commit(),
        "shape": f"H={args.heads} Hkv={args.kv_heads} D={args.head_dim} {args.dtype}, causal",
        "layout": f"sequences of {args.seq_len} tokens, positions remapped over {args.target_length}",
        "timing": "triton.testing.do_bench median (p20-p80); TFLOP/s of useful causal FLOPs",
    }
    log = sys.stderr if args.json else sys.stdout
    print(f"gpu_attention.py: checking variants, then timing totals {args.totals} ...", file=log, flush=True)
    report = run_benchmark(args, torch.device("cuda"), _cuda_timer, _cuda_peak_memory, meta=meta)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    failed = [c["variant"] for c in report["checks"] if not c["ok"]]
    if failed:
        print(f"gpu_attention.py: reference check failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
