"""Per-vocabulary token masks derived from the tokenizer (never hard-coded ids) or from an analysis file."""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence

import torch

SENTENCE_END = (".", "!", "?")
# The kinds `analyze` reports impactful tokens by (the paper's breakdown: numerals, pronouns/auxiliaries,
# conjunctions/adpositions, ...), judged from a token's decoded text alone; see ``token_class``.
TOKEN_CLASSES = ("number", "capitalised", "punctuation", "function_word", "other")
# English closed-class words: pronouns, determiners, auxiliaries and modals, conjunctions, adpositions,
# particles. Lower case; a token matches when its stripped, lower-cased text is one of them.
_FUNCTION_WORDS_TEXT = """
    i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its
    itself we us our ours ourselves they them their theirs themselves this that these those who whom whose
    which what whatever whoever one ones
    a an the some any no every each either neither both all few many much more most several such other
    another own same
    be am is are was were been being have has had having do does did doing done will would shall should
    can could may might must ought 's 're 've 'd 'll 'm n't not
    and or but nor so yet for because although though while whereas if unless until since than that
    whether as once
    of in on at by with from to into onto upon about above below over under between among through during
    before after against without within along across behind beyond near toward towards around off out
    up down via per despite except like
    there here then now also too very just only even still again ever never not
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())
MASK_FORMAT = "lr_train.impactful_mask"
MASK_VERSION = 1


def vocab_size(tokenizer) -> int:
    """Number of token ids the tokenizer can produce (base vocabulary plus added tokens)."""
    return len(tokenizer)


def token_texts(tokenizer) -> list[str]:
    """The decoded text of every token id on its own, index = id (byte-level pieces decode to '' or '�')."""
    return tokenizer.batch_decode([[i] for i in range(vocab_size(tokenizer))], skip_special_tokens=False)


def is_delimiter_text(text: str) -> bool:
    """A token ends a sentence when its text (trailing spaces ignored) ends with . ! ? or holds a newline."""
    return "\n" in text or text.rstrip(" \t").endswith(SENTENCE_END)


def is_digit_text(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


def token_class(text: str) -> str:
    """The kind of a token, from its decoded text (one of ``TOKEN_CLASSES``), checked in this order:

    - ``number``: holds a digit ("7", " 1999", "3rd");
    - ``punctuation``: only punctuation / symbols once whitespace is stripped (".", " ,", "$");
    - ``function_word``: stripped and lower-cased, one of ``FUNCTION_WORDS`` (" the", "And", " of");
    - ``capitalised``: starts with an upper-case letter (" Ada", "Paris"): the proxy for named entities —
      a single token cannot tell a name from a sentence-initial word, so those count too;
    - ``other``: everything else (lower-case content words, word pieces, whitespace, byte fragments).
    """
    if is_digit_text(text):
        return "number"
    core = text.strip()
    if not core:
        return "other"
    if all(unicodedata.category(ch)[0] in "PS" for ch in core):
        return "punctuation"
    if core.lower() in FUNCTION_WORDS:
        return "function_word"
    if core[0].isupper():
        return "capitalised"
    return "other"


def delimiter_mask(
    tokenizer, *, include_eos: bool = True, texts: Sequence[str] | None = None
) -> torch.Tensor:
    """bool [V]: token ids that end a segment (". ! ?" at the end of the text, or a newline), plus EOS.

    ``texts`` (from ``token_texts``) saves decoding the vocabulary twice.
    """
    texts = token_texts(tokenizer) if texts is None else texts
    mask = torch.tensor([is_delimiter_text(t) for t in texts], dtype=torch.bool)
    if include_eos and getattr(tokenizer, "eos_token_id", None) is not None:
        mask[tokenizer.eos_token_id] = True
    return mask


def digit_mask(tokenizer, *, texts: Sequence[str] | None = None) -> torch.Tensor:
    """bool [V]: token ids whose text contains a digit — LongRecipe's default impactful tokens."""
    texts = token_texts(tokenizer) if texts is None else texts
    return torch.tensor([is_digit_text(t) for t in texts], dtype=torch.bool)


def save_impactful_mask(
    path: str | os.PathLike, token_ids: Sequence[int], vocab: int, *, overwrite: bool = True, **extra
) -> None:
    """Write the analysis file that ``load_impactful_mask`` and ``prepare --impactful`` read, atomically
    (a temporary sibling renamed at the end); ``extra`` keys are stored beside the ids. An existing file is
    replaced only with ``overwrite``."""
    from lr_train.checkpoint import atomic_write_text

    ids = sorted({int(i) for i in token_ids})
    if ids and (ids[0] < 0 or ids[-1] >= vocab):
        raise ValueError(f"token_ids must lie in [0, {vocab})")
    payload = {
        "format": MASK_FORMAT,
        "version": MASK_VERSION,
        "vocab_size": vocab,
        "impactful_token_ids": ids,
    }
    payload.update(extra)
    atomic_write_text(os.fspath(path), json.dumps(payload, indent=1), overwrite=overwrite)


def load_impactful_mask(path: str | os.PathLike, vocab: int) -> torch.Tensor:
    """bool [vocab] from an analysis file (``python -m lr_train analyze``); ValueError if it does not fit."""
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"impactful mask {path}: cannot read it ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MASK_FORMAT:
        raise ValueError(
            f"impactful mask {path}: not an lr_train impactful-mask file (format {MASK_FORMAT!r})"
        )
    if payload.get("version") != MASK_VERSION:
        raise ValueError(
            f"impactful mask {path}: version {payload.get('version')!r}, expected {MASK_VERSION}"
        )
    if payload.get("vocab_size") != vocab:
        raise ValueError(
            f"impactful mask {path}: made for a vocabulary of {payload.get('vocab_size')} ids, "
            f"the tokenizer has "
            f"{vocab} — was it produced with another tokenizer?"
        )
    ids = payload.get("impactful_token_ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
        raise ValueError(f"impactful mask {path}: impactful_token_ids must be a list of ids in [0, {vocab})")
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[torch.tensor(ids, dtype=torch.int64)] = True
    return mask
