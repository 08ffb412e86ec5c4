"""CPU benchmark: ``lk.varlen_attention(backend="torch")`` vs plain transformers on the same packed batch.

Both sides do forward + backward (grads for q, k, v) of causal GQA attention with RoPE at remapped
(LongRecipe-style: sorted, gapped) position ids over a batch of packed sequences:

- ours: RoPE from float64 angles in PyTorch, then ``F.scaled_dot_product_attention`` once per packed
  sequence (SDPA's CPU flash kernel, ``enable_gqa``; memory linear in the sequence length);
- transformers: what HF does for a packed batch given only position ids: cos/sin as
  ``LlamaRotaryEmbedding`` computes them (fp32 ``position * inv_freq``), HF's ``apply_rotary_pos_emb``,
  ``repeat_kv`` and one SDPA call over the whole batch with a block-diagonal causal mask [T, T] (the
  mask HF's ``create_causal_mask`` builds when it detects packed sequences).

Memory: each (impl, case) runs in a fresh subprocess; "op peak" is the peak RSS during the timed
fwd+bwd steps minus the RSS right after the inputs were built (``ru_maxrss`` cannot be reset, so the
subprocess starts from a clean slate; torch's CPU allocator returns large blocks to the OS, so RSS
tracks live tensors). tracemalloc would see none of torch's allocations.

    PYTHONPATH=. python benchmarks/bench_attention_cpu.py              # side-by-side table (~1 min)
    PYTHONPATH=. python benchmarks/bench_attention_cpu.py --cases 4x2048
    PYTHONPATH=. python -m pytest benchmarks/bench_attention_cpu.py --benchmark-only   # pytest-benchmark
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

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import lr_kernels as lk  # noqa: E402

H, HKV, D = 8, 2, 64
CASES = [(4, 512), (4, 1024), (2, 2048)]  # (sequences, tokens per sequence)
IMPLS = ("transformers", "ours")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_inputs(n_seq: int, seq_len: int, seed: int = 0):
    """Packed q [T, H, D], k/v [T, Hkv, D] fp32, int32 cu_seqlens, remapped positions up to 4*seq_len."""
    g = torch.Generator().manual_seed(seed)
    T = n_seq * seq_len
    q = torch.randn(T, H, D, generator=g, requires_grad=True)
    k = torch.randn(T, HKV, D, generator=g, requires_grad=True)
    v = torch.randn(T, HKV, D, generator=g, requires_grad=True)
    cu_seqlens = torch.arange(0, T + 1, seq_len, dtype=torch.int32)
    position_ids = torch.cat(
        [torch.randperm(4 * seq_len, generator=g)[:seq_len].sort().values for _ in range(n_seq)]
    )
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    return q, k, v, cu_seqlens, seq_len, position_ids, inv_freq


def ours(q, k, v, cu_seqlens, max_seqlen, position_ids, inv_freq):
    return lk.varlen_attention(
        q, k, v, cu_seqlens, max_seqlen, position_ids=position_ids, inv_freq=inv_freq, backend="torch"
    )


def transformers_packed(q, k, v, cu_seqlens, max_seqlen, position_ids, inv_freq):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    T = q.shape[0]
    freqs = position_ids[None, :, None].float() * inv_freq[None, None, :]  # [1, T, D/2], as HF
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
    qh, kh = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)  # [1, H, T, D]
    kh = repeat_kv(kh, H // HKV)
    vh = repeat_kv(v.transpose(0, 1)[None], H // HKV)
    seq_id = torch.repeat_interleave(
        torch.arange(cu_seqlens.numel() - 1), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    )
    idx = torch.arange(T)
    mask = (seq_id[:, None] == seq_id[None, :]) & (idx[:, None] >= idx[None, :])  # block-diagonal causal
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[None, None])
    return out[0].transpose(0, 1)


FNS = {"ours": ours, "transformers": transformers_packed}


def step(impl: str, inputs) -> None:
    q, k, v = inputs[:3]
    for t in (q, k, v):
        t.grad = None
    out = FNS[impl](*inputs)
    out.backward(torch.ones_like(out))


def worker(impl: str, n_seq: int, seq_len: int, reps: int) -> dict:
    inputs = make_inputs(n_seq, seq_len)
    rss_setup = _rss_bytes()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step(impl, inputs)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "impl": impl,
        "case": f"{n_seq}x{seq_len}",
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "op_peak_mib": (peak - rss_setup) / 2**20,
    }


def run_case(impl: str, n_seq: int, seq_len: int, reps: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, f"{n_seq}x{seq_len}", str(reps)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def check_same_result(n_seq: int = 2, seq_len: int = 64) -> float:
    """Both implementations compute the same thing (max abs difference of the outputs)."""
    inputs = make_inputs(n_seq, seq_len)
    with torch.no_grad():
        return (ours(*inputs) - transformers_packed(*inputs)).abs().max().item()


def compare(cases, reps: int) -> None:
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; H={H} Hkv={HKV} D={D} fp32 causal, RoPE at remapped positions, "
        f"fwd+bwd, {reps} reps (median)"
    )
    print(f"# max |ours - transformers| on a small case: {check_same_result():.2e}")
    print(
        f"{'case (B x L)':>12} | {'transformers ms':>15} {'MiB':>8} | {'ours ms':>8} {'MiB':>8} | "
        "speed-up  mem ratio"
    )
    for n_seq, seq_len in cases:
        r = {impl: run_case(impl, n_seq, seq_len, reps) for impl in IMPLS}
        hf, us = r["transformers"], r["ours"]
        print(
            f"{n_seq:>5} x {seq_len:<5}| {hf['median_ms']:>15.1f} {hf['op_peak_mib']:>8.1f} | "
            f"{us['median_ms']:>8.1f} {us['op_peak_mib']:>8.1f} | {hf['median_ms'] / us['median_ms']:>7.2f}x "
            f"{hf['op_peak_mib'] / max(us['op_peak_mib'], 1e-9):>8.2f}x",
            flush=True,
        )


# ---- pytest-benchmark -----------------------------------------------------------------------------

_ROWS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _memory_table(request):
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None and _ROWS:
        reporter.write_line("")
        reporter.write_line("peak memory of one fwd+bwd, measured in a fresh subprocess (op peak RSS):")
        for row in _ROWS:
            reporter.write_line(row)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("n_seq", "seq_len"), CASES, ids=[f"{b}x{n}" for b, n in CASES])
def test_attention_fwd_bwd(benchmark, impl, n_seq, seq_len):
    inputs = make_inputs(n_seq, seq_len)
    benchmark.pedantic(step, args=(impl, inputs), rounds=5, warmup_rounds=1)
    mem = run_case(impl, n_seq, seq_len, reps=1)["op_peak_mib"]
    benchmark.extra_info["op_peak_mib"] = round(mem, 1)
    _ROWS.append(f"  {impl:>12} {n_seq}x{seq_len}: {mem:8.1f} MiB")


def test_implementations_agree():
    assert check_same_result() < 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", nargs="*", default=[f"{b}x{n}" for b, n in CASES], help="B x L, e.g. 4x1024"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "CASE", "REPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, case, reps = args.worker
        n_seq, seq_len = map(int, case.split("x"))
        print(json.dumps(worker(impl, n_seq, seq_len, int(reps))))
        return
    compare([tuple(map(int, c.split("x"))) for c in args.cases], args.reps)


if __name__ == "__main__":
    main()
