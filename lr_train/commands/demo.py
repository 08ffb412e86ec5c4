"""`python -m lr_train demo`: the whole recipe, end to end, on a tiny model on the CPU, with no download.

  0. base      a tiny Llama trained briefly at a 256-token window (stands in for a pretrained model)
  1. prepare   LongRecipe data from a synthetic corpus: digit-holding sentences kept, 50% of the others
               dropped, 320-token samples whose positions span a 1024-token window (~31%)
  2. extend    RoPE base raised for 1024 tokens, trained on (1) with lr_train.patch'ed kernels
  3. anneal    contiguous-position replay of general text, falling learning rate
  4. merge     ½·base + ½·annealed
  5. eval      perplexity by position at 1024 tokens and a passkey grid, for the base and merged models

Every stage writes its folder atomically under --output and is skipped when already there, so an
interrupted demo resumes where it stopped; --fresh starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

BASE_WINDOW = 256
TRAIN_LENGTH = 320
TARGET = 1024


def add_parser(sub):
    p = sub.add_parser(
        "demo",
        help="run the whole recipe on a tiny model on the CPU (no download)",
        description=__doc__,
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
    p.add_argument("--steps", type=int, default=60, help="extend steps (base: 2x, anneal: 1/3)")
    p.add_argument("--docs", type=int, default=400, help="documents in the synthetic corpus")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def _cli(argv: list[str]):
    from lr_train.cli import build_parser

    return build_parser().parse_args(argv)


def _write_corpus(folder: str, docs: int, seed: int) -> str:
    from lr_train.checkpoint import atomic_dir
    from lr_train.toy import toy_corpus

    path = os.path.join(folder, "corpus.jsonl")
    if not os.path.exists(path):
        with atomic_dir(folder, overwrite=True) as tmp, open(os.path.join(tmp, "corpus.jsonl"), "w") as f:
            for text in toy_corpus(docs, seed=seed):
                f.write(json.dumps({"text": text}) + "\n")
    return path


def _step(title: str, quiet: bool) -> float:
    if not quiet:
        print(f"\n== {title}", flush=True)
    return time.perf_counter()


def demo(args) -> dict:
    from transformers.utils import logging as hf_logging

    from lr_train.commands.eval import evaluate, write_results
    from lr_train.commands.merge import merge
    from lr_train.commands.prepare import prepare
    from lr_train.commands.train import train
    from lr_train.recipe import default_eval_texts

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars drown the stage output
    out = os.path.abspath(args.output)
    if args.fresh and os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    q = ["--quiet"] if args.quiet else []
    steps = max(args.steps, 3)
    timings = {}

    t = _step("data: synthetic corpus (train) and held-out text (eval)", args.quiet)
    corpus = _write_corpus(os.path.join(out, "corpus"), args.docs, seed=0)
    general = _write_corpus(os.path.join(out, "general"), max(args.docs // 4, 8), seed=1)
    timings["corpus"] = time.perf_counter() - t

    def prep(name, positions, length, target, src):
        folder = os.path.join(out, name)
        if not os.path.exists(folder):
            extra = ["--drop-ratio", "0.5"] if positions == "longrecipe" else []
            prepare(
                _cli(
                    [
                        "prepare",
                        "--tokenizer",
                        "toy",
                        "--input",
                        src,
                        "--output",
                        folder,
                        "--positions",
                        positions,
                        "--train-length",
                        str(length),
                        "--target-length",
                        str(target),
                        "--seed",
                        "0",
                        *extra,
                        *q,
                    ]
                )
            )
        return folder

    def stage(name, stage_name, model, data, max_steps, lr, schedule, extra=()):
        folder = os.path.join(out, name)
        train(
            _cli(
                [
                    "train",
                    "--stage",
                    stage_name,
                    "--model",
                    model,
                    "--tokenizer",
                    "toy",
                    "--data",
                    data,
                    "--output",
                    folder,
                    "--max-steps",
                    str(max_steps),
                    "--tokens-per-batch",
                    "2048",
                    "--lr",
                    str(lr),
                    "--schedule",
                    schedule,
                    "--warmup-steps",
                    str(max(max_steps // 10, 1)),
                    "--save-every",
                    str(max(max_steps // 2, 1)),
                    "--backend",
                    args.backend,
                    *extra,
                    *q,
                ]
            )
        )
        return os.path.join(folder, "model")

    t = _step(f"0. base model: tiny Llama trained at a {BASE_WINDOW}-token window", args.quiet)
    base_data = prep("data-base", "full", BASE_WINDOW, BASE_WINDOW, corpus)
    base = stage("base", "extend", "tiny-llama", base_data, 2 * steps, 2e-3, "cosine")
    timings["base"] = time.perf_counter() - t

    t = _step(
        f"1. prepare: {args.positions} positions, {TRAIN_LENGTH} tokens over a {TARGET} window", args.quiet
    )
    ext_data = prep(
        f"data-{args.positions}",
        args.positions,
        TRAIN_LENGTH if args.positions != "full" else TARGET,
        TARGET,
        corpus,
    )
    timings["prepare"] = time.perf_counter() - t

    t = _step("2. extend", args.quiet)
    extended = stage(
        "extend", "extend", base, ext_data, steps, 1e-3, "constant", ["--target-length", str(TARGET)]
    )
    timings["extend"] = time.perf_counter() - t

    t = _step("3. anneal: contiguous positions, falling learning rate", args.quiet)
    anneal_data = prep("data-anneal", "full", TRAIN_LENGTH, TRAIN_LENGTH, general)
    annealed = stage("anneal", "anneal", extended, anneal_data, max(steps // 3, 2), 3e-4, "linear")
    timings["anneal"] = time.perf_counter() - t

    t = _step("4. merge: ½ base + ½ annealed", args.quiet)
    merged = os.path.join(out, "merged")
    if not os.path.exists(merged):
        merge(base, annealed, merged)
    timings["merge"] = time.perf_counter() - t

    t = _step(f"5. eval at up to {TARGET} tokens: base vs merged", args.quiet)
    results = {}
    for name, path in (("base", base), ("merged", merged)):
        folder = os.path.join(out, f"eval-{name}")
        if not os.path.exists(os.path.join(folder, "results.json")):
            results[name] = _evaluate(path, folder, args, evaluate, write_results, default_eval_texts)
        with open(os.path.join(folder, "results.json")) as f:
            results[name] = json.load(f)
    timings["eval"] = time.perf_counter() - t
    report = {"results": results, "seconds": timings, "positions": args.positions}
    with open(os.path.join(out, "report.json.tmp"), "w") as f:
        json.dump(report, f, indent=2)
    os.replace(os.path.join(out, "report.json.tmp"), os.path.join(out, "report.json"))
    return report


def _evaluate(path, folder, args, evaluate, write_results, default_eval_texts) -> dict:
    from transformers import AutoModelForCausalLM

    from lr_train import patch
    from lr_train.recipe import load_tokenizer

    tokenizer = load_tokenizer("toy")
    model = AutoModelForCausalLM.from_pretrained(path)
    patch(model, backend=args.backend, cross_entropy=False)
    results = evaluate(
        model,
        tokenizer,
        default_eval_texts(),
        lengths=[BASE_WINDOW, TARGET // 2, TARGET],
        depths=[0.0, 0.5, 1.0],
        trials=2,
        ppl_length=TARGET,
        ppl_windows=4,
        seed=0,
        progress=not args.quiet,
    )
    results["model"] = path
    write_results(results, folder, overwrite=True)
    return results


def _summary(report: dict, out: str) -> str:
    base, merged = report["results"]["base"], report["results"]["merged"]
    edges = base["perplexity"]["bucket_edges"]
    lines = [
        f"\nperplexity by position at {TARGET} tokens ({report['positions']} extension)",
        f"{'positions':>12} {'base':>9} {'merged':>9}",
    ]
    for i, (a, b) in enumerate(zip(base["perplexity"]["ppl"], merged["perplexity"]["ppl"], strict=True)):
        lines.append(f"{edges[i]:>5}-{edges[i + 1] - 1:<6} {a:>9.2f} {b:>9.2f}")
    lines.append(
        f"passkey accuracy (mean over grid): base {base['passkey']['mean']:.2f}, "
        f"merged {merged['passkey']['mean']:.2f}"
    )
    lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["seconds"].items()))
    lines.append(f"everything is in {out} (report.json; eval-*/passkey.png heat maps)")
    return "\n".join(lines)


def run(args) -> int:
    try:
        report = demo(args)
    except (ValueError, OSError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print(_summary(report, os.path.abspath(args.output)))
    return 0
