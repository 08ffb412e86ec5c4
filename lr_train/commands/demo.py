"""`python -m lr_train demo`: LongRecipe end to end on a tiny model on the CPU, with no download.

  0. base      a tiny Llama that retrieves inside its {base}-token window (bundled: lr_train/assets/
               tiny-retriever, made by `lr_train.retriever`; --train-base trains it again: 10-15 min)
  1. prepare   LongRecipe data from documents with long-range references: digit-holding sentences kept,
               50% of the others dropped, {short}-token samples whose positions span a {target}-token window
  2. extend    RoPE base raised for {target} tokens, trained on (1) with lr_train.patch'ed kernels
  3. anneal    contiguous-position replay of short documents, falling learning rate
  4. merge     ½·base + ½·annealed
  5. eval      the needle task (niah_single) at 1x, 2x and 4x the base window: base vs extended

Every stage writes its folder atomically under --output and is skipped when already there, so an
interrupted demo resumes where it stopped; --fresh starts over. The whole demo takes about 2 minutes on 2
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from lr_train.cli import int_at_least, positive_int

BASE_WINDOW = 256
TRAIN_LENGTH = 320
TARGET = 1024
BUNDLED_BASE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "tiny-retriever")


def add_parser(sub):
    p = sub.add_parser(
        "demo",
        help="run the whole recipe on a tiny model on the CPU (no download)",
        description=__doc__.format(base=BASE_WINDOW, short=TRAIN_LENGTH, target=TARGET),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", default="demo_out", help="work folder (default: ./demo_out)")
    p.add_argument("--fresh", action="store_true", help="delete --output first")
    p.add_argument(
        "--positions",
        choices=("longrecipe", "pose", "randpos", "full"),
        default="longrecipe",
        help="position method of the extend stage",
    )
    p.add_argument(
        "--steps", type=int_at_least(4), default=40, help="extend steps of 5,120 tokens (anneal: 1/4)"
    )
    p.add_argument("--samples", type=positive_int, default=8, help="needle prompts per length and depth")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--base", default=None, help="base model folder (default: the bundled tiny retriever)")
    base.add_argument("--train-base", action="store_true", help="train the base again (10-15 min)")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def demo(args) -> dict:
    from transformers.utils import logging as hf_logging

    from lr_train.commands.compare import Runner, Scale, _write_jsonl
    from lr_train.ruler import retrieval_corpus

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars drown the stage output
    out = os.path.abspath(args.output)
    if args.fresh and os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "corpus"), exist_ok=True)
    scale = Scale(tasks=("niah_single",), depths=(0.0, 0.5, 1.0), samples=args.samples)
    r = Runner(out, scale, args.backend, args.quiet)
    lengths = [BASE_WINDOW, 2 * BASE_WINDOW, TARGET]
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if args.train_base:
        r.say(f"\n== 0. base: a tiny Llama taught to retrieve inside a {BASE_WINDOW}-token window")
        base = r.path("base")
        if not os.path.exists(base):
            from lr_train.retriever import train_retriever

            train_retriever(base, window=BASE_WINDOW, progress=not args.quiet)
    else:
        base = args.base or BUNDLED_BASE
        if not os.path.isfile(os.path.join(base, "config.json")):
            raise ValueError(f"--base {base} is not a model folder (no config.json)")
        r.say(f"\n== 0. base: {'the bundled tiny retriever, ' if args.base is None else ''}{base}")
    timings["base"] = time.perf_counter() - t

    t = time.perf_counter()
    r.say(f"\n== 1. prepare: {args.positions} positions, {TRAIN_LENGTH} tokens over a {TARGET}-token window")
    corpus = _write_jsonl(
        r.path("corpus", "long.jsonl"), retrieval_corpus(160, sentences=TARGET // 6, seed=1, every=24)
    )
    replay = _write_jsonl(
        r.path("corpus", "replay.jsonl"), retrieval_corpus(120, sentences=BASE_WINDOW // 24, seed=2)
    )
    length = TARGET if args.positions == "full" else TRAIN_LENGTH
    extra = ["--drop-ratio", "0.5"] if args.positions == "longrecipe" else []
    data = r.prepare(f"{args.positions}", corpus, args.positions, length, TARGET, 0, *extra)
    anneal_data = r.prepare("anneal", replay, "full", TRAIN_LENGTH, TRAIN_LENGTH, 0)
    timings["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    r.say(f"\n== 2. extend: RoPE base raised for {TARGET} tokens")
    extended, _ = r.train(
        "extend", "extend", base, data, args.steps, scale.extend_lr, "constant",
        tokens_per_batch=scale.tokens_per_batch, seed=0, extra=["--target-length", str(TARGET)],
    )  # fmt: skip
    timings["extend"] = time.perf_counter() - t

    t = time.perf_counter()
    r.say("\n== 3. anneal: contiguous positions, falling learning rate")
    annealed, _ = r.train(
        "anneal", "anneal", extended, anneal_data, max(args.steps // 4, 1), scale.anneal_lr, "linear",
        tokens_per_batch=scale.tokens_per_batch, seed=0,
    )  # fmt: skip
    timings["anneal"] = time.perf_counter() - t

    t = time.perf_counter()
    r.say("\n== 4. merge: ½ base + ½ annealed")
    merged = r.merge("merged", base, annealed)
    timings["merge"] = time.perf_counter() - t

    t = time.perf_counter()
    r.say(f"\n== 5. eval: the needle task at {', '.join(map(str, lengths))} tokens, base vs extended")
    results = {"base": r.evaluate("base", base, lengths), "extended": r.evaluate("merged", merged, lengths)}
    timings["eval"] = time.perf_counter() - t
    report = {
        "lengths": lengths,
        "base_window": BASE_WINDOW,
        "positions": args.positions,
        "accuracy": {name: res["by_length"] for name, res in results.items()},
        "samples_per_length": args.samples * len(scale.depths),
        "seconds": timings,
        "merged_model": merged,
    }
    _picture(out, report)
    with open(os.path.join(out, "report.json.tmp"), "w") as f:
        json.dump(report, f, indent=2)
    os.replace(os.path.join(out, "report.json.tmp"), os.path.join(out, "report.json"))
    return report


def _picture(out: str, report: dict) -> None:
    from lr_train.evaluation import wilson_interval
    from lr_train.plots import accuracy_vs_length

    n = report["samples_per_length"]
    series = {}
    for name, acc in report["accuracy"].items():
        bands = [wilson_interval(a * n, n) for a in acc]
        series[name] = (acc, [lo for lo, _ in bands], [hi for _, hi in bands])
    accuracy_vs_length(
        os.path.join(out, "needle.png"),
        report["lengths"],
        series,
        title=f"Needle retrieval, tiny Llama: base vs {report['positions']} extension (95% Wilson band)",
        native_length=report["base_window"],
    )


def summary(report: dict, out: str) -> str:
    lengths, acc = report["lengths"], report["accuracy"]
    native = report["base_window"]
    lines = [
        f"\nneedle-in-a-haystack accuracy ({report['samples_per_length']} prompts per length; "
        f"base window {native} tokens)",
        f"{'length':>8} {'':>4} {'base':>6} {'extended':>9}",
    ]
    for i, n in enumerate(lengths):
        lines.append(f"{n:>8} {f'{n // native}x':>4} {acc['base'][i]:>6.2f} {acc['extended'][i]:>9.2f}")
    total = sum(report["seconds"].values())
    lines.append(
        "time: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["seconds"].items()) + f" ({total:.0f}s)"
    )
    lines.append(f"picture: {out}/needle.png; merged model: {report['merged_model']}")
    lines.append(
        f"next: python -m lr_train eval --model {report['merged_model']} --tokenizer toy --suite ruler "
        f"--lengths {' '.join(map(str, lengths))} --output {out}/eval-ruler"
    )
    return "\n".join(lines)


def run(args) -> int:
    from lr_train.cli import fail

    try:
        report = demo(args)
    except (ValueError, OSError) as exc:
        return fail("demo", exc)
    print(summary(report, os.path.abspath(args.output)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(argparse.Namespace()))
