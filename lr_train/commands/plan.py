"""`python -m lr_train plan`: will a model and a training length fit a GPU, and with which offloads?

Prints, for each strategy (plain, checkpoint, offload-activations, offload-optimizer, offload-params),
the bytes of weights, gradients, optimizer state, fp32 master weights, checkpointed layer inputs, saved
activations and the attention and loss workspaces, on the GPU and on the CPU, and picks the cheapest
strategy that fits. `train --memory-plan auto` applies the same choice. Only the model's config is read
(the model is built on the meta device: no weights, no memory).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub):
    from lr_train.memory import presets

    p = sub.add_parser(
        "plan",
        help="estimate GPU/CPU memory per strategy and pick the cheapest that fits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help=f"a preset ({', '.join(presets())}), a config.json, a model folder or a hub name",
    )
    p.add_argument("--train-length", type=int, required=True, help="tokens per micro-batch (packed)")
    p.add_argument("--gpu-memory", default="80GiB", help="memory of one GPU (80GiB; GB = 10**9 bytes)")
    p.add_argument("--cpu-memory", default=None, help="CPU memory available to training (default: no limit)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="weights' compute dtype")
    p.add_argument("--precision", choices=("mixed", "pure-bf16"), default="mixed")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step (> 1 or 1)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)
    return p


def make_plan(args):
    """The :class:`lr_train.memory.Plan` for parsed arguments (raises ValueError naming the flag)."""
    from lr_train.memory import Settings, load_model_shape, parse_size, plan

    settings = Settings(
        train_length=args.train_length, dtype=args.dtype, precision=args.precision, grad_accum=args.grad_accum
    )
    settings.validate()
    gpu = parse_size(args.gpu_memory, name="--gpu-memory")
    cpu = parse_size(args.cpu_memory, name="--cpu-memory") if args.cpu_memory is not None else None
    return plan(load_model_shape(args.model), settings, gpu, cpu)


def run(args) -> int:
    from lr_train.memory import format_plan

    try:
        p = make_plan(args)
    except ValueError as exc:
        print(f"plan: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(p.to_json(), indent=2) if args.json else format_plan(p))
    return 0 if p.chosen else 1
