"""A tiny base model that can retrieve inside its own window: the starting point of `demo` and `compare`.

Context extension only means something for a model that already uses its context. A tiny Llama trained
as a plain language model on the toy corpus never learns to look back (nothing far away predicts
anything), so this module trains one on the RULER-style tasks of :mod:`lr_train.ruler` instead: prompts
of haystack with needles, with a language-model loss on all of the text plus a loss on the answer
tokens alone; the first task (niah_single) is trained alone for the first quarter of the steps, and
prompt lengths grow from short ones to the full window over the first 60% (retrieval is learnt on one
needle at short range first: a tiny model trained on every task at full length from the start does not
find it within a few thousand steps). The result stands in for a pretrained model; the extension methods
then train it with the recipe (plain language-model loss on long documents) and are judged beyond its
window.
"""

from __future__ import annotations

import json
import math
import os
import random
import time

import torch
from tqdm.auto import tqdm

from lr_train import ruler

CURRICULUM_SHARE = 0.6  # share of the steps over which prompt lengths grow to the window
FIRST_TASK_SHARE = 0.25  # share of the steps that train the first task alone (the retrieval circuit forms)
SHORTEST = 80  # tokens of the first prompts (niah_single needs about 60)


def _batch(tokenizer, enc, tasks, floors: dict, length_cap: int, batch: int, rng: random.Random):
    """``batch`` prompts + answers, right-padded: input_ids, answer labels (-100 elsewhere) and text labels
    (every real token; -100 on padding), all int64 [B, T]."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows, labels = [], []
    for _ in range(batch):
        task = rng.choice(tasks)
        floor = floors[task]
        length = max(floor, rng.randint(max(SHORTEST, int(0.6 * length_cap)), max(SHORTEST, length_cap)))
        s = ruler.make_sample(tokenizer, task, length, rng.random(), rng, encoder=enc)
        answer = enc(ruler.answer_text(task, s.answer))
        rows.append(s.input_ids + answer)
        labels.append([-100] * len(s.input_ids) + answer)
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
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    preset: str = "tiny-llama-4l",
    progress: bool = True,
) -> dict:
    """Train a ``preset`` model (window ``window`` tokens) to answer the RULER-style ``tasks``; save it (with
    the toy tokenizer) to ``output`` atomically. Returns the log: final loss, seconds, settings."""
    from lr_train.checkpoint import atomic_dir
    from lr_train.models import build_model
    from lr_train.toy import toy_tokenizer

    if steps < 1 or batch < 1 or window < SHORTEST:
        raise ValueError(f"need steps >= 1, batch >= 1 and window >= {SHORTEST}")
    tasks = tuple(ruler.parse_tasks(tasks))
    tokenizer = toy_tokenizer()
    floors = {t: ruler.min_length(tokenizer, t) for t in tasks}
    too_long = [t for t in tasks if floors[t] > window]
    if too_long:
        raise ValueError(f"window {window} is too short for task {too_long[0]} (needs {floors[too_long[0]]})")
    model = build_model(preset, vocab_size=len(tokenizer), seed=seed)
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
        now = tasks[:1] if step < FIRST_TASK_SHARE * steps else tasks
        ids, labels, text = _batch(tokenizer, enc, list(now), floors, cap, batch, rng)
        loss = _loss(model, ids, labels, text)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", length=cap)
    log = {
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "seconds": time.perf_counter() - t0,
        "settings": {
            "window": window,
            "steps": steps,
            "tasks": list(tasks),
            "batch": batch,
            "lr": lr,
            "seed": seed,
            "preset": preset,
        },
    }
    model.eval()
    with atomic_dir(output, overwrite=False, flag="output") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "retriever_log.json"), "w") as f:
            json.dump(log, f, indent=2)
    return log
