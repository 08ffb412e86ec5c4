"""RULER-style synthetic long-context tasks, generated offline and deterministically.

Every task hides one or more facts ("needles") at a chosen depth of a haystack of plain sentences and
asks about them at the end; the model answers by greedy generation and is scored by exact match:

- ``niah_single``      one needle; the question asks for its number.
- ``niah_multikey``    four needles with different keys; the question asks for one of them.
- ``niah_multivalue``  four needles with the same key; the answer is all four numbers, in text order.
- ``niah_multiquery``  four needles with different keys; the answer is the numbers of two of them.
- ``vt``               variable tracking: ``VAR A = 12345`` then a chain ``VAR B = VAR A`` ... scattered
                       through the haystack; the answer is every variable holding the number.

The same templates make the training documents of :func:`retrieval_corpus` (facts stated early and used
later), so a small model can learn to retrieve inside its own window before its window is extended.

Prompts are built from token ids (pieces tokenized separately and concatenated), so a sample has exactly
the requested number of tokens with any tokenizer. Sample ``k`` of a (task, length, depth) cell comes
from the RNG key ``(seed, task, length, depth, k)``: the same on every machine and independent of which
other cells are generated.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
VALUE_DIGITS = 5
NEEDLES = 4  # needles per multi-key / multi-value / multi-query sample
VT_CHAIN = 3  # variables per variable-tracking chain (the first holds the number)

NEEDLE = " The special magic number for {key} is {value}."
QUESTION = " What is the special magic number for {key}? The special magic number for {key} is"
QUESTION_ALL = " What are all the special magic numbers for {key}? The special magic numbers for {key} are"
QUESTION_TWO = (
    " What are the special magic numbers for {key} and {key2}?"
    " The special magic numbers for {key} and {key2} are"
)
VT_FIRST = " VAR {name} = {value}."
VT_LINK = " VAR {name} = VAR {prev}."
VT_QUESTION = " Which variables are assigned the value {value}? The variables assigned the value {value} are"

# The haystack is RULER's "noise" one: a fixed cycle of plain sentences, entered at a random point.
# Nothing in it needs remembering, so everything a model must retrieve is in the needles.
HAYSTACK = (
    " The grass is green.",
    " The sky is blue.",
    " The sun is yellow.",
    " Here we go.",
    " There and back again.",
)


class _Haystack:
    """Haystack sentences in their cycle, from a random start."""

    def __init__(self, rng: random.Random) -> None:
        self.i = rng.randrange(len(HAYSTACK))

    def __call__(self) -> str:
        s = HAYSTACK[self.i % len(HAYSTACK)]
        self.i += 1
        return s


def _keys(rng: random.Random, n: int) -> list[str]:
    from lr_train.toy import _places

    return rng.sample(_places(), n)


def _value(rng: random.Random) -> str:
    return str(rng.randrange(10 ** (VALUE_DIGITS - 1), 10**VALUE_DIGITS))


@dataclass
class TaskText:
    """A task instance as text pieces: needles to hide, the question, and the expected answer words."""

    needles: list[str]
    question: str
    answer: list[str]
    others: list[tuple[str, list[str]]] = field(default_factory=list)  # other questions these needles answer


def task_text(task: str, rng: random.Random) -> TaskText:
    """Needles, question and answer of one instance of ``task`` (see the module docstring).

    The needle the question asks about comes first in ``needles`` (prompts put the first needle at the
    requested depth); ``others`` holds the other questions the same needles answer (training documents ask
    several of them).
    """
    if task == "niah_single":
        key, value = _keys(rng, 1)[0], _value(rng)
        return TaskText([NEEDLE.format(key=key, value=value)], QUESTION.format(key=key), [value])
    if task in ("niah_multikey", "niah_multiquery"):
        keys = _keys(rng, NEEDLES)  # a random sample: keys[0] is the asked one
        values = [_value(rng) for _ in keys]
        needles = [NEEDLE.format(key=k, value=v) for k, v in zip(keys, values, strict=True)]
        if task == "niah_multikey":
            others = [(QUESTION.format(key=k), [v]) for k, v in zip(keys[1:], values[1:], strict=True)]
            return TaskText(needles, QUESTION.format(key=keys[0]), [values[0]], others)
        j = rng.randrange(1, NEEDLES)
        pairs = [(i, k) for i in range(NEEDLES) for k in range(NEEDLES) if i != k and (i, k) != (0, j)]
        others = [
            (QUESTION_TWO.format(key=keys[i], key2=keys[k]), [values[i], values[k]])
            for i, k in rng.sample(pairs, 3)
        ]
        return TaskText(
            needles, QUESTION_TWO.format(key=keys[0], key2=keys[j]), [values[0], values[j]], others
        )
    if task == "niah_multivalue":
        key = _keys(rng, 1)[0]
        values = [_value(rng) for _ in range(NEEDLES)]
        return TaskText(
            [NEEDLE.format(key=key, value=v) for v in values], QUESTION_ALL.format(key=key), values
        )
    if task == "vt":
        names = _keys(rng, VT_CHAIN)
        value = _value(rng)
        needles = [VT_FIRST.format(name=names[0], value=value)]
        needles += [VT_LINK.format(name=b, prev=a) for a, b in pairwise(names)]
        return TaskText(needles, VT_QUESTION.format(value=value), names)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def parse_tasks(names: Sequence[str]) -> list[str]:
    """``names`` with ``all`` expanded; unknown names raise ``ValueError`` listing the valid ones."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out.extend(t for t in TASKS if t not in out)
        elif name in TASKS:
            if name not in out:
                out.append(name)
        else:
            raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)} or all")
    return out


