"""`python -m lr_train prepare`: raw text / jsonl / a `datasets` folder -> a prepared training set.

Inputs (any mix, in the order given):
  *.txt            one document per file (long-context training wants whole long documents)
  *.jsonl          one document per line: {"text": str} or {"input_ids": [int, ...]} (already tokenized),
                   or replay data for the anneal stage: {"prompt": str, "response": str} (optional
                   "system": str) or {"messages": [{"role": str, "content": str}, ...]}, rendered with the
                   tokenizer's chat template, or as "Role: content" blocks when it has none
  a directory      a Hugging Face `datasets` folder written by `save_to_disk` (columns as the jsonl
                   fields; a DatasetDict uses its "train" split)
Every sample starts with the tokenizer's BOS token when it has one.
Output: a folder (see lr_train/data/dataset.py) written to a temporary sibling and renamed at the end, so
a failure never leaves a half-written dataset behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lr_train.cli import fail, float_in, load_tokenizer_arg, nonnegative_int, positive_int
from lr_train.data.samples import POSITION_METHODS

TOKENIZE_BATCH = 256
ROW_FIELDS = "'text', 'input_ids', 'prompt' + 'response' or 'messages'"


class InputError(ValueError):
    """A malformed input: the message starts with file:line."""


@dataclass
class Document:
    """One input document: plain ``text``, token ``input_ids``, or a chat ``messages`` list (replay data,
    each {"role": str, "content": str}); ``source:line`` says where it came from."""

    source: str
    line: int
    text: str | None = None
    input_ids: list[int] | None = None
    messages: list[dict] | None = None


def _jsonl_documents(path: str) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            yield _row_document(row, path, lineno)


def _string_field(row: dict, name: str, where: str) -> str:
    if name not in row or row[name] is None:
        raise InputError(f"{where}: missing field '{name}'")
    if not isinstance(row[name], str):
        raise InputError(f"{where}: '{name}' must be a string, got {type(row[name]).__name__}")
    return row[name]


def _chat_document(row: dict, source: str, line: int) -> Document:
    """A prompt/response or messages row -> Document(messages=...)."""
    where = f"{source}:{line}"
    if row.get("messages") is not None:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise InputError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
            role = _string_field(m, "role", f"{where}: messages[{i}]")
            out.append({"role": role, "content": _string_field(m, "content", f"{where}: messages[{i}]")})
        return Document(source, line, messages=out)
    msgs = []
    if row.get("system") is not None:
        msgs.append({"role": "system", "content": _string_field(row, "system", where)})
    msgs.append({"role": "user", "content": _string_field(row, "prompt", where)})
    msgs.append({"role": "assistant", "content": _string_field(row, "response", where)})
    return Document(source, line, messages=msgs)


def _row_document(row: object, source: str, line: int) -> Document:
    if not isinstance(row, dict) or not any(
        row.get(k) is not None for k in ("text", "input_ids", "prompt", "response", "messages")
    ):
        raise InputError(f"{source}:{line}: expected an object with a {ROW_FIELDS} field")
    if row.get("text") is None and row.get("input_ids") is None:
        return _chat_document(row, source, line)
    if "input_ids" in row and row["input_ids"] is not None:
        ids = row["input_ids"]
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):
            raise InputError(f"{source}:{line}: 'input_ids' must be a list of non-negative ints")
        return Document(source, line, input_ids=ids)
    text = row["text"]
    if not isinstance(text, str):
        raise InputError(f"{source}:{line}: 'text' must be a string, got {type(text).__name__}")
    return Document(source, line, text=text)


def _datasets_documents(path: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError as exc:
        raise InputError(
            f"{path}: reading a `datasets` folder needs the `datasets` package (pip install datasets)"
        ) from exc
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise InputError(f"{path}: DatasetDict without a 'train' split (splits: {list(ds)})")
        ds = ds["train"]
    names = ds.column_names
    if "input_ids" in names:
        columns = ["input_ids"]
    elif "text" in names:
        columns = ["text"]
    elif "messages" in names:
        columns = ["messages"]
    elif "prompt" in names or "response" in names:
        columns = [c for c in ("system", "prompt", "response") if c in names]
    else:
        raise InputError(f"{path}: needs a {ROW_FIELDS} column, has {names}")
    row = 0
    for batch in ds.iter(batch_size=1024):
        for values in zip(*(batch[c] for c in columns), strict=True):
            row += 1
            yield _row_document(dict(zip(columns, values, strict=True)), path, row)


def iter_documents(inputs: list[str]) -> Iterator[Document]:
    """Documents of every input in order; InputError (file:line) on the first malformed one."""
    for path in inputs:
        if os.path.isdir(path):
            yield from _datasets_documents(path)
        elif path.endswith(".jsonl"):
            yield from _jsonl_documents(path)
        elif path.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                yield Document(path, 1, text=f.read())
        else:
            raise InputError(f"{path}: unsupported input (expected .txt, .jsonl or a `datasets` folder)")


def check_inputs(inputs: list[str], flag: str = "--input") -> None:
    for path in inputs:
        if not os.path.exists(path):
            raise InputError(f"{flag} {path}: no such file or folder")
        if not os.path.isdir(path) and not path.endswith((".jsonl", ".txt")):
            raise InputError(
                f"{flag} {path}: unsupported input (expected .txt, .jsonl or a `datasets` folder)"
            )


def render_chat(tokenizer, messages: list[dict], where: str = "messages") -> str:
    """The text of one conversation: the tokenizer's chat template when it has one, else blocks of
    "Role: content" (role capitalised) separated by a blank line. Special tokens the template writes
    (BOS, end-of-turn) are in the text and become their ids when it is tokenized."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception as exc:  # jinja raises its own TemplateError on roles the template refuses
            raise InputError(f"{where}: the tokenizer's chat template refused it ({exc})") from exc
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _tokenized(docs: Iterator[Document], tokenizer, vocab: int) -> Iterator[list[int]]:
    """Token ids per document (text tokenized in batches), EOS appended when the tokenizer has one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pending: list[Document] = []

    def text_of(d: Document) -> str | None:
        if d.messages is not None:
            return render_chat(tokenizer, d.messages, f"{d.source}:{d.line}")
        return d.text

    def drain() -> Iterator[list[int]]:
        texts = [text_of(d) for d in pending]
        given = [t for t in texts if t is not None]
        encoded = iter(tokenizer(given, add_special_tokens=False)["input_ids"]) if given else iter(())
        for d, text in zip(pending, texts, strict=True):
            ids = next(encoded) if text is not None else d.input_ids
            if d.input_ids is not None and ids and max(ids) >= vocab:
                raise InputError(
                    f"{d.source}:{d.line}: token id {max(ids)} is outside the tokenizer's {vocab} ids"
                )
            yield list(ids) + ([eos] if eos is not None and ids else [])
        pending.clear()

    for doc in docs:
        pending.append(doc)
        if len(pending) >= TOKENIZE_BATCH:
            yield from drain()
    yield from drain()


def _parse_keep_prefix(value: str) -> int | str:
    if value == "random":
        return "random"
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'random' or an int >= 0, got {value!r}") from None
    if k < 0:
        raise argparse.ArgumentTypeError(f"expected 'random' or an int >= 0, got {value!r}")
    return k


def add_parser(sub):
    p = sub.add_parser(
        "prepare",
        help="text / jsonl / a datasets folder -> a training set with LongRecipe (or baseline) positions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tokenizer", required=True, help="local path or hub name for AutoTokenizer, or `toy`")
    p.add_argument(
        "--input", nargs="+", required=True, metavar="FILE", help=".txt, .jsonl or `datasets` folders"
    )
    p.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--positions", choices=POSITION_METHODS, default="longrecipe")
    p.add_argument("--train-length", type=positive_int, required=True, help="tokens per sample (e.g. 24576)")
    p.add_argument("--target-length", type=positive_int, required=True, help="position window (e.g. 81920)")
    p.add_argument(
        "--drop-ratio",
        type=float_in(0.0, 1.0),
        default=None,
        help="longrecipe: drop share of plain segments (0.5)",
    )
    p.add_argument(
        "--keep-prefix",
        type=_parse_keep_prefix,
        default=None,
        help="longrecipe: 'random' (default) or K tokens",
    )
    p.add_argument(
        "--impactful",
        default=None,
        help="longrecipe: mask JSON from `analyze` (default: digit tokens); `none` keeps sentences at random "
        "(the paper's random-selection ablation)",
    )
    p.add_argument(
        "--min-length",
        type=positive_int,
        default=None,
        help="keep a final partial sample of at least this many tokens (default: --train-length)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _settings(args):
    from lr_train.data.samples import PositionSettings

    if args.positions != "longrecipe":
        for flag, value in (
            ("--drop-ratio", args.drop_ratio),
            ("--keep-prefix", args.keep_prefix),
            ("--impactful", args.impactful),
        ):
            if value is not None:
                raise ValueError(f"{flag} applies to --positions longrecipe only")
    if args.target_length < args.train_length:
        raise ValueError(
            f"--target-length {args.target_length} must be >= --train-length {args.train_length}"
        )
    if args.target_length >= 2**31:
        raise ValueError(f"--target-length must be < 2**31 (positions are int32), got {args.target_length}")
    if args.min_length is not None and args.min_length > args.train_length:
        raise ValueError(f"--min-length {args.min_length} must be <= --train-length {args.train_length}")
    if args.seed >= 2**63:
        raise ValueError(f"--seed must be < 2**63, got {args.seed}")
    return PositionSettings(
        method=args.positions,
        train_length=args.train_length,
        target_length=args.target_length,
        drop_ratio=0.5 if args.drop_ratio is None else args.drop_ratio,
        keep_prefix="random" if args.keep_prefix is None else args.keep_prefix,
        seed=args.seed,
        min_length=args.min_length,
    )


def prepare(args) -> dict:
    """Run the whole preparation; returns the manifest. Raises ValueError / InputError on bad input."""
    from tqdm import tqdm

    from lr_train.checkpoint import atomic_dir, check_output
    from lr_train.data import masks
    from lr_train.data.dataset import PreparedDatasetWriter
    from lr_train.data.samples import SampleBuilder

    settings = _settings(args)
    check_inputs(args.input)
    check_output(args.output, overwrite=args.overwrite, flag="--output")
    tokenizer = load_tokenizer_arg(args.tokenizer, "--tokenizer")
    vocab = masks.vocab_size(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and settings.train_length < 2:
        raise ValueError("--train-length must be >= 2: every sample starts with the tokenizer's BOS token")
    delim = impactful = None
    if settings.selects:
        texts = masks.token_texts(tokenizer)
        delim = masks.delimiter_mask(tokenizer, texts=texts)
        import torch

        if args.impactful == "none":  # no token analysis: every sentence is dropped with --drop-ratio
            impactful = torch.zeros(vocab, dtype=torch.bool)
        elif args.impactful:
            impactful = masks.load_impactful_mask(args.impactful, vocab)
        else:
            impactful = masks.digit_mask(tokenizer, texts=texts)

    start = time.perf_counter()
    with atomic_dir(args.output, overwrite=args.overwrite, flag="--output") as tmp:
        writer = PreparedDatasetWriter(tmp)
        builder = SampleBuilder(settings, delim, impactful, bos_token_id=bos)
        span_sum = 0.0
        bins = np.zeros(100, dtype=bool)
        seg_in_samples = 0

        def emit(samples) -> None:
            nonlocal span_sum, seg_in_samples
            for s in samples:
                writer.write(s.input_ids, s.position_ids)
                span_sum += (int(s.position_ids[-1]) + 1) / settings.target_length
                bins[(s.position_ids * 100) // settings.target_length] = True
                seg_in_samples += s.n_segments

        try:
            with tqdm(
                desc="prepare", unit="doc", disable=args.quiet, file=sys.stderr, dynamic_ncols=True
            ) as bar:
                for ids in _tokenized(iter_documents(args.input), tokenizer, vocab):
                    emit(builder.add_document(ids))
                    bar.update(1)
                    if builder.stats.documents % 64 == 0:
                        bar.set_postfix(
                            tokens=builder.stats.input_tokens, samples=writer.n_samples, refresh=False
                        )
                emit(builder.finish())
        except BaseException:
            writer.abort()
            raise
        st = builder.stats
        if st.documents == 0:
            raise InputError(f"--input {' '.join(args.input)} holds no documents")
        if writer.n_samples == 0:
            kept = "kept after selection" if settings.selects else "in all"
            raise InputError(
                f"--input gave 0 samples: {st.documents} documents, {st.kept_tokens} tokens {kept}, fewer "
                f"than one sample of --train-length {settings.train_length} (add text, or lower "
                "--min-length or --train-length)"
            )
        elapsed = time.perf_counter() - start
        stats = {
            **st.to_dict(),
            "samples": writer.n_samples,
            "sample_tokens": writer.n_tokens,
            "kept_token_share": st.kept_tokens / st.input_tokens if st.input_tokens else 0.0,
            "impactful_segment_share": st.impactful_segments / st.segments if st.segments else None,
            "mean_segment_length": (
                (writer.n_tokens - (writer.n_samples if bos is not None else 0)) / seg_in_samples
            )
            if settings.selects and seg_in_samples
            else None,
            "mean_position_span": span_sum / writer.n_samples,
            "window_coverage": float(bins.mean()),
            "seconds": round(elapsed, 3),
            "input_tokens_per_second": round(st.input_tokens / elapsed) if elapsed > 0 else None,
        }
        import lr_kernels

        manifest = writer.close(
            {
                "settings": settings.to_dict(),
                "tokenizer": args.tokenizer,
                "vocab_size": vocab,
                "bos_token_id": bos,
                "impactful": args.impactful or ("digits" if settings.selects else None),
                "inputs": [os.path.abspath(p) for p in args.input],
                "stats": stats,
                "created_by": f"lr_train prepare {lr_kernels.__version__}",
            }
        )
    return manifest


def _summary(manifest: dict, output: str) -> str:
    s, st = manifest["settings"], manifest["stats"]
    lines = [
        f"prepared {output}",
        f"  positions       {s['method']}  train {s['train_length']}  target {s['target_length']}  "
        f"seed {s['seed']}",
        f"  documents       {st['documents']}",
        f"  input tokens    {st['input_tokens']}",
        f"  tokens kept     {st['kept_tokens']} ({100 * st['kept_token_share']:.1f}%)",
        f"  samples         {st['samples']} ({st['sample_tokens']} tokens)",
    ]
    if st["impactful_segment_share"] is not None:
        lines += [
            f"  segments        {st['segments']} ({st['kept_segments']} kept, "
            f"{100 * st['impactful_segment_share']:.1f}% impactful)",
            f"  mean segment    {st['mean_segment_length']:.1f} tokens" if st["mean_segment_length"] else "",
        ]
    lines += [
        f"  position span   {100 * st['mean_position_span']:.1f}% of the window on average "
        "(last position + 1)",
        f"  window coverage {100 * st['window_coverage']:.0f}% of 100 equal bins hold a position",
        f"  throughput      {st['input_tokens_per_second']} input tokens/s ({st['seconds']} s)",
    ]
    return "\n".join(x for x in lines if x)


def run(args) -> int:
    try:
        manifest = prepare(args)
    except (ValueError, OSError) as exc:
        return fail("prepare", exc)
    print(_summary(manifest, args.output))
    return 0
