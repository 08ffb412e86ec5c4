"""`python -m lr_train train`: one training stage of the recipe, resumable.

  extend   continued pre-training on a prepared LongRecipe set (transformed positions), RoPE base raised
           for the target window (the paper: lr 5e-5 constant)
  anneal   replay of general data with contiguous positions, falling learning rate (the paper: 5e-6)

Runs on one device as is, or on many under `accelerate launch -m lr_train train ...` (FSDP/DeepSpeed
configs of accelerate apply). Interrupted runs resume from the newest checkpoint in OUTPUT/checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys

from lr_train.cli import (
    fail,
    float_in,
    int_at_least,
    load_tokenizer_arg,
    nonnegative_int,
    positive_float,
    positive_int,
)

STAGE_DEFAULTS = {
    "extend": {"lr": 5e-5, "schedule": "constant"},
    "anneal": {"lr": 5e-6, "schedule": "linear"},
}


def add_parser(sub):
    p = sub.add_parser(
        "train",
        help="run one stage (extend or anneal) on a prepared dataset, with checkpoints and resume",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stage", choices=sorted(STAGE_DEFAULTS), required=True)
    p.add_argument("--model", required=True, help="model folder / hub name, or a preset such as tiny-llama")
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer (default: the model's own; `toy` for the toy one)"
    )
    p.add_argument("--data", required=True, help="folder written by `prepare`")
    p.add_argument("--output", required=True, help="stage folder: checkpoints/, model/, train_log.jsonl")
    p.add_argument(
        "--target-length",
        type=int_at_least(2),
        default=None,
        help="extend: context window to train for (default: the dataset's target length)",
    )
    p.add_argument(
        "--rope-theta",
        type=positive_float,
        default=None,
        help="extend: RoPE base (default: the paper's rule)",
    )
    p.add_argument("--max-steps", type=positive_int, required=True)
    p.add_argument(
        "--tokens-per-batch", type=positive_int, required=True, help="tokens per micro-batch (packed)"
    )
    p.add_argument("--grad-accum", type=positive_int, default=1)
    p.add_argument(
        "--lr", type=positive_float, default=None, help="peak learning rate (extend 5e-5, anneal 5e-6)"
    )
    p.add_argument("--schedule", choices=("constant", "linear", "cosine"), default=None)
    p.add_argument("--warmup-steps", type=nonnegative_int, default=0)
    p.add_argument("--min-lr-ratio", type=float_in(0.0, 1.0), default=0.0)
    p.add_argument("--weight-decay", type=float_in(0.0, float("inf"), high_open=True), default=0.0)
    p.add_argument(
        "--optimizer",
        choices=("adamw", "sgd"),
        default="adamw",
        help="adamw (default) or plain SGD without momentum (exactness checks: the update is -lr * grad)",
    )
    p.add_argument("--max-grad-norm", type=float_in(0.0, float("inf"), high_open=True), default=1.0)
    p.add_argument("--save-every", type=positive_int, default=50)
    p.add_argument("--keep-checkpoints", type=positive_int, default=2)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="weights' dtype")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--memory-plan",
        default="none",
        help="auto (the cheapest strategy `plan` finds that fits this GPU), none, or a strategy: plain, "
        "checkpoint, offload-activations, offload-optimizer, offload-params",
    )
    p.add_argument(
        "--precision",
        choices=("mixed", "pure-bf16"),
        default="mixed",
        help="mixed: AdamW updates fp32 master weights (default); pure-bf16: bf16 weights only, "
        "Kahan-compensated AdamW (needs --dtype bf16)",
    )
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--no-patch", action="store_true", help="train with the model's own attention and loss")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def check_memory_plan(args) -> None:
    """Flag checks that need no model (run before anything is loaded or written)."""
    from lr_train.memory import STRATEGIES, Settings, strategies_for

    if args.memory_plan not in ("auto", "none", *STRATEGIES):
        raise ValueError(
            f"--memory-plan must be auto, none or one of {', '.join(STRATEGIES)}, got {args.memory_plan!r}"
        )
    if args.precision == "pure-bf16" and args.dtype != "bf16":
        raise ValueError(f"--precision pure-bf16 needs --dtype bf16, got --dtype {args.dtype}")
    allowed = strategies_for(Settings(train_length=1, dtype=args.dtype, precision=args.precision))
    if args.memory_plan in STRATEGIES and args.memory_plan not in allowed:
        raise ValueError(
            f"--memory-plan {args.memory_plan} does not apply with --precision {args.precision} "
            f"(its optimizer stays beside the weights); choose from {', '.join(allowed)}"
        )


def resolve_memory_plan(args, model) -> str:
    """The strategy to train with: ``auto`` asks :func:`lr_train.memory.plan` for this machine's memory."""
    if args.memory_plan != "auto":
        return args.memory_plan
    import torch

    from lr_train.memory import Settings, model_shape, plan

    cuda = torch.cuda.is_available()
    settings = Settings(
        train_length=args.tokens_per_batch,
        dtype=args.dtype,
        precision=args.precision,
        device="cuda" if cuda else "cpu",
        grad_accum=args.grad_accum,
    )
    shape = model_shape(model.config)
    ram = _ram_bytes()
    if cuda:
        p = plan(
            shape, settings, torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory, ram
        )
    else:
        # CPU-only: GPU and CPU are one memory; the cheapest strategy whose total fits the RAM.
        p = plan(shape, settings, 2**62, None)
        fitting = [e for e in p.estimates if ram is None or e.total_peak <= ram]
        p.chosen = fitting[0].strategy if fitting else None
    if p.chosen is None:
        raise ValueError(
            f"--memory-plan auto: nothing fits {args.tokens_per_batch} tokens per batch on this machine; "
            "run `python -m lr_train plan` for what would"
        )
    print(f"memory plan: {p.chosen}", file=sys.stderr)
    return p.chosen