@dataclass
class Sample:
    """One prompt: token ids ``[length]`` (BOS first when the tokenizer has one), and the expected answer."""

    task: str
    length: int
    depth: float
    input_ids: list[int]
    answer: list[str]
    others: list[tuple[str, list[str]]] = field(default_factory=list)  # more questions the needles answer


class _Encoder:
    """Tokenizes pieces once (the haystack has few distinct sentences) and caches them."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self.cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self.cache) < 100_000:
                self.cache[text] = ids
        return ids


_PROBES = 256  # task instances measured to bound prompt and answer sizes


def _probe(task: str) -> list[TaskText]:
    return [task_text(task, random.Random(f"probe-{i}")) for i in range(_PROBES)]


def min_length(tokenizer, task: str) -> int:
    """Tokens a prompt of ``task`` needs: the largest needles + question of many instances, BOS, 8 tokens of
    haystack, and a margin of 16 for keys longer than any probed (prompts shorter than this may not fit)."""
    enc = _Encoder(tokenizer)
    need = max(sum(len(enc(n)) for n in t.needles) + len(enc(t.question)) for t in _probe(task))
    return need + 1 + 8 + 16


def make_sample(
    tokenizer, task: str, length: int, depth: float, rng: random.Random, *, encoder=None
) -> Sample:
    """A prompt of exactly ``length`` tokens: haystack sentences with the needles around ``depth``.

    ``depth`` 0 puts the (first) needle at the start of the haystack, 1 just before the question. Multi-needle
    tasks spread their needles over the haystack with the first at ``depth``; variable tracking keeps
    its chain in order.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    enc = encoder or _Encoder(tokenizer)
    t = task_text(task, rng)
    needles = [enc(n) for n in t.needles]
    question = enc(t.question)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    budget = length - len(bos) - len(question) - sum(map(len, needles))
    if budget < 8:
        raise ValueError(
            f"length {length} is too short for task {task}; "
            f"it needs at least {min_length(tokenizer, task)} tokens"
        )
    hay: list[list[int]] = []
    hay_next = _Haystack(rng)
    used = 0
    while used < budget:
        s = enc(hay_next())
        hay.append(s)
        used += len(s)
    hay[-1] = hay[-1][: len(hay[-1]) - (used - budget)]  # the last sentence may end early
    bounds = [0]  # needles go between sentences: bounds[b] is the haystack offset before sentence b
    for s in hay:
        bounds.append(bounds[-1] + len(s))
    first = depth * budget
    points = [first]
    if task == "vt":  # the chain starts at the depth and continues in order after it
        points += sorted(rng.uniform(first, budget) for _ in needles[1:])
    else:
        points += [rng.uniform(0, budget) for _ in needles[1:]]
    slot = [min(range(len(bounds)), key=lambda b: abs(bounds[b] - p)) for p in points]
    if task == "vt":
        slot = sorted(slot)
    order = sorted(range(len(needles)), key=lambda i: (slot[i], i))
    pieces: list[int] = []
    k = 0
    for b in range(len(hay) + 1):
        while k < len(order) and slot[order[k]] == b:
            pieces.extend(needles[order[k]])
            k += 1
        if b < len(hay):
            pieces.extend(hay[b])
    ids = bos + pieces + question
    answer = t.answer
    if task == "niah_multivalue":
        answer = [t.answer[i] for i in order]  # in text order
    return Sample(task, length, depth, ids, answer, t.others)


