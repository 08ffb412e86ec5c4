"""A tiny base model that can retrieve inside its own window: the starting point of `demo` and `compare`.

Context extension only means something for a model that already uses its context. A tiny Llama trained
as a plain language model on the toy corpus never learns to look back (nothing far away predicts
anything), so this module trains one on the RULER-style tasks of :mod:`lr_train.ruler` instead: prompts
of haystack with needles, with a language-model loss on all of the text plus a loss on the answer
tokens alone. The first task (niah_single) is trained alone for the first quarter of the steps, and
prompt lengths grow from short ones to the full window over the first 60% (retrieval is learnt on one
needle at short range first: a tiny model trained on every task at full length from the start does not
find it within a few thousand steps). The result stands in for a pretrained model; the extension methods
then train it with the recipe (plain language-model loss on long documents) and are judged beyond its
window.

What the defaults learn (the bundled base, 2,500 steps, about 14 min on 2 cores), at 256 tokens: the
single needle reliably; multi-key, multi-value and multi-query only partly; variable tracking not at all.
Continuing it on the key-matching tasks (``init``, ``weights``, ``extra_questions``; multi-key alone with
``batch`` 16 first is what forms key matching) raises those, and makes the base more fragile under
extension: docs/training.md has the commands and the measured numbers.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from lr_train import ruler

CURRICULUM_SHARE = 0.6  # share of the steps over which prompt lengths grow to the window
FIRST_TASK_SHARE = 0.25  # share of the steps that train the first task alone (the retrieval circuit forms)
SHORTEST = 80  # tokens of the first prompts (niah_single needs about 60)


def _batch(
    tokenizer,
    enc,
    tasks: Sequence[str],
    floors: dict,
    length_cap: int,
    batch: int,
    rng: random.Random,
    weights: Sequence[float] | None = None,
    extra_questions: bool = False,
):
    """``batch`` prompts + answers of tasks drawn from ``tasks`` (by ``weights``, default equal),
    right-padded: input_ids, answer labels (-100 elsewhere) and text labels (every real token; -100 on
    padding), all int64 [batch, T].

    With ``extra_questions``, a prompt whose needles answer more questions (multi-key, multi-query) is
    followed by those questions and their answers too, with the haystack shortened to keep the row inside
    ``length_cap`` + answer: up to four key lookups per sample instead of one.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows, labels = [], []
    for _ in range(batch):
        task = rng.choice(tasks) if weights is None else rng.choices(tasks, weights)[0]
        floor = floors[task]
        length = max(floor, rng.randint(max(SHORTEST, int(0.6 * length_cap)), max(SHORTEST, length_cap)))
        depth, state = rng.random(), rng.getstate()
        s = ruler.make_sample(tokenizer, task, length, depth, rng, encoder=enc)
        extra = [(enc(q), enc(ruler.answer_text(task, a))) for q, a in s.others] if extra_questions else []
        if extra:  # the same instance again (same RNG state), with room left for the extra questions
            rng.setstate(state)
            room = sum(len(q) + len(a) for q, a in extra)
            s = ruler.make_sample(tokenizer, task, max(floor, length - room), depth, rng, encoder=enc)
        answer = enc(ruler.answer_text(task, s.answer))
        row, label = s.input_ids + answer, [-100] * len(s.input_ids) + answer
        for q, a in extra:
            if len(row) + len(q) + len(a) > max(length, len(row)):
                break
            row += q + a
            label += [-100] * len(q) + a
        rows.append(row)
        labels.append(label)
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
    text = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    return ids, lab, text


