"""GPU benchmark: one training step of a real model config under its memory plan, measured against the plan.

Builds the model from its config with random weights directly on the GPU (no download; ``--model`` takes
the same names as ``python -m lr_train plan``: llama-3-8b, qwen2-7b, a config.json or a folder), patches
it (fused RoPE attention, fused cross-entropy), applies the strategy the plan picks for this GPU (or
``--memory-plan``) exactly as ``train`` does (checkpointing / checkpoint offload /
fp32 masters and AdamW on the CPU), then runs ``--steps`` optimizer steps of ``--grad-accum``
micro-batches of one ``--train-length``-token sequence each. After the first step (which allocates the
optimizer state) it resets the peak counter and prints

    planned GPU peak | measured torch.cuda.max_memory_allocated | ratio | tokens/s | s/step

    python benchmarks/gpu_train_step.py --model llama-3-8b --train-length 38400 [--memory-plan auto]
                                        [--steps 3] [--grad-accum 2] [--dtype bf16]

Exits 0 with a message where no CUDA device exists. The offload-params strategy needs DeepSpeed
(``accelerate launch``) and is not run by this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--train-length", type=int, default=38400)
    ap.add_argument("--memory-plan", default="auto")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_train_step: no CUDA device here; run this on a GPU machine (nothing measured)")
        return 0

    from transformers import AutoModelForCausalLM

    import lr_train
    from lr_train import memory
    from lr_train.offload import enable_checkpointing
    from lr_train.optim import build_optimizer

    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step allocates the optimizer state and is not measured)")
    config = memory.load_config(args.model)
    shape = memory.model_shape(config, args.model)
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    settings = memory.Settings(args.train_length, dtype=args.dtype, device="cuda", grad_accum=args.grad_accum)
    plan = memory.plan(shape, settings, total)
    strategy = plan.chosen if args.memory_plan == "auto" else args.memory_plan
    if strategy is None:
        print(memory.format_plan(plan))
        return 1
    if strategy not in memory.STRATEGIES[:4]:
        ap.error(f"--memory-plan {strategy}: this script runs {', '.join(memory.STRATEGIES[:4])}")
    planned = memory.estimate(shape, settings, strategy)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    lr_train.patch(model)
    k = memory.STRATEGIES.index(strategy)
    if k >= 1:
        enable_checkpointing(model, offload=k >= 2)
    model.train()
    optimizer, _, _ = build_optimizer(model, lr=1e-5, master_device="cpu" if k >= 3 else device)
    g = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        for _ in range(args.grad_accum):
            ids = torch.randint(0, shape.vocab, (1, args.train_length), device=device, generator=g)
            (model(input_ids=ids, labels=ids).loss / args.grad_accum).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps - 1):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / (args.steps - 1)
    measured = torch.cuda.max_memory_allocated()
    tokens = args.train_length * args.grad_accum
    print(
        f"{args.model} T={args.train_length} {strategy} on {torch.cuda.get_device_name(device)} "
        f"(torch {torch.__version__})"
    )
    print(f"{'planned GPU peak':>18} {'measured':>10} {'ratio':>6} {'tokens/s':>9} {'s/step':>7}")
    print(
        f"{planned.gpu_peak / 2**30:>14.2f} GiB {measured / 2**30:>6.2f} GiB "
        f"{measured / planned.gpu_peak:>6.3f} {tokens / seconds:>9.0f} {seconds:>7.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
