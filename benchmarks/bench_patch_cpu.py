"""One training step (forward + backward) of a small Llama on CPU: lr_train.patch (backend="torch") against
plain transformers (sdpa attention, the model's own loss over materialised logits), side by side.

Model: LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
num_key_value_heads=2, vocab_size=128256, untied lm_head, Llama 3.1 rope scaling), fp32, one packed row of
T tokens, labels = input ids. The vocabulary is Llama 3's, so the [T, V] logits dominate plain
transformers' memory exactly as they do for the real 8B model.

Memory, measured honestly on CPU: every (variant, T) runs in a fresh subprocess. After building the model
and the batch, freed heap is returned to the OS (``malloc_trim``), the resident set is read (the
baseline) and the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` <- 5). The step's peak is
then ``VmHWM - baseline``: every byte the step touched beyond the model and its inputs, including the
parameter gradients (the same 2 x 131 MB embedding/lm_head gradients in both variants). Time: median (p20,
p80) of ``--repeats`` further steps in the same process (gradients set to None between steps), as wall
time and as process CPU time (user + system, all threads). On a shared machine the CPU time is the
steadier comparison: wall time there mostly measures the other tenants (the load average is printed).

Run as a script (prints the table; the 8k plain-transformers case needs ~15 GB of RAM):

    PYTHONPATH=. python benchmarks/bench_patch_cpu.py --tokens 2048 8192

Under pytest-benchmark (small vocabulary and length, for trend tracking only):

    PYTHONPATH=. python -m pytest benchmarks/bench_patch_cpu.py -q
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = ("transformers", "patched")


def build(vocab: int, tokens: int, variant: str, seed: int = 0):
    """The benchmark model (patched or not) and a batch of ``tokens`` tokens."""
    import transformers

    import lr_train

    config = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        attn_implementation="sdpa",
        use_cache=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).float().train()
    if variant == "patched":
        lr_train.patch(model, backend="torch")
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(seed + 1))
    return model, ids


def train_step(model, ids) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM missing from /proc/self/status")


def _trim_heap() -> None:
    # Without glibc the baseline may include some cached free heap.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(variant: str, tokens: int, vocab: int, repeats: int) -> dict:
    """Run in a fresh process: peak step memory over the post-build baseline, and step times."""
    model, ids = build(vocab, tokens, variant)
    _trim_heap()
    baseline = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    walls, cpus = [], []
    for step in range(1 + repeats):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        loss_value = train_step(model, ids)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_seconds() - c0)
        if step == 0:
            peak = _peak_rss_bytes() - baseline
            loss = loss_value
    if repeats:  # the first step pays for first-touch page faults of the gradients and buffers
        walls, cpus = walls[1:], cpus[1:]
    q = statistics.quantiles(walls, n=5, method="inclusive") if len(walls) >= 2 else [walls[0]] * 4
    return {
        "variant": variant,
        "tokens": tokens,
        "vocab": vocab,
        "loss": loss,
        "baseline_mb": baseline / 2**20,
        "peak_step_mb": peak / 2**20,
        "time_median_s": statistics.median(walls),
        "time_p20_s": q[0],
        "time_p80_s": q[3],
        "cpu_median_s": statistics.median(cpus),
        "threads": torch.get_num_threads(),
        "loadavg_1min": os.getloadavg()[0],
    }


def run_case(variant: str, tokens: int, vocab: int, repeats: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            variant,
            "--tokens",
            str(tokens),
            "--vocab",
            str(vocab),
            "--repeats",
            str(repeats),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the measured first step")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.tokens[0], args.vocab, args.repeats)))
        return

    import transformers
    import triton

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    ).stdout.strip()
    machine = platform.processor() or platform.machine()
    print(
        f"# {machine}, {os.cpu_count()} cpus, torch {torch.__version__}, triton {triton.__version__}, "
        f"transformers {transformers.__version__}, commit {commit or '?'}"
    )
    print(f"# Llama hidden 256, 2 layers, 4 heads / 2 kv heads, vocab {args.vocab}, fp32, batch 1; fwd+bwd")
    header = (
        f"{'tokens':>6} | {'variant':<12} | {'peak step MB':>12} | {'wall s: median (p20, p80)':>26} | "
        f"{'cpu s':>7} | {'load':>4} | {'loss':>8}"
    )
    print(header)
    print("-" * len(header))
    for tokens in args.tokens:
        rows = {v: run_case(v, tokens, args.vocab, args.repeats) for v in VARIANTS}
        for v in VARIANTS:
            r = rows[v]
            timing = f"{r['time_median_s']:.3f} ({r['time_p20_s']:.3f}, {r['time_p80_s']:.3f})"
            print(
                f"{tokens:>6} | {v:<12} | {r['peak_step_mb']:>12.1f} | {timing:>26} | "
                f"{r['cpu_median_s']:>7.2f} | {r['loadavg_1min']:>4.1f} | {r['loss']:>8.4f}"
            )
        p, t = rows["patched"], rows["transformers"]
        print(
            f"{tokens:>6} | {'ratio':<12} | {p['peak_step_mb'] / t['peak_step_mb']:>12.1%} | "
            f"{p['time_median_s'] / t['time_median_s']:>26.2f} | "
            f"{p['cpu_median_s'] / t['cpu_median_s']:>7.2f} |"
        )


def _bench_step(benchmark, variant: str) -> None:
    model, ids = build(vocab=8192, tokens=512, variant=variant)
    train_step(model, ids)
    benchmark.pedantic(train_step, args=(model, ids), rounds=3, iterations=1)


def test_step_transformers_sdpa(benchmark):
    _bench_step(benchmark, "transformers")


def test_step_patched_torch(benchmark):
    _bench_step(benchmark, "patched")


if __name__ == "__main__":
    main()