def _ram_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().total)


def train(args) -> dict:
    from lr_train import patch
    from lr_train.data import PreparedDataset
    from lr_train.recipe import load_model
    from lr_train.training import StageConfig, packed_batches, train_stage

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"--output {args.output} is a file, not a folder")
    if args.warmup_steps > args.max_steps:
        raise ValueError(f"--warmup-steps {args.warmup_steps} must be <= --max-steps {args.max_steps}")
    check_memory_plan(args)
    data = PreparedDataset(args.data)
    settings = data.settings
    reach = int(settings.get("target_length", 0))
    if args.target_length is not None and args.target_length < reach:
        raise ValueError(
            f"--target-length {args.target_length} is below the {reach} positions --data {args.data} "
            f"was prepared for; pass at least {reach}"
        )
    tokenizer = load_tokenizer_arg(
        args.tokenizer or args.model, "--tokenizer" if args.tokenizer else "--model"
    )
    target = args.target_length
    if args.stage == "extend" and target is None:
        target = reach or None
    model = load_model(
        args.model,
        tokenizer=tokenizer,
        target_length=target,
        rope_theta=args.rope_theta,
        # fp32 masters come from the weights as stored (a previous stage saves fp32); the optimizer
        # casts the model to --dtype after taking them
        dtype="fp32" if args.precision == "mixed" else args.dtype,
        seed=args.seed,
    )
    limit = model.config.max_position_embeddings
    if reach > limit:
        raise ValueError(
            f"--data positions reach {reach} but --model's window is {limit}; train the extend stage "
            f"first, or pass --target-length {reach}"
        )
    if not args.no_patch:
        patch(model, backend=args.backend)
    memory_plan = resolve_memory_plan(args, model)
    defaults = STAGE_DEFAULTS[args.stage]
    cfg = StageConfig(
        output=args.output,
        max_steps=args.max_steps,
        lr=args.lr if args.lr is not None else defaults["lr"],
        schedule=args.schedule or defaults["schedule"],
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        max_grad_norm=args.max_grad_norm,
        grad_accum=args.grad_accum,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
        memory_plan=memory_plan,
        compute_dtype=args.dtype,
    )
    return train_stage(
        model,
        packed_batches(data, args.tokens_per_batch, seed=args.seed),
        cfg,
        progress=not args.quiet,
        save_extra=tokenizer.save_pretrained,
    )


def run(args) -> int:
    try:
        summary = train(args)
    except (ValueError, OSError) as exc:
        return fail("train", exc)
    final = summary.get("final") or {}
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, not one per process
        return 0
    print(
        f"{args.stage}: {final.get('step')} steps, last loss {final.get('loss', float('nan')):.4f}; "
        f"model in {args.output}/model"
    )
    return 0