def _loss(model, ids: torch.Tensor, answer: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Language-model loss over all text plus the loss over the answers, each a mean over its tokens.

    The first keeps the base a language model of the text it reads (extension later trains it with that
    loss alone; a base that never modelled text would be rewritten by it); the second teaches retrieval.
    """
    logits = model(input_ids=ids).logits[:, :-1].float()
    flat = logits.reshape(-1, logits.shape[-1])
    lm = torch.nn.functional.cross_entropy(flat, text[:, 1:].reshape(-1), ignore_index=-100)
    ans = torch.nn.functional.cross_entropy(flat, answer[:, 1:].reshape(-1), ignore_index=-100)
    return lm + ans


def train_retriever(
    output: str,
    *,
    window: int = 256,
    steps: int = 2500,
    tasks: tuple[str, ...] = ruler.TASKS,
    weights: Sequence[float] | None = None,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    preset: str = "tiny-llama-4l",
    init: str | None = None,
    first_task_share: float = FIRST_TASK_SHARE,
    extra_questions: bool = False,
    progress: bool = True,
) -> dict:
    """Train a model (window ``window`` tokens) to answer the RULER-style ``tasks``; save it (with the toy
    tokenizer) to ``output`` atomically. Returns the log: final loss, seconds, settings, and ``phases``
    (the settings of every run that led to this model, earliest first).

    A fresh ``preset`` model unless ``init`` names a folder this function wrote: training then continues
    from it (another phase, with its own warm-up and cosine schedule). ``weights`` (one per task, default
    equal) set how often each task is drawn after the first ``first_task_share`` of the steps, which
    train ``tasks[0]`` alone. ``extra_questions``: see :func:`_batch`.
    """
    from lr_train.checkpoint import atomic_dir
    from lr_train.models import build_model
    from lr_train.toy import toy_tokenizer

    if steps < 1 or batch < 1 or window < SHORTEST:
        raise ValueError(f"need steps >= 1, batch >= 1 and window >= {SHORTEST}")
    if not 0.0 <= first_task_share <= 1.0:
        raise ValueError(f"first_task_share must lie in [0, 1], got {first_task_share}")
    tasks = tuple(ruler.parse_tasks(tasks))
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(tasks) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"weights must be {len(tasks)} non-negative numbers (one per task), got {weights}"
            )
    tokenizer = toy_tokenizer()
    floors = {t: ruler.min_length(tokenizer, t) for t in tasks}
    too_long = [t for t in tasks if floors[t] > window]
    if too_long:
        raise ValueError(f"window {window} is too short for task {too_long[0]} (needs {floors[too_long[0]]})")
    phases: list[dict] = []
    if init is None:
        model = build_model(preset, vocab_size=len(tokenizer), seed=seed)
    else:
        from transformers import AutoModelForCausalLM

        if not os.path.isfile(os.path.join(init, "retriever_log.json")):
            raise ValueError(f"init: {init} is not a folder written by train_retriever")
        with open(os.path.join(init, "retriever_log.json")) as f:
            previous = json.load(f)
        phases = previous.get("phases") or [dict(previous["settings"], seconds=previous.get("seconds", 0.0))]
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)  # fp32 master weights
    model.config.max_position_embeddings = window
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(f"lr-retriever-{seed}")
    enc = ruler._Encoder(tokenizer)
    t0, losses = time.perf_counter(), []
    bar = tqdm(range(steps), desc="base", disable=not progress, leave=False)
    for step in bar:
        cap = int(SHORTEST + (window - SHORTEST) * min(1.0, step / max(1, CURRICULUM_SHARE * steps)))
        alone = step < first_task_share * steps
        now, w = (tasks[:1], None) if alone else (tasks, weights)
        ids, labels, text = _batch(tokenizer, enc, now, floors, cap, batch, rng, w, extra_questions)
        loss = _loss(model, ids, labels, text)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", length=cap)
    seconds = time.perf_counter() - t0
    settings = {
        "window": window,
        "steps": steps,
        "tasks": list(tasks),
        "weights": weights,
        "first_task_share": first_task_share,
        "extra_questions": extra_questions,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "preset": preset if init is None else None,
        "init": init,
        "seconds": seconds,
    }
    phases.append(settings)
    log = {
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "seconds": sum(p.get("seconds", 0.0) for p in phases),
        "settings": settings,
        "phases": phases,
    }
    model.eval()
    with atomic_dir(output, overwrite=False, flag="output") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "retriever_log.json"), "w") as f:
            json.dump(log, f, indent=2)
    return log


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lr_train.retriever OUTPUT [...]``: train (or, with --init, continue training) a base."""
    import argparse

    from lr_train.cli import fail, limit_threads, positive_float, positive_int
    from lr_train.models import TINY_PRESETS

    p = argparse.ArgumentParser(prog="python -m lr_train.retriever", description=main.__doc__)
    p.add_argument("output", help="folder to write (must not exist)")
    p.add_argument("--steps", type=positive_int, default=2500)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--batch", type=positive_int, default=8, help="prompts per step")
    p.add_argument(
        "--tasks", nargs="+", default=list(ruler.TASKS), help="the first one is trained alone first"
    )
    p.add_argument("--weights", nargs="+", type=float, default=None, help="how often each task is drawn")
    p.add_argument("--first-task-share", type=float, default=FIRST_TASK_SHARE)
    p.add_argument("--init", default=None, help="continue from this train_retriever folder")
    p.add_argument(
        "--preset",
        choices=sorted(TINY_PRESETS),
        default="tiny-llama-4l",
        help="model of a fresh base (ignored with --init)",
    )
    p.add_argument(
        "--extra-questions", action="store_true", help="follow multi-key prompts by all their questions"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    limit_threads()
    try:
        ruler.parse_tasks(args.tasks)
    except ValueError as exc:
        return fail("retriever", f"--tasks: {exc}")
    try:
        log = train_retriever(
            args.output,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            tasks=tuple(args.tasks),
            weights=args.weights,
            first_task_share=args.first_task_share,
            init=args.init,
            preset=args.preset,
            extra_questions=args.extra_questions,
            seed=args.seed,
            progress=not args.quiet,
        )
    except (ValueError, OSError) as exc:
        return fail("retriever", exc)
    print(f"{args.output}: final loss {log['final_loss']:.3f}, {log['settings']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
