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
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--no-patch", action="store_true", help="train with the model's own attention and loss")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def train(args) -> dict:
    from lr_train import patch
    from lr_train.data import PreparedDataset
    from lr_train.recipe import load_model
    from lr_train.training import StageConfig, packed_batches, train_stage

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"--output {args.output} is a file, not a folder")
    if args.warmup_steps > args.max_steps:
        raise ValueError(f"--warmup-steps {args.warmup_steps} must be <= --max-steps {args.max_steps}")
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
        dtype=args.dtype,
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
