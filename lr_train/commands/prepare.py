"""`python -m lr_train prepare`: raw text / jsonl / a `datasets` folder -> a prepared training set.

Inputs (any mix, in the order given):
  *.txt            one document per file (long-context training wants whole long documents)
  *.jsonl          one document per line: {"text": str} or {"input_ids": [int, ...]} (already tokenized)
  a directory      a Hugging Face `datasets` folder written by `save_to_disk` (column `text` or
                   `input_ids`; a DatasetDict uses its "train" split)
Output: a folder (see lr_train/data/dataset.py) written to a temporary sibling and renamed at the end, so
a failure never leaves a half-written dataset behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lr_train.data.samples import POSITION_METHODS
from lr_train.recipe import load_tokenizer

TOKENIZE_BATCH = 256


class InputError(ValueError):
    """A malformed input: the message starts with file:line."""


@dataclass
class Document:
    source: str
    line: int
    text: str | None = None
    input_ids: list[int] | None = None


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


def _row_document(row: object, source: str, line: int) -> Document:
    if not isinstance(row, dict) or not ("text" in row or "input_ids" in row):
        raise InputError(f"{source}:{line}: expected an object with a 'text' or 'input_ids' field")
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
    if "input_ids" not in ds.column_names and "text" not in ds.column_names:
        raise InputError(f"{path}: needs a 'text' or 'input_ids' column, has {ds.column_names}")
    column = "input_ids" if "input_ids" in ds.column_names else "text"
    row = 0
    for batch in ds.iter(batch_size=1024):
        for value in batch[column]:
            row += 1
            yield _row_document({column: value}, path, row)


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


def check_inputs(inputs: list[str]) -> None:
    for path in inputs:
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file or folder")


def _tokenized(docs: Iterator[Document], tokenizer, vocab: int) -> Iterator[list[int]]:
    """Token ids per document (text tokenized in batches), EOS appended when the tokenizer has one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pending: list[Document] = []

    def drain() -> Iterator[list[int]]:
        texts = [d.text for d in pending if d.text is not None]
        encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
        for d in pending:
            ids = next(encoded) if d.text is not None else d.input_ids
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
    p.add_argument("--train-length", type=int, required=True, help="tokens per sample (e.g. 24576)")
    p.add_argument("--target-length", type=int, required=True, help="position window (e.g. 81920)")
    p.add_argument(
        "--drop-ratio", type=float, default=None, help="longrecipe: drop share of plain segments (0.5)"
    )
    p.add_argument(
        "--keep-prefix",
        type=_parse_keep_prefix,
        default=None,
        help="longrecipe: 'random' (default) or K tokens",
    )
    p.add_argument(
        "--impactful", default=None, help="longrecipe: mask JSON from `analyze` (default: digit tokens)"
    )
    p.add_argument(
        "--min-length", type=int, default=None, help="keep a final partial sample of at least this many"
    )
    p.add_argument("--seed", type=int, default=0)
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

    from lr_train.data import masks
    from lr_train.data.dataset import PreparedDatasetWriter
    from lr_train.data.samples import SampleBuilder

    settings = _settings(args)
    check_inputs(args.input)
    output = os.path.abspath(args.output)
    if os.path.exists(output) and not args.overwrite:
        raise ValueError(f"--output {args.output} exists; pass --overwrite to replace it")
    tokenizer = load_tokenizer(args.tokenizer)
    vocab = masks.vocab_size(tokenizer)
    delim = impactful = None
    if settings.selects:
        texts = masks.token_texts(tokenizer)
        delim = masks.delimiter_mask(tokenizer, texts=texts)
        impactful = (
            masks.load_impactful_mask(args.impactful, vocab)
            if args.impactful
            else masks.digit_mask(tokenizer, texts=texts)
        )

    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    start = time.perf_counter()
    try:
        writer = PreparedDatasetWriter(tmp)
        builder = SampleBuilder(settings, delim, impactful)
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

        bar = tqdm(desc="prepare", unit="doc", disable=args.quiet, file=sys.stderr, dynamic_ncols=True)
        for ids in _tokenized(iter_documents(args.input), tokenizer, vocab):
            emit(builder.add_document(ids))
            bar.update(1)
            if builder.stats.documents % 64 == 0:
                bar.set_postfix(tokens=builder.stats.input_tokens, samples=writer.n_samples, refresh=False)
        emit(builder.finish())
        bar.close()
        elapsed = time.perf_counter() - start
        st = builder.stats
        stats = {
            **st.to_dict(),
            "samples": writer.n_samples,
            "sample_tokens": writer.n_tokens,
            "kept_token_share": st.kept_tokens / st.input_tokens if st.input_tokens else 0.0,
            "impactful_segment_share": st.impactful_segments / st.segments if st.segments else None,
            "mean_segment_length": (writer.n_tokens / seg_in_samples)
            if settings.selects and seg_in_samples
            else None,
            "mean_position_span": span_sum / writer.n_samples if writer.n_samples else 0.0,
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
                "impactful": args.impactful or ("digits" if settings.selects else None),
                "inputs": [os.path.abspath(p) for p in args.input],
                "stats": stats,
                "created_by": f"lr_train prepare {lr_kernels.__version__}",
            }
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset is an ordinary folder
        if os.path.exists(output):
            shutil.rmtree(output)
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    print(_summary(manifest, args.output))
    return 0
