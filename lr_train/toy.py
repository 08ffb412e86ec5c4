"""Everything the tests and the demo need without a download: a synthetic corpus and a small tokenizer.

``toy_corpus`` writes deterministic documents of sentences that mix words with numbers (counts, dates,
measurements, codes), so LongRecipe's digit-based selection has something to select. ``toy_tokenizer``
trains a byte-level BPE (``tokenizers``) on that corpus at first call (well under a second, cached in
memory): digits are single tokens, and ". ! ?" and newlines are real tokens, so the tokenizer-derived
masks of ``lr_train.data`` work on it exactly as on a real model's tokenizer.
"""

from __future__ import annotations

import functools
import random

_NAMES = [
    "Ada",
    "Basil",
    "Cora",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kavya",
    "Lior",
    "Mara",
    "Nils",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tove",
    "Ugo",
    "Vera",
    "Wen",
    "Xavi",
    "Yara",
    "Zeno",
]
_NOUNS = [
    "river",
    "valley",
    "engine",
    "lantern",
    "harbor",
    "orchard",
    "library",
    "bridge",
    "market",
    "village",
    "tower",
    "garden",
    "station",
    "mountain",
    "forest",
    "island",
    "canal",
    "museum",
    "factory",
    "school",
    "theater",
    "castle",
    "lighthouse",
    "farm",
    "mill",
    "temple",
    "archive",
    "workshop",
    "bakery",
    "clinic",
    "observatory",
    "vineyard",
    "quarry",
    "meadow",
    "glacier",
]
_ADJECTIVES = [
    "old",
    "quiet",
    "bright",
    "narrow",
    "distant",
    "ancient",
    "busy",
    "golden",
    "hidden",
    "small",
    "large",
    "northern",
    "southern",
    "western",
    "eastern",
    "famous",
    "simple",
    "crowded",
    "silent",
    "green",
    "rusty",
    "wooden",
    "frozen",
    "sunny",
]
_VERBS = [
    "visited",
    "repaired",
    "painted",
    "described",
    "measured",
    "counted",
    "rebuilt",
    "mapped",
    "guarded",
    "crossed",
    "studied",
    "opened",
    "closed",
    "sold",
    "bought",
    "found",
    "explored",
    "photographed",
    "cleaned",
    "surveyed",
]
_FILLER = (
    "the weather was pleasant and everyone seemed calm about the plans for the season",
    "nobody could remember why the decision had been made in the first place",
    "it was a long walk but the view at the end made it worth the effort",
    "people in the area still talk about it when they meet in the evening",
    "the letters describing the event were kept in a drawer for many years",
    "a few neighbours came to help and the work went faster than expected",
    "the story changed a little every time someone told it again",
    "there was music in the square and children played near the fountain",
)
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_UNITS = ("meters", "kilograms", "liters", "kilometers", "hours", "minutes", "coins", "books", "boxes")


_SYLLABLES = [
    "ka",
    "ri",
    "ven",
    "dor",
    "mel",
    "sa",
    "tu",
    "lin",
    "bra",
    "gos",
    "fen",
    "tal",
    "mo",
    "ris",
    "ane",
    "cor",
    "vel",
    "ura",
    "bel",
    "nik",
    "sol",
    "har",
    "den",
    "pra",
    "zu",
    "kel",
    "mar",
    "tov",
    "ein",
    "gra",
    "lio",
    "pen",
    "sta",
    "rum",
    "dal",
    "ver",
    "qui",
    "ost",
]


@functools.lru_cache(maxsize=1)
def _places() -> tuple[str, ...]:
    """1500 invented place names (fixed): enough distinct words for a BPE vocabulary of a few thousand."""
    rng = random.Random("lr-toy-places")
    names: set[str] = set()
    while len(names) < 1500:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize())
    return tuple(sorted(names))


def _sentence(rng: random.Random) -> str:
    name, noun, adj, verb = (
        rng.choice(_NAMES),
        rng.choice(_NOUNS),
        rng.choice(_ADJECTIVES),
        rng.choice(_VERBS),
    )
    kind = rng.randrange(11)
    if kind == 0:
        date = f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1700, 2024)}"
        return f"On {date}, {name} {verb} the {adj} {noun}."
    if kind == 1:
        return f"The {noun} is {rng.randint(2, 9999)} {rng.choice(_UNITS)} from the {rng.choice(_NOUNS)}."
    if kind == 2:
        return f"{name} counted {rng.randint(3, 500)} {rng.choice(_UNITS)} near the {adj} {noun}!"
    if kind == 3:
        return f"Did {name} really see the {adj} {noun} in {rng.randint(1800, 2024)}?"
    if kind == 4:
        return f"The code for the {noun} was {rng.randint(100, 999)}-{rng.randint(1000, 9999)}."
    if kind == 5:
        return f"{name} {verb} the {adj} {noun}, and {rng.choice(_FILLER)}."
    if kind == 6:
        return f"Why did {name} leave the {noun} so early?"
    if kind == 7:
        return (
            f"{name} travelled from {rng.choice(_places())} to {rng.choice(_places())} with the {adj} {noun}."
        )
    if kind == 8:
        return f"In {rng.choice(_places())}, the {noun} is {rng.randint(2, 300)} {rng.choice(_UNITS)} long."
    return f"{rng.choice(_FILLER).capitalize()}."


def toy_document(index: int, seed: int = 0, *, min_sentences: int = 20, max_sentences: int = 60) -> str:
    """Document ``index`` of the toy corpus for ``seed``: paragraphs of 3-8 sentences, blank line between."""
    rng = random.Random(f"lr-toy-{seed}-{index}")
    n = rng.randint(min_sentences, max_sentences)
    paragraphs, current = [], []
    for _ in range(n):
        current.append(_sentence(rng))
        if len(current) >= rng.randint(3, 8):
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def toy_corpus(n_docs: int, seed: int = 0, *, min_sentences: int = 20, max_sentences: int = 60) -> list[str]:
    """``n_docs`` deterministic synthetic documents (each ~0.5-2k tokens with the toy tokenizer).

    Sentences end with ". ! ?", paragraphs with a newline; about half the sentences hold digits.
    """
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    return [
        toy_document(i, seed, min_sentences=min_sentences, max_sentences=max_sentences) for i in range(n_docs)
    ]


TOY_VOCAB_SIZE = 4096
TOY_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


@functools.lru_cache(maxsize=1)
def _toy_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Digits are split one by one (as Llama-3 / Qwen do in groups): numbers stay visibly "digit tokens".
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOY_VOCAB_SIZE,
        special_tokens=list(TOY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(toy_corpus(120, seed=12345), trainer=trainer)
    return tok.to_str()


def toy_tokenizer():
    """A small ``PreTrainedTokenizerFast`` (byte-level BPE, ~2.3k ids, EOS ``<|endoftext|>``), built locally.

    Deterministic: the same vocabulary on every call and machine. Any text tokenizes (byte fallback).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_toy_tokenizer_json()),
        eos_token=TOY_SPECIAL_TOKENS[0],
        pad_token=TOY_SPECIAL_TOKENS[1],
        model_max_length=1 << 30,
    )
