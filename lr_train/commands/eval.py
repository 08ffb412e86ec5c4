"""`python -m lr_train eval`: long-context ability of a model.

  passkey grid   a random key hidden at several depths of filler text of several lengths, answered by
                 greedy generation (needle in a haystack); accuracy table + heat map (passkey.png:
                 rows = depths top to bottom, columns = lengths left to right, red 0 → green 1)
  perplexity     of the next token, by position bucket, over windows of the longest length

Filler / perplexity text: --input files (.txt, .jsonl, `datasets` folders), or the bundled toy corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from lr_train.cli import fail, float_in, int_at_least, load_tokenizer_arg, nonnegative_int, positive_int


def add_parser(sub):
    p = sub.add_parser(
        "eval",
        help="passkey (needle-in-a-haystack) grid and perplexity by position",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder or hub name")
    p.add_argument("--tokenizer", default=None, help="default: the model's own; `toy` for the toy tokenizer")
    p.add_argument("--output", required=True, help="folder for results.json and passkey.png")
    p.add_argument(
        "--lengths", type=int_at_least(2), nargs="+", required=True, help="context lengths in tokens"
    )
    p.add_argument("--depths", type=float_in(0.0, 1.0), nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--trials", type=positive_int, default=4, help="keys per grid cell")
    p.add_argument(
        "--ppl-length", type=int_at_least(2), default=None, help="window for perplexity (default: max length)"
    )
    p.add_argument("--ppl-windows", type=positive_int, default=8)
    p.add_argument("--input", nargs="+", default=None, help="text for filler and perplexity")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--no-patch", action="store_true")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def evaluate(
    model,
    tokenizer,
    texts: list[str],
    *,
    lengths,
    depths,
    trials,
    ppl_length,
    ppl_windows,
    seed,
    progress=True,
) -> dict:
    """Both evaluations on an already loaded model; returns a JSON-able dict."""
    from lr_train.evaluation import passkey_grid, perplexity_by_position
    from lr_train.recipe import token_stream

    model.eval()
    window = model.config.max_position_embeddings
    for n in sorted({*lengths, ppl_length}):
        if n > window:
            print(f"eval: note: length {n} is beyond the model's window ({window})", file=sys.stderr)
    stream = token_stream(tokenizer, texts)
    ppl = perplexity_by_position(model, stream, length=ppl_length, max_windows=ppl_windows, progress=progress)
    grid = passkey_grid(
        model,
        tokenizer,
        " ".join(texts),
        lengths=lengths,
        depths=depths,
        trials=trials,
        seed=seed,
        progress=progress,
    )
    return {
        "perplexity": {
            "length": ppl.length,
            "bucket_edges": ppl.bucket_edges,
            "ppl": ppl.ppl,
            "nll": ppl.nll,
            "windows": ppl.windows,
            "table": ppl.table(),
        },
        "passkey": {
            "lengths": grid.lengths,
            "depths": grid.depths,
            "accuracy": grid.accuracy,
            "mean": grid.mean,
            "trials": grid.trials,
            "examples": grid.examples,
            "table": grid.table(),
        },
    }


def write_results(results: dict, output: str, *, overwrite: bool) -> None:
    from lr_train.checkpoint import atomic_dir
    from lr_train.heatmap import write_heatmap_png

    with atomic_dir(output, overwrite=overwrite, flag="--output") as tmp:
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        write_heatmap_png(os.path.join(tmp, "passkey.png"), results["passkey"]["accuracy"])


def _check_passkey_room(tokenizer, lengths: list[int]) -> None:
    """Refuse --lengths too short to hold the passkey needle and question, before any model is loaded."""
    from lr_train.evaluation import NEEDLE, QUESTION

    prompt = NEEDLE.format(key="12345") + QUESTION
    need = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1
    short = [n for n in lengths if n < need]
    if short:
        raise ValueError(f"--lengths {short[0]} is too short for the passkey prompt; use at least {need}")


def run(args) -> int:
    from transformers import AutoModelForCausalLM

    from lr_train import patch
    from lr_train.checkpoint import check_output
    from lr_train.commands.prepare import check_inputs
    from lr_train.recipe import default_eval_texts, read_texts

    try:
        check_output(args.output, overwrite=args.overwrite, flag="--output")
        if args.input:
            check_inputs(args.input)
        tokenizer = load_tokenizer_arg(
            args.tokenizer or args.model, "--tokenizer" if args.tokenizer else "--model"
        )
        _check_passkey_room(tokenizer, args.lengths)
        model = AutoModelForCausalLM.from_pretrained(args.model)
        if not args.no_patch:
            patch(model, backend=args.backend, cross_entropy=False)
        texts = read_texts(args.input) if args.input else default_eval_texts()
        results = evaluate(
            model,
            tokenizer,
            texts,
            lengths=args.lengths,
            depths=args.depths,
            trials=args.trials,
            ppl_length=args.ppl_length or max(args.lengths),
            ppl_windows=args.ppl_windows,
            seed=args.seed,
            progress=not args.quiet,
        )
        results["model"] = args.model
        write_results(results, args.output, overwrite=args.overwrite)
    except (ValueError, OSError) as exc:
        return fail("eval", exc)
    print("perplexity by position\n" + results["perplexity"]["table"])
    print("passkey accuracy\n" + results["passkey"]["table"])
    print(f"results in {args.output}/results.json, heat map in {args.output}/passkey.png")
    return 0
