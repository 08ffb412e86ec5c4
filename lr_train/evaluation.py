"""Long-context evaluation: perplexity by position, a passkey (needle-in-a-haystack) grid, the RULER-style
synthetic tasks of ``lr_train.ruler`` and short-context retention.

All work on any causal LM of the supported families, patched or not; log-probs come from
``lk.token_logprobs`` on the last hidden states, so no ``[T, V]`` logits are held at long lengths.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import lr_kernels as lk
from lr_train import ruler


def _lm_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


@torch.no_grad()
def sequence_logprobs(
    model, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x_t | x_<t) for t = 1..L-1 of one sequence: ``input_ids [L] -> fp32 [L-1]``."""
    if input_ids.dim() != 1 or input_ids.numel() < 2:
        raise ValueError(f"input_ids must be 1-D with at least 2 tokens, got shape {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    ids = input_ids.to(device)[None]
    kwargs = {} if position_ids is None else {"position_ids": position_ids.to(device)[None]}
    hidden = model.base_model(input_ids=ids, use_cache=False, **kwargs).last_hidden_state[0]
    weight, bias = _lm_head(model)
    return lk.token_logprobs(hidden[:-1], weight, ids[0, 1:], bias=bias)


@dataclass
class PerplexityByPosition:
    length: int
    bucket_edges: list[int]  # bucket i covers target positions [edges[i], edges[i+1])
    nll: list[float]  # mean negative log-likelihood per bucket
    ppl: list[float]
    windows: int

    def table(self) -> str:
        rows = [f"{'positions':>17}  {'ppl':>10}"]
        for i, p in enumerate(self.ppl):
            rows.append(f"{self.bucket_edges[i]:>7}-{self.bucket_edges[i + 1] - 1:<9} {p:>10.2f}")
        return "\n".join(rows)


def perplexity_by_position(
    model, tokens: torch.Tensor, *, length: int, buckets: int = 8, max_windows: int = 8, progress: bool = True
) -> PerplexityByPosition:
    """Mean perplexity of the next token, bucketed by its position, over windows of ``length`` tokens.

    ``tokens`` is a 1-D stream (documents joined); it is cut into up to ``max_windows`` windows.
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D token stream, got shape {tuple(tokens.shape)}")
    if length < 2 or buckets < 1:
        raise ValueError("length must be >= 2 and buckets >= 1")
    n = min(max_windows, tokens.numel() // length)
    if n == 0:
        raise ValueError(f"tokens holds {tokens.numel()} tokens, fewer than one window of length={length}")
    edges = [round(1 + i * (length - 1) / buckets) for i in range(buckets + 1)]
    sums = torch.zeros(buckets, dtype=torch.float64)
    counts = torch.zeros(buckets, dtype=torch.float64)
    bucket_of = torch.bucketize(torch.arange(1, length), torch.tensor(edges[1:-1]), right=True)
    for w in tqdm(range(n), desc=f"ppl@{length}", disable=not progress, leave=False):
        lp = sequence_logprobs(model, tokens[w * length : (w + 1) * length]).double().cpu()
        sums.index_add_(0, bucket_of, -lp)
        counts.index_add_(0, bucket_of, torch.ones_like(lp))
    nll = (sums / counts.clamp_min(1)).tolist()
    return PerplexityByPosition(length, edges, nll, [float(torch.tensor(x).exp()) for x in nll], n)


@dataclass
class PasskeyGrid:
    lengths: list[int]
    depths: list[float]
    accuracy: list[list[float]]  # [depth][length]
    trials: int
    examples: list[dict] = field(default_factory=list)

    @property
    def mean(self) -> float:
        vals = [v for row in self.accuracy for v in row]
        return sum(vals) / len(vals)

    def table(self) -> str:
        head = "depth\\len " + " ".join(f"{n:>7}" for n in self.lengths)
        rows = [head] + [
            f"{d:>9.2f} " + " ".join(f"{a:>7.2f}" for a in row)
            for d, row in zip(self.depths, self.accuracy, strict=True)
        ]
        return "\n".join(rows)


NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def passkey_grid(
    model,
    tokenizer,
    filler: str,
    *,
    lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 4,
    digits: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> PasskeyGrid:
    """Needle-in-a-haystack accuracy: a random ``digits``-digit key hidden at each depth of filler text of
    each total length (in tokens), answered by greedy generation."""
    if not lengths or not depths or trials < 1:
        raise ValueError("lengths and depths must be non-empty and trials >= 1")
    filler_ids = tokenizer(filler, add_special_tokens=False)["input_ids"]
    if len(filler_ids) < 16:
        raise ValueError("filler text is too short to build prompts from")
    question = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    device = next(model.parameters()).device
    acc = [[0.0] * len(lengths) for _ in depths]
    examples = []
    cells = [(i, j) for i in range(len(depths)) for j in range(len(lengths))]
    for i, j in tqdm(cells, desc="passkey", disable=not progress, leave=False):
        hits = 0
        for _ in range(trials):
            key = str(rng.randrange(10 ** (digits - 1), 10**digits))
            needle = tokenizer(NEEDLE.format(key=key), add_special_tokens=False)["input_ids"]
            budget = lengths[j] - len(needle) - len(question)
            if budget < 1:
                raise ValueError(f"length {lengths[j]} is too short for the passkey prompt")
            start = rng.randrange(len(filler_ids))
            hay = [filler_ids[(start + t) % len(filler_ids)] for t in range(budget)]
            at = round(depths[i] * budget)
            prompt = hay[:at] + needle + hay[at:] + question
            ids = torch.tensor([prompt], device=device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=digits + 3,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            )
            answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            found = re.search(r"\d+", answer)
            ok = found is not None and found.group(0) == key
            hits += ok
            if len(examples) < 8:
                examples.append({"length": lengths[j], "depth": depths[i], "key": key, "answer": answer})
        acc[i][j] = hits / trials
    return PasskeyGrid(list(lengths), list(depths), acc, trials, examples)


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@torch.no_grad()
def ruler_suite(
    model,
    tokenizer,
    *,
    tasks: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float] = ruler.DEFAULT_DEPTHS,
    samples: int = 4,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Accuracy of greedy generation on the RULER-style tasks of :mod:`lr_train.ruler`, per task, depth
    and length (exact match, :func:`lr_train.ruler.score`).

    Each (task, depth, length) cell holds ``samples`` deterministic prompts of exactly ``length`` tokens
    (``ruler.task_samples``: the same for a given ``seed`` on every machine and in every run, whatever
    other cells are evaluated); they are generated ``batch_size`` at a time (default: the whole cell in
    one ``generate`` call; all prompts of a cell have the same length, so none is padded).
    ``tasks`` may hold ``all``. Returns a JSON-able dict::

        {"tasks": {task: {"lengths": [...], "depths": [...],
                          "accuracy": [[acc per length] per depth],
                          "by_length": [mean over depths per length], "mean": float}},
         "lengths": [...], "depths": [...],
         "by_length": [mean over tasks per length], "mean": float,
         "samples": n, "seed": s,
         "examples": [up to 2 per task: {"task", "length", "depth", "answer", "generated"}]}

    Raises ``ValueError`` for an unknown task, empty ``lengths`` / ``depths``, ``samples`` or
    ``batch_size`` < 1, or a length too short for a task's prompt.
    """
    tasks = ruler.parse_tasks(tasks)
    lengths, depths = [int(n) for n in lengths], [float(d) for d in depths]
    if not tasks or not lengths or not depths:
        raise ValueError("tasks, lengths and depths must be non-empty")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch = batch_size or samples
    model.eval()
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    out: dict = {"tasks": {}, "lengths": lengths, "depths": depths}
    examples: list[dict] = []
    cells = [(t, i, j) for t in tasks for i in range(len(depths)) for j in range(len(lengths))]
    acc = {t: [[0.0] * len(lengths) for _ in depths] for t in tasks}
    new_tokens = {t: ruler.max_new_tokens(tokenizer, t) for t in tasks}
    for task, i, j in tqdm(cells, desc="ruler", disable=not progress, leave=False):
        cell = ruler.task_samples(tokenizer, task, lengths[j], depths[i], samples, seed)
        hits = 0
        for b in range(0, samples, batch):
            part = cell[b : b + batch]
            ids = torch.tensor([s.input_ids for s in part], device=device)
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens[task],
                do_sample=False,
                pad_token_id=pad,
            )
            texts = tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
            for s, text in zip(part, texts, strict=True):
                hits += ruler.score(task, s.answer, text)
            # The first and the last cell of a task: its shortest and longest prompt, shallowest and deepest.
            if b == 0 and (i, j) in {(0, 0), (len(depths) - 1, len(lengths) - 1)}:
                examples.append(
                    {
                        "task": task,
                        "length": lengths[j],
                        "depth": depths[i],
                        "answer": list(part[0].answer),
                        "generated": texts[0],
                    }
                )
        acc[task][i][j] = hits / samples
    for task in tasks:
        by_length = [_mean([row[j] for row in acc[task]]) for j in range(len(lengths))]
        out["tasks"][task] = {
            "lengths": lengths,
            "depths": depths,
            "accuracy": acc[task],
            "by_length": by_length,
            "mean": _mean([v for row in acc[task] for v in row]),
        }
    out["by_length"] = [_mean([out["tasks"][t]["by_length"][j] for t in tasks]) for j in range(len(lengths))]
    out["mean"] = _mean([out["tasks"][t]["mean"] for t in tasks])
    out["samples"] = samples
    out["seed"] = seed
    out["examples"] = examples
    return out