def task_samples(tokenizer, task: str, length: int, depth: float, n: int, seed: int = 0) -> list[Sample]:
    """``n`` deterministic samples of one (task, length, depth) cell."""
    enc = _Encoder(tokenizer)
    return [
        make_sample(
            tokenizer,
            task,
            length,
            depth,
            random.Random(f"ruler-{seed}-{task}-{length}-{float(depth)}-{k}"),
            encoder=enc,
        )
        for k in range(n)
    ]


_NUMBER = re.compile(r"\d+")
_WORD = re.compile(r"[A-Za-z]+")


def score(task: str, answer: Sequence[str], generated: str) -> bool:
    """Exact match: the numbers (variable names for ``vt``) the generation states first are the answer.

    Single-answer tasks take the first number; multi-value tasks the first ``len(answer)`` numbers in order;
    multi-query the first two in the asked order; ``vt`` the set of the first ``len(answer)`` names.
    """
    if task == "vt":
        names = [w for w in _WORD.findall(generated) if w not in ("and", "VAR")][: len(answer)]
        return sorted(names) == sorted(answer)
    found = _NUMBER.findall(generated)[: len(answer)]
    return found == list(answer)


def answer_text(task: str, answer: Sequence[str]) -> str:
    """How a correct answer is written (used in training documents): `` 12345.`` / `` 1, 2, 3 and 4.``"""
    if len(answer) == 1:
        return f" {answer[0]}."
    return " " + ", ".join(answer[:-1]) + f" and {answer[-1]}."


def max_new_tokens(tokenizer, task: str) -> int:
    """Enough generated tokens for the longest answer of ``task``."""
    enc = _Encoder(tokenizer)
    longest = max(len(enc(answer_text(task, t.answer))) for t in _probe(task))
    return longest + 4


def retrieval_document(
    rng: random.Random, sentences: int, tasks: Sequence[str] = TASKS, *, every: int = 4, asks: int = 3
) -> str:
    """A training document with long-range references: haystack sentences with task instances whose needles
    appear early and whose questions, each followed by its correct answer, come later in the text.

    One instance per ``every`` haystack sentences; each is asked about ``asks`` times (its question and the
    other questions its needles answer, in turn) at random points after its last needle. Asking more than
    once puts more of the text where a model can only be right by looking back.
    """
    hay_next = _Haystack(rng)
    body = [hay_next() for _ in range(sentences)]
    inserts: dict[int, list[str]] = {}
    for _ in range(max(1, sentences // every)):
        t = task_text(rng.choice(list(tasks)), rng)
        last = rng.randint(0, max(0, sentences - 1))
        spots = sorted(rng.randint(0, last) for _ in t.needles)
        if not t.needles[0].startswith(" VAR"):  # a variable chain stays in order
            rng.shuffle(t.needles)  # the asked needle is first in the list, not in the text
        for s, needle in zip(spots, t.needles, strict=True):
            inserts.setdefault(s, []).append(needle)
        qa = [(t.question, t.answer), *t.others]
        if t.question.startswith(" What are all"):  # multi-value: the answer lists the numbers in text order
            order = [n.rsplit(" is ", 1)[1].rstrip(".") for n in t.needles]
            qa = [(t.question, order)]
        for k in range(asks):
            question, answer = qa[k % len(qa)]
            inserts.setdefault(rng.randint(last + 1, sentences), []).append(
                question + answer_text("", answer)
            )
    out = []
    for i in range(sentences + 1):
        out.extend(inserts.get(i, []))
        if i < sentences:
            out.append(body[i])
    return "".join(out).lstrip()


def retrieval_corpus(
    n_docs: int, *, sentences: int, seed: int = 0, tasks: Sequence[str] = TASKS, every: int = 4, asks: int = 3
) -> list[str]:
    """``n_docs`` deterministic :func:`retrieval_document` s of ``sentences`` haystack sentences each."""
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    return [
        retrieval_document(
            random.Random(f"lr-retrieval-{seed}-{i}"), sentences, tasks, every=every, asks=asks
        )
        for i in range(n_docs)
    ]
