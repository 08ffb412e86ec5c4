"""`python -m lr_train merge`: the recipe's last stage, Θ = (1 − w)·Θ_original + w·Θ_trained (w = 0.5)."""

from __future__ import annotations

from lr_train.cli import fail, float_in


def add_parser(sub):
    p = sub.add_parser(
        "merge", help="average a trained model's weights with the original model's", description=__doc__
    )
    p.add_argument("--original", required=True, help="the model before extension (folder or hub name)")
    p.add_argument("--trained", required=True, help="the annealed model folder (its config is kept)")
    p.add_argument("--output", required=True)
    p.add_argument(
        "--weight", type=float_in(0.0, 1.0), default=0.5, help="share of the trained weights, in [0, 1] (0.5)"
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)
    return p


def merge(original: str, trained: str, output: str, *, weight: float = 0.5, overwrite: bool = False) -> None:
    """Write the merged model (and the trained model's tokenizer, if it has one) to ``output`` atomically."""
    from transformers import AutoModelForCausalLM

    from lr_train.checkpoint import atomic_dir, check_output
    from lr_train.merge import merge_models

    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--weight must be in [0, 1], got {weight}")
    check_output(output, overwrite=overwrite, flag="--output")
    base = AutoModelForCausalLM.from_pretrained(original)
    model = AutoModelForCausalLM.from_pretrained(trained, dtype="auto")
    merge_models(base, model, weight)
    with atomic_dir(output, overwrite=overwrite, flag="--output") as tmp:
        model.save_pretrained(tmp)
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(trained).save_pretrained(tmp)
        except (OSError, ValueError):
            pass


def run(args) -> int:
    try:
        merge(args.original, args.trained, args.output, weight=args.weight, overwrite=args.overwrite)
    except (ValueError, OSError) as exc:
        return fail("merge", exc)
    print(f"merged model in {args.output}")
    return 0
