"""`python -m lr_train analyze`: LongRecipe's impactful-token analysis between two models.

For every scored position t of the input text, Δ(t) = log p_long(x_t | x<t) − log p_base(x_t | x<t): how
much long-context training raised the probability of the observed token. Log-probs come from
``lk.token_logprobs`` on the last hidden state and the LM head, so the [T, V] logits are never built.

Tokens are aggregated by id and by coarse class (digit, punctuation, word, other). A token id is written
to the mask when it occurs at least ``--min-count`` times and its mean Δ reaches the threshold of the top
``--top-fraction`` of all per-position Δ. ``prepare --impactful mask.json`` reads the result.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


def add_parser(sub):
    p = sub.add_parser(
        "analyze",
        help="impactful-token analysis: per-token log-prob change between a base and a long-context model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", required=True, help="base model (path or hub name)")
    p.add_argument("--long", required=True, help="long-context-trained model (same tokenizer)")
    p.add_argument(
        "--input", nargs="+", required=True, metavar="FILE", help=".txt, .jsonl or `datasets` folders"
    )
    p.add_argument("--output", required=True, help="mask JSON to write (a .report.md is written beside it)")
    p.add_argument(
        "--tokenizer", default=None, help="default: the --base model's tokenizer; `toy` for the toy one"
    )
    p.add_argument(
        "--top-fraction", type=float, default=0.2, help="share of positions counted as top Δ (0.2)"
    )
    p.add_argument("--min-count", type=int, default=2, help="occurrences a token id needs to enter the mask")
    p.add_argument(
        "--max-length", type=int, default=4096, help="tokens per scoring window (longer docs split)"
    )
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)
    return p


@dataclass
class Scores:
    """targets int64 [N] (the scored tokens), delta fp32 [N] (log p_long − log p_base) and, optionally,
    positions int64 [N] (each token's position inside its window, for the by-position breakdown)."""

    targets: torch.Tensor
    delta: torch.Tensor
    positions: torch.Tensor | None = None


def _backbone_and_head(model):
    backbone = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if backbone is None or head is None:
        raise ValueError(
            f"{type(model).__name__}: needs a decoder backbone and an LM head (a *ForCausalLM model)"
        )
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return backbone, head, softcap


@torch.inference_mode()
def token_logprobs_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    """fp32 [n-1]: log p(input_ids[t] | input_ids[:t]) for t = 1..n-1 of one window input_ids [n]."""
    import lr_kernels as lk

    backbone, head, softcap = _backbone_and_head(model)
    device = head.weight.device
    ids = input_ids.to(device)[None]
    hidden = backbone(input_ids=ids).last_hidden_state[0, :-1]
    return (
        lk.token_logprobs(hidden, head.weight, ids[0, 1:], bias=head.bias, logit_softcap=softcap)
        .float()
        .cpu()
    )


def score_windows(base, long, windows: Iterator[torch.Tensor]) -> Scores:
    """Δ for every scored position of every window (int64 [n] each, n >= 2)."""
    targets, deltas, positions = [], [], []
    for ids in windows:
        if ids.numel() < 2:
            continue
        deltas.append(token_logprobs_of(long, ids) - token_logprobs_of(base, ids))
        targets.append(ids[1:].cpu())
        positions.append(torch.arange(1, ids.numel()))
    if not targets:
        raise ValueError("--input holds no window of at least 2 tokens to score")
    return Scores(torch.cat(targets), torch.cat(deltas), torch.cat(positions))


def aggregate(scores: Scores, texts: list[str], top_fraction: float, min_count: int) -> dict:
    """Per-id and per-class statistics plus the impactful ids (see the module docstring for the rule)."""
    from lr_train.data.masks import TOKEN_CLASSES, token_class

    vocab = len(texts)
    t = scores.targets.numpy()
    d = scores.delta.double().numpy()
    threshold = float(np.quantile(d, 1.0 - top_fraction))
    top = d >= threshold
    count = np.bincount(t, minlength=vocab)
    total = np.bincount(t, weights=d, minlength=vocab)
    top_count = np.bincount(t[top], minlength=vocab)
    mean = np.divide(total, count, out=np.full(vocab, -np.inf), where=count > 0)
    impactful = np.nonzero((count >= min_count) & (mean >= threshold))[0]

    classes = np.array([TOKEN_CLASSES.index(token_class(x)) for x in texts])
    cls_of_pos = classes[t]
    per_class = {}
    for c, name in enumerate(TOKEN_CLASSES):
        sel = cls_of_pos == c
        per_class[name] = {
            "count": int(sel.sum()),
            "mean_delta": float(d[sel].mean()) if sel.any() else None,
            "share_of_all": float(sel.mean()),
            "share_of_top": float((sel & top).sum() / max(int(top.sum()), 1)),
        }
    by_position = []
    if scores.positions is not None:
        # The paper's check that numerals dominate the top Δ at every distance: four equal position ranges.
        pos = scores.positions.numpy()
        edges = np.linspace(0, pos.max() + 1, 5).astype(np.int64)
        digit = TOKEN_CLASSES.index("digit")
        for lo, hi in itertools.pairwise(edges):
            sel = (pos >= lo) & (pos < hi) & top
            by_position.append(
                {
                    "positions": [int(lo), int(hi)],
                    "top_count": int(sel.sum()),
                    "digit_share_of_top": float((cls_of_pos[sel] == digit).mean()) if sel.any() else None,
                }
            )
    order = np.argsort(-np.where(count >= min_count, mean, -np.inf))
    top_tokens = [
        {
            "id": int(i),
            "text": texts[i],
            "count": int(count[i]),
            "mean_delta": float(mean[i]),
            "top_count": int(top_count[i]),
        }
        for i in order[:40]
        if count[i] >= min_count
    ]
    return {
        "positions_scored": len(t),
        "top_fraction": top_fraction,
        "threshold": threshold,
        "min_count": min_count,
        "impactful_token_ids": impactful.tolist(),
        "classes": per_class,
        "by_position": by_position,
        "top_tokens": top_tokens,
    }


def report(result: dict, base: str, long: str) -> str:
    lines = [
        "# Impactful-token analysis",
        "",
        f"base `{base}`, long `{long}`: {result['positions_scored']} positions scored; "
        f"Δ threshold of the top "
        f"{100 * result['top_fraction']:.0f}% = {result['threshold']:.4f}; "
        f"{len(result['impactful_token_ids'])} token ids in the mask (min count {result['min_count']}).",
        "",
        "| class | positions | share of all | share of top | mean Δ |",
        "|---|---|---|---|---|",
    ]
    for name, c in result["classes"].items():
        mean = "–" if c["mean_delta"] is None else f"{c['mean_delta']:+.4f}"
        lines.append(
            f"| {name} | {c['count']} | {100 * c['share_of_all']:.1f}% "
            f"| {100 * c['share_of_top']:.1f}% | {mean} |"
        )
    if result["by_position"]:
        lines += ["", "| positions | top-Δ tokens | digit share of top |", "|---|---|---|"]
        for b in result["by_position"]:
            share = "–" if b["digit_share_of_top"] is None else f"{100 * b['digit_share_of_top']:.1f}%"
            lines.append(f"| {b['positions'][0]}–{b['positions'][1] - 1} | {b['top_count']} | {share} |")
    lines += ["", "| token | id | count | mean Δ |", "|---|---|---|---|"]
    for tok in result["top_tokens"][:15]:
        lines.append(f"| {tok['text']!r} | {tok['id']} | {tok['count']} | {tok['mean_delta']:+.4f} |")
    return "\n".join(lines) + "\n"


def _windows(inputs: list[str], tokenizer, vocab: int, max_length: int, max_documents: int | None):
    from lr_train.commands.prepare import InputError, iter_documents

    for n, doc in enumerate(iter_documents(inputs)):
        if max_documents is not None and n >= max_documents:
            return
        ids = (
            doc.input_ids if doc.text is None else tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        )
        if ids and max(ids) >= vocab:
            raise InputError(
                f"{doc.source}:{doc.line}: token id {max(ids)} is outside the model's {vocab} ids"
            )
        t = torch.tensor(ids, dtype=torch.int64)
        yield from t.split(max_length)


def _load_model(path: str, device: str, dtype: str):
    from transformers import AutoModelForCausalLM

    torch_dtype = {
        "auto": None,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[dtype]
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model.to(device).eval()


def analyze(args) -> dict:
    from lr_train.commands.prepare import check_inputs
    from lr_train.data.masks import save_impactful_mask, token_texts
    from lr_train.recipe import load_tokenizer

    if not 0.0 < args.top_fraction < 1.0:
        raise ValueError(f"--top-fraction must lie in (0, 1), got {args.top_fraction}")
    if args.min_count < 1 or args.max_length < 2:
        raise ValueError("--min-count must be >= 1 and --max-length >= 2")
    if os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"--output {args.output} exists; pass --overwrite to replace it")
    check_inputs(args.input)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.tokenizer or args.base)
    base = _load_model(args.base, device, args.dtype)
    long = _load_model(args.long, device, args.dtype)
    vocab = base.get_output_embeddings().weight.shape[0]
    if long.get_output_embeddings().weight.shape[0] != vocab:
        raise ValueError("--base and --long have LM heads of different vocabulary sizes")
    texts = token_texts(tokenizer)
    if len(texts) > vocab:
        raise ValueError(f"the tokenizer has {len(texts)} ids, more than the models' {vocab}")
    texts = texts + [""] * (vocab - len(texts))  # padded LM-head rows no text maps to

    scores = score_windows(
        base, long, _windows(args.input, tokenizer, vocab, args.max_length, args.max_documents)
    )
    result = aggregate(scores, texts, args.top_fraction, args.min_count)
    # The mask covers the tokenizer's ids (what `prepare` sees); padded LM-head rows never occur in text.
    result["impactful_token_ids"] = [i for i in result["impactful_token_ids"] if i < len(tokenizer)]
    save_impactful_mask(
        args.output,
        result["impactful_token_ids"],
        len(tokenizer),
        base=args.base,
        long=args.long,
        **{k: v for k, v in result.items() if k != "impactful_token_ids"},
    )
    text = report(result, args.base, args.long)
    with open(os.path.splitext(args.output)[0] + ".report.md", "w", encoding="utf-8") as f:
        f.write(text)
    result["report"] = text
    return result


def run(args) -> int:
    try:
        result = analyze(args)
    except (ValueError, OSError) as exc:
        print(f"analyze: error: {exc}", file=sys.stderr)
        return 2
    print(result["report"], end="")
    print(f"wrote {args.output}")
    return 0
