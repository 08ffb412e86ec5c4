"""`python -m lr_train analyze`: LongRecipe's impactful-token analysis between two models.

For every scored position t of the input text, Δ(t) = log p_long(x_t | x<t) − log p_base(x_t | x<t): how
much long-context training raised the probability of the observed token. Log-probs come from
``lk.token_logprobs`` on the last hidden state and the LM head, so the [T, V] logits are never built.

Windows: each document is cut into windows of ``--max-length`` tokens (default: the paper's training
length, 24,576, capped at the --long model's window), each starting with the tokenizer's BOS when it has
one, so the 4k-20k positions the paper studies are scored. Before scoring, the command prints how many
tokens, windows and forward passes the run takes; the progress bar then shows the time left.

Tokens are aggregated by id and by kind (number, capitalised word, punctuation, function word, other; see
``lr_train.data.masks.token_class``), overall and per position range. A token id is written to the mask
when it occurs at least ``--min-count`` times and its mean Δ reaches the threshold of the top
``--top-fraction`` of all per-position Δ. ``prepare --impactful mask.json`` reads the result.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from lr_train.cli import fail, float_in, int_at_least, load_tokenizer_arg, positive_int

# The paper's training length for an 80k window: windows this long cover the 4k-20k range it analyses.
DEFAULT_WINDOW = 24576


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
        "--top-fraction",
        type=float_in(0.0, 1.0, low_open=True, high_open=True),
        default=0.2,
        help="share of positions counted as top Δ (0.2)",
    )
    p.add_argument(
        "--min-count", type=positive_int, default=2, help="occurrences a token id needs to enter the mask"
    )
    p.add_argument(
        "--max-length",
        type=int_at_least(2),
        default=None,
        help=f"tokens per scoring window, longer documents are split (default: {DEFAULT_WINDOW}, at most "
        "the --long model's window)",
    )
    p.add_argument("--max-documents", type=positive_int, default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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


def score_windows(base, long, windows: Iterable[torch.Tensor], *, progress: bool = False) -> Scores:
    """Δ for every scored position of every window (int64 [n] each, n >= 2)."""
    from tqdm import tqdm

    targets, deltas, positions = [], [], []
    total = len(windows) if hasattr(windows, "__len__") else None
    for ids in tqdm(
        windows, total=total, desc="analyze", unit="window", disable=not progress, file=sys.stderr
    ):
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
        # The paper's check that numerals dominate the top Δ at every distance: four equal position ranges,
        # each with the kinds' shares of its top-Δ tokens.
        pos = scores.positions.numpy()
        edges = np.linspace(0, pos.max() + 1, 5).astype(np.int64)
        for lo, hi in itertools.pairwise(edges):
            sel = (pos >= lo) & (pos < hi) & top
            shares = {
                name: (float((cls_of_pos[sel] == c).mean()) if sel.any() else None)
                for c, name in enumerate(TOKEN_CLASSES)
            }
            by_position.append(
                {"positions": [int(lo), int(hi)], "top_count": int(sel.sum()), "share_of_top": shares}
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
        "Kinds of token (from the decoded text: number = holds a digit, capitalised = starts upper-case, "
        "the proxy for names; function_word = pronoun, determiner, auxiliary, conjunction, adposition, ...):",
        "",
        "| kind | positions | share of all | share of top | mean Δ |",
        "|---|---|---|---|---|",
    ]
    for name, c in result["classes"].items():
        mean = "–" if c["mean_delta"] is None else f"{c['mean_delta']:+.4f}"
        lines.append(
            f"| {name} | {c['count']} | {100 * c['share_of_all']:.1f}% "
            f"| {100 * c['share_of_top']:.1f}% | {mean} |"
        )
    if result["by_position"]:
        kinds = list(result["classes"])
        lines += [
            "",
            "Share of each kind among the top-Δ tokens, by position in the window:",
            "",
            "| positions | top-Δ tokens | " + " | ".join(kinds) + " |",
            "|---|---|" + "---|" * len(kinds),
        ]
        for b in result["by_position"]:
            shares = [
                "–" if b["share_of_top"][k] is None else f"{100 * b['share_of_top'][k]:.1f}%" for k in kinds
            ]
            lines.append(
                f"| {b['positions'][0]}–{b['positions'][1] - 1} | {b['top_count']} | "
                + " | ".join(shares)
                + " |"
            )
    lines += ["", "| token | id | count | mean Δ |", "|---|---|---|---|"]
    for tok in result["top_tokens"][:15]:
        lines.append(f"| {tok['text']!r} | {tok['id']} | {tok['count']} | {tok['mean_delta']:+.4f} |")
    return "\n".join(lines) + "\n"


def windows_of(
    inputs: list[str], tokenizer, vocab: int, max_length: int, max_documents: int | None
) -> tuple[list[torch.Tensor], int]:
    """The scoring windows (int64 [n], 2 <= n <= ``max_length``) of every document, and the number of
    documents read. Each window starts with the tokenizer's BOS (when it has one), as training samples do."""
    from lr_train.commands.prepare import InputError, iter_documents, render_chat

    bos = getattr(tokenizer, "bos_token_id", None)
    step = max_length - (bos is not None)
    windows, n = [], 0
    for doc in iter_documents(inputs):
        if max_documents is not None and n >= max_documents:
            break
        n += 1
        if doc.input_ids is not None:
            ids = doc.input_ids
        else:
            text = (
                doc.text
                if doc.messages is None
                else render_chat(tokenizer, doc.messages, f"{doc.source}:{doc.line}")
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids and max(ids) >= vocab:
            raise InputError(
                f"{doc.source}:{doc.line}: token id {max(ids)} is outside the model's {vocab} ids"
            )
        for i in range(0, len(ids), step):
            chunk = ids[i : i + step]
            if bos is not None and chunk[0] != bos:
                chunk = [bos, *chunk]
            if len(chunk) >= 2:
                windows.append(torch.tensor(chunk, dtype=torch.int64))
    return windows, n


def plan_text(windows: list[torch.Tensor], documents: int, max_length: int, model) -> str:
    """One line saying what scoring will cost: tokens, windows, forward passes and the arithmetic."""
    from lr_train.models import model_head_dim

    tokens = sum(int(w.numel()) for w in windows)
    cfg = model.config
    width = int(cfg.num_attention_heads) * model_head_dim(cfg)
    # Per forward: ~2 FLOP per parameter per token, plus causal attention's scores and weighted sum,
    # ~2 * layers * width * n^2 for a window of n tokens (at 24k tokens this is ~40% more for 8B models).
    params = sum(p.numel() for p in model.parameters())
    per_model = 2 * params * tokens + 2 * int(cfg.num_hidden_layers) * width * sum(
        int(w.numel()) ** 2 for w in windows
    )
    return (
        f"analyze: {documents} documents, {tokens} tokens in {len(windows)} windows of <= {max_length} "
        f"tokens: {2 * len(windows)} forward passes (base + long), about {2 * per_model / 1e12:.3g} TFLOP"
    )


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
    from lr_train.checkpoint import atomic_write_text, check_output
    from lr_train.commands.prepare import check_inputs
    from lr_train.data.masks import save_impactful_mask, token_texts

    check_inputs(args.input)
    report_path = os.path.splitext(args.output)[0] + ".report.md"
    check_output(args.output, overwrite=args.overwrite, flag="--output", kind="file")
    check_output(report_path, overwrite=args.overwrite, flag="--output's report", kind="file")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer_arg(args.tokenizer or args.base, "--tokenizer" if args.tokenizer else "--base")
    base = _load_model(args.base, device, args.dtype)
    long = _load_model(args.long, device, args.dtype)
    vocab = base.get_output_embeddings().weight.shape[0]
    if long.get_output_embeddings().weight.shape[0] != vocab:
        raise ValueError("--base and --long have LM heads of different vocabulary sizes")
    texts = token_texts(tokenizer)
    if len(texts) > vocab:
        raise ValueError(f"the tokenizer has {len(texts)} ids, more than the models' {vocab}")
    texts = texts + [""] * (vocab - len(texts))  # padded LM-head rows no text maps to

    max_length = args.max_length or min(DEFAULT_WINDOW, int(long.config.max_position_embeddings))
    windows, documents = windows_of(args.input, tokenizer, vocab, max_length, args.max_documents)
    print(plan_text(windows, documents, max_length, long), file=sys.stderr, flush=True)
    scores = score_windows(base, long, windows, progress=not args.quiet)
    result = aggregate(scores, texts, args.top_fraction, args.min_count)
    result["max_length"] = max_length
    # The mask covers the tokenizer's ids (what `prepare` sees); padded LM-head rows never occur in text.
    result["impactful_token_ids"] = [i for i in result["impactful_token_ids"] if i < len(tokenizer)]
    save_impactful_mask(
        args.output,
        result["impactful_token_ids"],
        len(tokenizer),
        overwrite=args.overwrite,
        base=args.base,
        long=args.long,
        **{k: v for k, v in result.items() if k != "impactful_token_ids"},
    )
    text = report(result, args.base, args.long)
    atomic_write_text(report_path, text, overwrite=args.overwrite, flag="--output's report")
    result["report"] = text
    return result


def run(args) -> int:
    try:
        result = analyze(args)
    except (ValueError, OSError) as exc:
        return fail("analyze", exc)
    print(result["report"], end="")
    print(f"wrote {args.output}")
    return 0
