"""`python -m lr_train compare`: the paper's comparison of extension methods, at small scale, on the CPU.

  base     a tiny Llama taught the RULER-style tasks inside a {base}-token window (lr_train.retriever):
           the bundled tiny-retriever, or with --train-base one trained into OUTPUT/base (about 14 min)
  arms     from that base, with the same raised RoPE base, the same number of training tokens, the same
           anneal and the same merge (½ base + ½ annealed), one run per seed, trained with the recipe's
           `train` on documents whose facts are stated early and asked about later (lr_train.ruler):
             full         full-length training: {target}-token samples, positions 0..L-1
             longrecipe   {short}-token samples of selected sentences (digit-holding ones kept, 50% of the
                          others dropped), LongRecipe positions over {target}
             random-sel   the ablation: the same, but sentences kept at random (no token analysis)
             pose         {short}-token plain text, PoSE positions over {target}
             randpos      {short}-token plain text, RandPos positions over {target}
  eval     the RULER-style suite (lr_train.ruler) at 1x, 2x and 4x the base window; per arm, task and length
           the mean over seeds with a 95% interval (Student t over seeds): tables, compare.png (mean over
           tasks), compare-<task>.png, results.json

Every stage writes its folder atomically under --output and is skipped when already there, so an interrupted
run resumes where it stopped; --fresh starts over. --quick is a smoke run (tiny steps; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace

from lr_train.cli import fail, positive_float, positive_int

ARMS = ("full", "longrecipe", "random-sel", "pose", "randpos")


@dataclass(frozen=True)
class Scale:
    """Everything that sets the size of a comparison run."""

    base_window: int = 256
    target: int = 1024
    short: int = 320  # the arms' sample length (31% of the target, as the paper's 24k of 80k)
    tokens_per_batch: int = 5120  # a multiple of both sample lengths: every arm sees exactly as many tokens
    base_steps: int = 2500  # lr_train.retriever defaults: the bundled tiny-retriever is this base
    extend_steps: int = 60
    extend_lr: float = 3e-4
    anneal_steps: int = 20
    anneal_lr: float = 1e-4
    replay_docs: int = 300
    long_docs: int = 400
    tasks: tuple[str, ...] = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt")
    depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    samples: int = 6


QUICK = Scale(
    base_steps=12,
    long_docs=24,
    replay_docs=16,
    extend_steps=2,
    anneal_steps=1,
    tasks=("niah_single", "vt"),
    depths=(0.5,),
    samples=1,
)


def add_parser(sub):
    s = Scale()
    p = sub.add_parser(
        "compare",
        help="full-length vs LongRecipe vs PoSE vs RandPos (and the random-selection ablation), small scale",
        description=__doc__.format(base=s.base_window, target=s.target, short=s.short),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", default="compare_out", help="work folder (default: ./compare_out)")
    p.add_argument("--seeds", type=positive_int, default=3, help="runs per arm (default 3)")
    p.add_argument(
        "--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the arms to run (default: all)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a smoke run in about a minute (numbers mean nothing)"
    )
    p.add_argument("--fresh", action="store_true", help="delete --output first")
    p.add_argument(
        "--train-base", action="store_true", help="train the base (about 14 min) instead of the bundled one"
    )
    p.add_argument(
        "--extend-lr",
        type=positive_float,
        default=None,
        help=f"learning rate of every arm's extend stage (default {s.extend_lr:g})",
    )
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def _cli(argv: list[str]):
    from lr_train.cli import build_parser

    return build_parser(argv[0]).parse_args(argv)


def _write_jsonl(path: str, texts: list[str]) -> str:
    """``texts`` as a jsonl corpus at ``path`` (written once, atomically)."""
    if not os.path.exists(path):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            for text in texts:
                f.write(json.dumps({"text": text}) + "\n")
        os.replace(tmp, path)
    return path


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% Student-t interval of ``values`` (the mean itself for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    # two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom, then the normal one
    t = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
    q = t[n - 2] if n - 2 < len(t) else 2.0 if n < 32 else 1.96
    half = q * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


class Runner:
    """Runs the stages of a comparison under one work folder, skipping stages already done."""

    def __init__(self, out: str, scale: Scale, backend: str, quiet: bool) -> None:
        self.out, self.scale, self.backend, self.quiet = out, scale, backend, quiet
        self.q = ["--quiet"] if quiet else []

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def prepare(
        self, name: str, corpus: str, positions: str, length: int, target: int, seed: int, *extra
    ) -> str:
        from lr_train.commands.prepare import prepare

        folder = self.path("data", name)
        if not os.path.exists(folder):
            argv = ["prepare", "--tokenizer", "toy", "--input", corpus, "--output", folder]
            argv += ["--positions", positions, "--train-length", str(length), "--target-length", str(target)]
            prepare(_cli([*argv, "--seed", str(seed), *extra, *self.q]))
        return folder

    def train(
        self,
        name: str,
        stage: str,
        model: str,
        data: str,
        steps: int,
        lr: float,
        schedule: str,
        *,
        tokens_per_batch: int,
        seed: int,
        extra=(),
    ) -> tuple[str, float]:
        """Train one stage (skipped when its model exists); returns the model folder and its wall seconds."""
        from lr_train.commands.train import train

        folder = self.path(name)
        timing = os.path.join(folder, "seconds.json")
        if not os.path.exists(os.path.join(folder, "model", "config.json")):
            t0 = time.perf_counter()
            argv = ["train", "--stage", stage, "--model", model, "--tokenizer", "toy", "--data", data]
            argv += [
                "--output",
                folder,
                "--max-steps",
                str(steps),
                "--tokens-per-batch",
                str(tokens_per_batch),
            ]
            argv += ["--lr", str(lr), "--schedule", schedule, "--warmup-steps", str(max(steps // 10, 1))]
            argv += ["--save-every", str(max(steps // 2, 1)), "--seed", str(seed), "--backend", self.backend]
            train(_cli([*argv, *extra, *self.q]))
            with open(timing, "w") as f:
                json.dump({"seconds": time.perf_counter() - t0}, f)
        with open(timing) as f:
            return os.path.join(folder, "model"), float(json.load(f)["seconds"])

    def merge(self, name: str, base: str, trained: str) -> str:
        from lr_train.commands.merge import merge

        folder = self.path(name)
        if not os.path.exists(folder):
            merge(base, trained, folder)
        return folder

    def evaluate(self, name: str, model_path: str, lengths: list[int]) -> dict:
        """RULER-style suite on ``model_path`` (cached in eval/<name>.json)."""
        path = self.path("eval", f"{name}.json")
        if not os.path.exists(path):
            import torch
            from transformers import AutoModelForCausalLM

            from lr_train import patch
            from lr_train.evaluation import ruler_suite
            from lr_train.recipe import load_tokenizer

            s = self.scale
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
            patch(model, backend=self.backend, cross_entropy=False)
            result = ruler_suite(
                model,
                load_tokenizer("toy"),
                tasks=list(s.tasks),
                lengths=lengths,
                depths=list(s.depths),
                samples=s.samples,
                seed=1234,  # the same prompts for every model
                progress=not self.quiet,
            )
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(f"{path}.tmp", "w") as f:
                json.dump(result, f)
            os.replace(f"{path}.tmp", path)
        with open(path) as f:
            return json.load(f)


def _flops(params: int, layers: int, hidden: int, tokens: int, length: int) -> float:
    """Training FLOPs: 6 per weight per token, plus causal attention (QK^T and PV, forward and backward)."""
    return 6.0 * params * tokens + 6.0 * layers * hidden * length * tokens


def _same_scale(out: str, s: Scale) -> None:
    """Refuse to resume ``out`` with settings other than those its stages were made with."""
    path = os.path.join(out, "scale.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        before = json.load(f)
    now = json.loads(json.dumps(asdict(s)))  # tuples as lists, like the file
    changed = [f"{k} {before.get(k)} -> {v}" for k, v in now.items() if before.get(k) != v]
    if changed:
        raise ValueError(
            f"--output {out} was run with other settings ({', '.join(changed)}); "
            "pass --fresh or choose another --output"
        )


def compare(args) -> dict:
    from transformers.utils import logging as hf_logging

    from lr_train.checkpoint import atomic_write_text
    from lr_train.ruler import retrieval_corpus

    hf_logging.disable_progress_bar()
    for arm in args.arms:
        if arm not in ARMS:
            raise ValueError(f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    s = QUICK if args.quick else Scale()
    if args.extend_lr is not None:
        s = replace(s, extend_lr=args.extend_lr)
    out = os.path.abspath(args.output)
    if args.fresh and os.path.exists(out):
        shutil.rmtree(out)
    _same_scale(out, s)
    os.makedirs(os.path.join(out, "corpus"), exist_ok=True)
    atomic_write_text(os.path.join(out, "scale.json"), json.dumps(asdict(s), indent=2), overwrite=True)
    r = Runner(out, s, args.backend, args.quiet)
    t_start = time.perf_counter()
    lengths = [s.base_window, 2 * s.base_window, s.target]

    # Corpora: long documents for the extension (references across the whole target window), short ones
    # (references inside the base window) replayed by the anneal.
    r.say("== corpora: documents with long-range references (lr_train.ruler templates)")
    long_corpus = _write_jsonl(
        r.path("corpus", "long.jsonl"),
        retrieval_corpus(s.long_docs, sentences=s.target // 6, seed=1, every=24),
    )
    replay_corpus = _write_jsonl(
        r.path("corpus", "replay.jsonl"),
        retrieval_corpus(s.replay_docs, sentences=max(8, s.base_window // 24), seed=2),
    )

    r.say(f"== base: tiny Llama taught to retrieve inside a {s.base_window}-token window")
    base = r.path("base")
    if not os.path.exists(base) and not (args.train_base or args.quick):
        from lr_train.commands.demo import BUNDLED_BASE

        base = BUNDLED_BASE  # lr_train.retriever's defaults made it: the base --train-base would train
    if not os.path.exists(base):
        from lr_train.retriever import train_retriever

        train_retriever(
            base, window=s.base_window, steps=s.base_steps, tasks=s.tasks, seed=0, progress=not args.quiet
        )
    with open(os.path.join(base, "retriever_log.json")) as f:
        base_seconds = float(json.load(f)["seconds"])
    base_eval = r.evaluate("base", base, lengths)
    native = base_eval["by_length"][0]
    r.say(f"base: RULER mean at its {s.base_window}-token window {native:.2f}")

    anneal_data = r.prepare("anneal", replay_corpus, "full", s.short, s.short, 0)
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for seed in range(args.seeds):
        for arm in args.arms:
            r.say(f"== {arm}, seed {seed}")
            positions = {"random-sel": "longrecipe"}.get(arm, arm)
            length = s.target if arm == "full" else s.short
            extra = []
            if positions == "longrecipe":
                extra = ["--drop-ratio", "0.5"]
                if arm == "random-sel":
                    extra += ["--impactful", "none"]
            data = r.prepare(f"{arm}-{seed}", long_corpus, positions, length, s.target, seed, *extra)
            extended, t_ext = r.train(
                f"{arm}-{seed}/extend",
                "extend",
                base,
                data,
                s.extend_steps,
                s.extend_lr,
                "constant",
                tokens_per_batch=s.tokens_per_batch,
                seed=seed,
                extra=["--target-length", str(s.target)],
            )
            annealed, t_ann = r.train(
                f"{arm}-{seed}/anneal",
                "anneal",
                extended,
                anneal_data,
                s.anneal_steps,
                s.anneal_lr,
                "linear",
                tokens_per_batch=s.tokens_per_batch,
                seed=seed,
            )
            merged = r.merge(f"{arm}-{seed}/merged", base, annealed)
            result = r.evaluate(f"{arm}-{seed}", merged, lengths)
            runs[arm].append(
                {
                    "seed": seed,
                    "by_length": result["by_length"],
                    "tasks": {t: v["by_length"] for t, v in result["tasks"].items()},
                    "extend_seconds": t_ext,
                    "anneal_seconds": t_ann,
                    "sample_length": length,
                }
            )
    report = _report(s, lengths, base_eval, base_seconds, runs, time.perf_counter() - t_start, args)
    _write_outputs(out, report)
    return report


def _band(rs: list[dict], pick, n: int) -> dict[str, list[float]]:
    """Mean and 95% interval over runs of ``pick(run)[i]`` for each of ``n`` lengths."""
    per = [t_interval([pick(r)[i] for r in rs]) for i in range(n)]
    return {"mean": [m for m, _, _ in per], "low": [lo for _, lo, _ in per], "high": [hi for _, _, hi in per]}


def _report(s: Scale, lengths, base_eval, base_seconds, runs, seconds, args) -> dict:
    from lr_train.models import TINY_PRESETS

    cfg = TINY_PRESETS["tiny-llama-4l"]  # the base preset of lr_train.retriever
    layers, hidden = cfg["num_hidden_layers"], cfg["hidden_size"]
    params = layers * (4 * hidden * hidden + 3 * hidden * cfg["intermediate_size"])  # attention + MLP
    tokens = s.extend_steps * s.tokens_per_batch
    n = len(lengths)
    arms = {}
    for arm, rs in runs.items():
        arms[arm] = {
            **_band(rs, lambda r: r["by_length"], n),
            "tasks": {t: _band(rs, lambda r, t=t: r["tasks"][t], n) for t in rs[0]["tasks"]},
            "runs": rs,
            "training_tokens": tokens,
            "sample_length": rs[0]["sample_length"],
            "train_flops": _flops(params, layers, hidden, tokens, rs[0]["sample_length"]),
            "extend_seconds": sum(r["extend_seconds"] for r in rs) / len(rs),
        }
    return {
        "scale": asdict(s),
        "quick": bool(args.quick),
        "seeds": args.seeds,
        "lengths": lengths,
        "base": {
            "by_length": base_eval["by_length"],
            "tasks": {t: v["by_length"] for t, v in base_eval["tasks"].items()},
            "train_seconds": base_seconds,
        },
        "arms": arms,
        "seconds": seconds,
    }


def table(report: dict, task: str | None = None) -> str:
    """The comparison as Markdown: accuracy per arm and length, mean over seeds [95% interval], for one
    ``task`` or (None) the mean over all tasks."""
    lengths = report["lengths"]
    head = (
        "| arm | "
        + " | ".join(f"{n} tokens" for n in lengths)
        + " | training tokens | FLOPs (rel.) | extend s |"
    )
    rows = [head, "|" + "---|" * (len(lengths) + 4)]
    base = report["base"]["by_length"] if task is None else report["base"]["tasks"][task]
    rows.append("| base (no extension) | " + " | ".join(f"{v:.2f}" for v in base) + " | – | – | – |")
    flops0 = min(a["train_flops"] for a in report["arms"].values()) if report["arms"] else 1.0
    for arm, a in report["arms"].items():
        band = a if task is None else a["tasks"][task]
        cells = [
            f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
            for m, lo, hi in zip(band["mean"], band["low"], band["high"], strict=True)
        ]
        rows.append(
            f"| {arm} | "
            + " | ".join(cells)
            + f" | {a['training_tokens']:,} | {a['train_flops'] / flops0:.2f} | "
            f"{a['extend_seconds']:.0f} |"
        )
    return "\n".join(rows)


def _write_outputs(out: str, report: dict) -> None:
    """results.json, compare.png (mean over tasks) and compare-<task>.png (one per task)."""
    from lr_train.plots import accuracy_vs_length

    tasks = list(report["base"]["tasks"])
    report["table"] = table(report)
    report["task_tables"] = {t: table(report, t) for t in tasks}
    for task in (None, *tasks):
        series = {
            "base": ((report["base"]["by_length"] if task is None else report["base"]["tasks"][task]),) * 3
        }
        for arm, a in report["arms"].items():
            band = a if task is None else a["tasks"][task]
            series[arm] = (band["mean"], band["low"], band["high"])
        what = "RULER-style accuracy (mean over tasks)" if task is None else f"{task} accuracy"
        accuracy_vs_length(
            os.path.join(out, "compare.png" if task is None else f"compare-{task}.png"),
            report["lengths"],
            series,
            title=f"{what} after extension to {report['scale']['target']} tokens\n"
            f"tiny Llama, mean of {report['seeds']} seeds, 95% interval",
            native_length=report["scale"]["base_window"],
        )
    with open(os.path.join(out, "results.json.tmp"), "w") as f:
        json.dump(report, f, indent=2)
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))


def run(args) -> int:
    t0 = time.perf_counter()
    try:
        report = compare(args)
    except (ValueError, OSError) as exc:
        return fail("compare", exc)
    first = next(iter(report["task_tables"]))
    print(f"\n{first}, accuracy by context length (base window {report['scale']['base_window']}):")
    print(report["task_tables"][first])
    print("\nmean over all tasks:")
    print(report["table"])
    print(
        f"\nwall time {time.perf_counter() - t0:.0f} s; "
        f"results.json and compare.png in {os.path.abspath(args.output)}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(_cli(["compare", *sys.argv[1:]])))
