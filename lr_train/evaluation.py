"""Long-context evaluation: perplexity by position and a passkey (needle-in-a-haystack) grid.

Both work on any causal LM of the supported families, patched or not; log-probs come from
``lk.token_logprobs`` on the last hidden states, so no ``[T, V]`` logits are held at long lengths.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import lr_kernels as lk


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