def ruler_table(result: dict) -> str:
    """Accuracy by length (mean over depths) per task of a :func:`ruler_suite` result, and over all tasks."""
    lengths = result["lengths"]
    width = max(len("all tasks"), *(len(t) for t in result["tasks"]))
    rows = [f"{'task':<{width}} " + " ".join(f"{n:>7}" for n in lengths) + f" {'mean':>7}"]
    for task, r in result["tasks"].items():
        rows.append(
            f"{task:<{width}} " + " ".join(f"{a:>7.2f}" for a in r["by_length"]) + f" {r['mean']:>7.2f}"
        )
    rows.append(
        f"{'all tasks':<{width}} "
        + " ".join(f"{a:>7.2f}" for a in result["by_length"])
        + f" {result['mean']:>7.2f}"
    )
    return "\n".join(rows)


def wilson_interval(hits: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (95% for ``z = 1.96``); ``(0, 1)`` when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def retention(
    model,
    tokenizer,
    tokens: torch.Tensor,
    *,
    native_length: int,
    tasks: Sequence[str],
    depths: Sequence[float] = ruler.DEFAULT_DEPTHS,
    samples: int = 4,
    seed: int = 0,
    ppl_windows: int = 8,
    ruler_result: dict | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Short-context retention: how well the model still does inside the base model's native window.

    Perplexity of the next token over up to ``ppl_windows`` windows of ``native_length`` tokens of the
    plain-text stream ``tokens`` (all positions pooled), and the RULER accuracy at ``native_length``
    (mean over ``tasks`` and ``depths``). A :func:`ruler_suite` result that already holds
    ``native_length`` with the same tasks, depths, samples and seed is reused (its cells are the very
    prompts that would be generated). Returns::

        {"length": n, "perplexity": float, "nll": float, "windows": k,
         "ruler_mean": float, "ruler_by_task": {task: float}}
    """
    tasks = ruler.parse_tasks(tasks)
    ppl = perplexity_by_position(
        model, tokens, length=native_length, buckets=1, max_windows=ppl_windows, progress=progress
    )
    reusable = (
        ruler_result is not None
        and native_length in ruler_result["lengths"]
        and ruler_result["depths"] == [float(d) for d in depths]
        and ruler_result["samples"] == samples
        and ruler_result["seed"] == seed
        and all(t in ruler_result["tasks"] for t in tasks)
    )
    if not reusable:
        ruler_result = ruler_suite(
            model,
            tokenizer,
            tasks=tasks,
            lengths=[native_length],
            depths=depths,
            samples=samples,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
        )
    j = ruler_result["lengths"].index(native_length)
    by_task = {t: ruler_result["tasks"][t]["by_length"][j] for t in tasks}
    return {
        "length": native_length,
        "perplexity": ppl.ppl[0],
        "nll": ppl.nll[0],
        "windows": ppl.windows,
        "ruler_mean": _mean(list(by_task.values())),
        "ruler_by_task": by_task,
    }
