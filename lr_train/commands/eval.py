"""`python -m lr_train eval`: long-context ability of a model.

Suites (--suite, one or more; default: passkey perplexity):

  ruler       RULER-style synthetic tasks, generated offline and deterministically (lr_train.ruler):
              niah_single, niah_multikey, niah_multivalue, niah_multiquery and vt (variable tracking);
              exact match of greedy generation; accuracy per task by depth x length (ruler-<task>.png)
              and by length (ruler-by-length.png); plus short-context retention: perplexity and RULER
              accuracy at --native-length (the base model's window, default: the smallest --lengths)
  passkey     a random key hidden at several depths of filler text of several lengths, answered by
              greedy generation (needle in a haystack); heat map passkey.png
  perplexity  of the next token, by position bucket, over windows of --ppl-length tokens

Filler / perplexity text: --input files (.txt, .jsonl, `datasets` folders), or the bundled toy corpus.
--output gets results.json (the numbers and every setting that shaped them) and the PNGs; heat maps have
depths as rows (top to bottom) and lengths as columns, red 0 -> green 1. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from lr_train import ruler
from lr_train.cli import fail, float_in, int_at_least, load_tokenizer_arg, nonnegative_int, positive_int

SUITES = ("ruler", "passkey", "perplexity")
DEFAULT_SUITES = ("passkey", "perplexity")
DEFAULT_TRIALS = 4
DEFAULT_SAMPLES = 4
DEFAULT_PPL_WINDOWS = 8

# Options that only some suites use (dest -> flag, suites): giving one without its suite is an error, not
# a silently ignored argument.
SUITE_OPTIONS = {
    "tasks": ("--tasks", ("ruler",)),
    "samples": ("--samples", ("ruler",)),
    "native_length": ("--native-length", ("ruler",)),
    "batch_size": ("--batch-size", ("ruler",)),
    "trials": ("--trials", ("passkey",)),
    "depths": ("--depths", ("ruler", "passkey")),
    "ppl_length": ("--ppl-length", ("perplexity",)),
    "ppl_windows": ("--ppl-windows", ("perplexity", "ruler")),
}


def add_parser(sub):
    p = sub.add_parser(
        "eval",
        help="RULER tasks, passkey (needle-in-a-haystack) grid and perplexity by position",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder or hub name")
    p.add_argument("--tokenizer", default=None, help="default: the model's own; `toy` for the toy tokenizer")
    p.add_argument("--output", required=True, help="folder for results.json and the PNGs")
    p.add_argument(
        "--suite",
        nargs="+",
        choices=SUITES,
        default=list(DEFAULT_SUITES),
        help="evaluations to run (default: passkey perplexity)",
    )
    p.add_argument(
        "--lengths", type=int_at_least(2), nargs="+", required=True, help="context lengths in tokens"
    )
    p.add_argument(
        "--depths",
        type=float_in(0.0, 1.0),
        nargs="+",
        default=None,
        help=f"needle depths, 0 = start, 1 = end (default: {' '.join(map(str, ruler.DEFAULT_DEPTHS))})",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=(*ruler.TASKS, "all"),
        default=None,
        metavar="TASK",
        help=f"RULER tasks: {', '.join(ruler.TASKS)} or all (default: all)",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help=f"prompts per RULER cell (default: {DEFAULT_SAMPLES})",
    )
    p.add_argument(
        "--native-length",
        type=int_at_least(2),
        default=None,
        help="the base model's window, for the retention figure (default: the smallest --lengths)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="RULER prompts per generate call (default: a whole cell); lower it if long prompts run out "
        "of memory",
    )
    p.add_argument(
        "--trials", type=positive_int, default=None, help=f"keys per passkey cell (default: {DEFAULT_TRIALS})"
    )
    p.add_argument(
        "--ppl-length", type=int_at_least(2), default=None, help="window for perplexity (default: max length)"
    )
    p.add_argument(
        "--ppl-windows",
        type=positive_int,
        default=None,
        help=f"windows for perplexity and retention (default: {DEFAULT_PPL_WINDOWS})",
    )
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
    depths=ruler.DEFAULT_DEPTHS,
    trials=DEFAULT_TRIALS,
    ppl_length=None,
    ppl_windows=DEFAULT_PPL_WINDOWS,
    seed=0,
    progress=True,
    suites=DEFAULT_SUITES,
    tasks=("all",),
    samples=DEFAULT_SAMPLES,
    native_length=None,
    batch_size=None,
    tokens=None,
) -> dict:
    """The ``suites`` on an already loaded model; returns a JSON-able dict.

    Keys: ``settings`` (everything here that shaped the numbers, with the model's dtype and the torch /
    transformers versions) and one per suite run: ``perplexity``, ``passkey``, ``ruler`` (the
    :func:`lr_train.evaluation.ruler_suite` dict), and with ``ruler`` also ``retention`` (at
    ``native_length``, default the smallest length). ``ppl_length`` defaults to the longest length;
    ``tokens`` is the token stream of ``texts`` when the caller already has it.
    """
    import torch
    import transformers

    from lr_train.evaluation import passkey_grid, perplexity_by_position, retention, ruler_suite
    from lr_train.recipe import token_stream

    unknown = sorted(set(suites) - set(SUITES))
    if unknown or not suites:
        raise ValueError(f"suites must be among {', '.join(SUITES)}, got {unknown or 'none'}")
    suites = [s for s in SUITES if s in suites]
    lengths, depths = [int(n) for n in lengths], [float(d) for d in depths]
    ppl_length = ppl_length or max(lengths)
    native_length = native_length or min(lengths)
    tasks = ruler.parse_tasks(tasks)
    model.eval()
    window = model.config.max_position_embeddings
    used = set()
    if "ruler" in suites or "passkey" in suites:
        used |= set(lengths)
    used |= {ppl_length} if "perplexity" in suites else set()
    used |= {native_length} if "ruler" in suites else set()
    for n in sorted(used):
        if n > window:
            print(f"eval: note: length {n} is beyond the model's window ({window})", file=sys.stderr)
    settings: dict = {"suites": suites, "lengths": lengths, "seed": seed}
    if "ruler" in suites or "passkey" in suites:
        settings["depths"] = depths
    if "passkey" in suites:
        settings["trials"] = trials
    if "perplexity" in suites:
        settings["ppl_length"] = ppl_length
    if "perplexity" in suites or "ruler" in suites:
        settings["ppl_windows"] = ppl_windows
    if "ruler" in suites:
        settings.update(tasks=tasks, samples=samples, native_length=native_length, batch_size=batch_size)
    settings["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    settings["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    results: dict = {"settings": settings}
    if tokens is None and ("perplexity" in suites or "ruler" in suites):
        tokens = token_stream(tokenizer, texts)
    if "perplexity" in suites:
        ppl = perplexity_by_position(
            model, tokens, length=ppl_length, max_windows=ppl_windows, progress=progress
        )
        results["perplexity"] = {
            "length": ppl.length,
            "bucket_edges": ppl.bucket_edges,
            "ppl": ppl.ppl,
            "nll": ppl.nll,
            "windows": ppl.windows,
            "table": ppl.table(),
        }
    if "passkey" in suites:
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
        results["passkey"] = {
            "lengths": grid.lengths,
            "depths": grid.depths,
            "accuracy": grid.accuracy,
            "mean": grid.mean,
            "trials": grid.trials,
            "examples": grid.examples,
            "table": grid.table(),
        }
    if "ruler" in suites:
        common = dict(tasks=tasks, depths=depths, samples=samples, seed=seed, batch_size=batch_size)
        results["ruler"] = ruler_suite(model, tokenizer, lengths=lengths, progress=progress, **common)
        results["retention"] = retention(
            model,
            tokenizer,
            tokens,
            native_length=native_length,
            ppl_windows=ppl_windows,
            ruler_result=results["ruler"],
            progress=progress,
            **common,
        )
    return results


def _display_name(model: str | None) -> str:
    """A model name short enough for a figure title: a long path keeps its last two components."""
    if not model:
        return "model"
    name = str(model).rstrip("/")
    if len(name) > 40 and "/" in name:
        name = "/".join(name.split("/")[-2:])
    return name


def write_figures(results: dict, folder: str) -> list[str]:
    """The PNGs of ``results`` (as :func:`evaluate` returns them, with ``model``) into ``folder``;
    returns their file names: passkey.png, ruler-<task>.png per task and ruler-by-length.png."""
    from lr_train.evaluation import wilson_interval
    from lr_train.plots import accuracy_vs_length, heatmap

    name = _display_name(results.get("model"))
    written = []
    axes = dict(row_label="needle depth (0 = start, 1 = end)", col_label="context length (tokens)")
    if "passkey" in results:
        pk = results["passkey"]
        heatmap(
            os.path.join(folder, "passkey.png"),
            pk["accuracy"],
            rows=pk["depths"],
            cols=pk["lengths"],
            title=f"{name} — passkey",
            **axes,
        )
        written.append("passkey.png")
    if "ruler" in results:
        r = results["ruler"]
        for task, t in r["tasks"].items():
            heatmap(
                os.path.join(folder, f"ruler-{task}.png"),
                t["accuracy"],
                rows=t["depths"],
                cols=t["lengths"],
                title=f"{name} — RULER {task}",
                **axes,
            )
            written.append(f"ruler-{task}.png")
        # One band only, on the mean over tasks (Wilson 95% over all its prompts): five overlapping bands
        # hide the lines. Each task's own cells are in its heat map.
        n = r["samples"] * len(r["depths"]) * len(r["tasks"])
        bounds = [wilson_interval(a * n, n) for a in r["by_length"]]
        series = {task: (t["by_length"],) * 3 for task, t in r["tasks"].items()}
        series["all tasks" if len(r["tasks"]) > 1 else next(iter(r["tasks"]))] = (
            r["by_length"],
            [lo for lo, _ in bounds],
            [hi for _, hi in bounds],
        )
        accuracy_vs_length(
            os.path.join(folder, "ruler-by-length.png"),
            r["lengths"],
            series,
            title=f"{name} — RULER accuracy by length",
            native_length=results.get("retention", {}).get("length"),
        )
        written.append("ruler-by-length.png")
    return written


def write_results(results: dict, output: str, *, overwrite: bool) -> None:
    """results.json and the figures (:func:`write_figures`) into the folder ``output``, atomically."""
    from lr_train.checkpoint import atomic_dir

    with atomic_dir(output, overwrite=overwrite, flag="--output") as tmp:
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        write_figures(results, tmp)


def _check_passkey_room(tokenizer, lengths: list[int]) -> None:
    """Refuse --lengths too short to hold the passkey needle and question, before any model is loaded."""
    from lr_train.evaluation import NEEDLE, QUESTION

    prompt = NEEDLE.format(key="12345") + QUESTION
    need = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1
    short = [n for n in lengths if n < need]
    if short:
        raise ValueError(f"--lengths {short[0]} is too short for the passkey prompt; use at least {need}")


def _check_ruler_room(tokenizer, tasks, lengths, depths, samples: int, seed: int, flag: str) -> None:
    """Refuse lengths (given by ``flag``) that cannot hold a task's prompts, before any model is loaded.

    ``ruler.min_length`` first. It is measured on sampled instances (with a margin), and one with longer
    keys could still need more; so at lengths below twice that, every prompt the run will use is built once
    here (milliseconds each), and the run cannot fail later for want of room.
    """
    needs = {task: ruler.min_length(tokenizer, task) for task in tasks}
    for task, need in needs.items():
        short = [n for n in lengths if n < need]
        if short:
            raise ValueError(f"{flag} {short[0]} is too short for RULER task {task}; use at least {need}")
    for task, need in needs.items():
        for n in (n for n in lengths if n < 2 * need):
            for d in depths:
                try:
                    ruler.task_samples(tokenizer, task, n, d, samples, seed)
                except ValueError:
                    raise ValueError(
                        f"{flag} {n} is too short for some prompts of RULER task {task} "
                        f"(depth {d:g}, seed {seed}); use a longer length"
                    ) from None


def _check_suite_options(args) -> None:
    for dest, (flag, suites) in SUITE_OPTIONS.items():
        if getattr(args, dest) is not None and not set(suites) & set(args.suite):
            raise ValueError(f"{flag} applies to --suite {' / '.join(suites)}, which is not being run")


def _check_text_room(tokens, length: int, flag: str) -> None:
    if tokens.numel() < length:
        raise ValueError(
            f"{flag} {length} is longer than the evaluation text ({tokens.numel()} tokens); pass more "
            f"--input or a smaller {flag}"
        )


def run(args) -> int:
    from transformers import AutoModelForCausalLM

    from lr_train import patch
    from lr_train.checkpoint import check_output
    from lr_train.commands.prepare import check_inputs
    from lr_train.recipe import default_eval_texts, read_texts, token_stream

    suites = [s for s in SUITES if s in args.suite]
    depths = args.depths or list(ruler.DEFAULT_DEPTHS)
    tasks = ruler.parse_tasks(args.tasks or ["all"])
    samples = args.samples or DEFAULT_SAMPLES
    native_length = args.native_length or min(args.lengths)
    ppl_length = args.ppl_length or max(args.lengths)
    try:
        _check_suite_options(args)
        check_output(args.output, overwrite=args.overwrite, flag="--output")
        if args.input:
            check_inputs(args.input)
        tokenizer = load_tokenizer_arg(
            args.tokenizer or args.model, "--tokenizer" if args.tokenizer else "--model"
        )
        if "passkey" in suites:
            _check_passkey_room(tokenizer, args.lengths)
        if "ruler" in suites:
            _check_ruler_room(tokenizer, tasks, args.lengths, depths, samples, args.seed, "--lengths")
            if native_length not in args.lengths:
                _check_ruler_room(
                    tokenizer, tasks, [native_length], depths, samples, args.seed, "--native-length"
                )
        texts = read_texts(args.input) if args.input else default_eval_texts()
        tokens = None
        if "perplexity" in suites or "ruler" in suites:
            tokens = token_stream(tokenizer, texts)
            if "perplexity" in suites:
                _check_text_room(tokens, ppl_length, "--ppl-length")
            if "ruler" in suites:
                _check_text_room(tokens, native_length, "--native-length")
        model = AutoModelForCausalLM.from_pretrained(args.model)
        if not args.no_patch:
            patch(model, backend=args.backend, cross_entropy=False)
        results = {"model": args.model}
        results.update(
            evaluate(
                model,
                tokenizer,
                texts,
                lengths=args.lengths,
                depths=depths,
                trials=args.trials or DEFAULT_TRIALS,
                ppl_length=ppl_length,
                ppl_windows=args.ppl_windows or DEFAULT_PPL_WINDOWS,
                seed=args.seed,
                progress=not args.quiet,
                suites=suites,
                tasks=tasks,
                samples=samples,
                native_length=native_length,
                batch_size=args.batch_size,
                tokens=tokens,
            )
        )
        results["settings"].update(
            tokenizer=args.tokenizer or args.model,
            input=args.input,
            patched=not args.no_patch,
            backend=args.backend,
        )
        write_results(results, args.output, overwrite=args.overwrite)
    except (ValueError, OSError) as exc:
        return fail("eval", exc)
    if "perplexity" in results:
        print("perplexity by position\n" + results["perplexity"]["table"])
    if "passkey" in results:
        print("passkey accuracy\n" + results["passkey"]["table"])
    if "ruler" in results:
        from lr_train.evaluation import ruler_table

        ret = results["retention"]
        print("RULER accuracy by length (mean over depths)\n" + ruler_table(results["ruler"]))
        print(
            f"retention at {ret['length']} tokens: perplexity {ret['perplexity']:.2f}, "
            f"RULER accuracy {ret['ruler_mean']:.2f}"
        )
    print(f"results in {args.output}/results.json, figures beside it")
    return 0
