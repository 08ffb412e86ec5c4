"""Command-line entry point. Each sub-command lives in ``lr_train/commands/<name>.py`` and defines
``add_parser(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func`` (called with the args).

What every command gets from here, before its own code runs:

- torch intra-op and OpenMP threads capped at the cores this process may use (``usable_cores``);
- each model / tokenizer argument checked: a value that looks like a local path but does not exist
  fails at once, naming its flag, instead of going to the Hugging Face hub (``check_model_arg``);
- one-line errors without tracebacks, on their own line even while a progress bar is drawn.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import re
import sys

PROG = "python -m lr_train"
COMMANDS = ("prepare", "analyze", "plan", "train", "merge", "eval", "compare", "demo")

# Arguments (dest -> flag) that name a model or tokenizer: a local folder, a hub name, or a preset.
MODEL_ARGS = {
    "model": "--model",
    "tokenizer": "--tokenizer",
    "base": "--base",
    "long": "--long",
    "original": "--original",
    "trained": "--trained",
}
# The tokenizer preset of lr_train.recipe.load_tokenizer; model presets are lr_train.models.TINY_PRESETS.
TOY_TOKENIZER = "toy"
# A value ending in one of these names a file, never a hub repository.
FILE_SUFFIXES = (".json", ".jsonl", ".txt", ".md", ".bin", ".safetensors", ".pt", ".pth", ".gguf", ".yaml")
# One of these in a folder means it holds a tokenizer (fast, SentencePiece, BPE or WordPiece files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``<command>: error: argument --flag: ...``, as ``fail`` prints
    them), no usage block."""

    def error(self, message: str):
        name = self.prog[len(PROG) + 1 :] if self.prog.startswith(PROG + " ") else self.prog
        self.exit(2, f"{name}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int, what: str):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return n

    parse.__name__ = what
    return parse


positive_int = _int_at_least(1, "an int >= 1")
nonnegative_int = _int_at_least(0, "an int >= 0")


def int_at_least(low: int):
    """argparse type: an int >= ``low``."""
    return _int_at_least(low, f"an int >= {low}")


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite float in the interval [low, high] (ends excluded when ``*_open``)."""
    what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        above = x > low if low_open else x >= low
        below = x < high if high_open else x <= high
        if not (math.isfinite(x) and above and below):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return x

    parse.__name__ = what
    return parse


def positive_float(value: str) -> float:
    """argparse type: a finite float > 0."""
    return float_in(0.0, math.inf, low_open=True, high_open=True)(value)


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask (``os.sched_getaffinity``), further limited by
    a cgroup-v2 CPU quota (``/sys/fs/cgroup/cpu.max``, containers) when one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def limit_threads() -> int:
    """Cap torch's intra-op threads and ``OMP_NUM_THREADS`` (inherited by child processes) at
    ``usable_cores()``, or lower if ``OMP_NUM_THREADS`` already asks for fewer; returns the count.

    torch sizes its pool from the machine's core count, not the process's affinity, so on a shared or
    pinned machine it would otherwise run more threads than it has cores and slow down several-fold.
    """
    n = usable_cores()
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        asked = 0
    if asked >= 1:
        n = min(n, asked)
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def looks_local(value: str) -> bool:
    """Whether a model / tokenizer argument that does not exist on disk must have meant a local path.

    The rule: the value starts with ``.``, ``/`` or ``~``; or holds a backslash or more than one ``/``;
    or its first component is an existing folder (``runs/merged`` while ``runs/`` exists); or it ends in
    a file suffix (``.json``, ``.safetensors``, ...); or it is not a valid hub name at all. Anything else
    (``name`` or ``org/name``) is a hub name and goes to the Hugging Face hub as before.
    """
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1:
        return True
    if "/" in value and os.path.isdir(value.split("/", 1)[0]):
        return True
    if value.lower().endswith(FILE_SUFFIXES):
        return True
    return not _HUB_NAME.match(value) or ".." in value or "--" in value


def check_model_arg(value: str, flag: str, *, allow_file: bool = False) -> None:
    """Raise ValueError naming ``flag`` when ``value`` is a local path that does not exist, or is a file
    (unless ``allow_file``: ``plan`` reads a bare config.json)."""
    from lr_train.models import TINY_PRESETS

    if value == TOY_TOKENIZER or value in TINY_PRESETS:
        return
    path = os.path.expanduser(value)
    if os.path.exists(path):
        if not os.path.isdir(path) and not allow_file:
            raise ValueError(f"{flag} {value} is a file; pass the folder that holds it")
        return
    if looks_local(value):
        raise ValueError(f"{flag} {value}: no such folder (hub names look like org/name)")


def load_tokenizer_arg(name: str, flag: str):
    """``lr_train.recipe.load_tokenizer(name)``; ValueError naming ``flag`` when there is none to load."""
    from lr_train.recipe import load_tokenizer

    hint = "" if flag == "--tokenizer" else "; pass --tokenizer"
    if os.path.isdir(name) and not any(os.path.exists(os.path.join(name, f)) for f in TOKENIZER_FILES):
        raise ValueError(f"{flag} {name} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}){hint}")
    try:
        return load_tokenizer(name)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{flag} {name}: no tokenizer could be loaded ({first}){hint}") from exc


def fail(command: str, exc: BaseException | str) -> int:
    """Print ``<command>: error: <message>`` as one line on stderr, on its own line; returns 2.

    Progress bars still on screen (an exception left them open) are closed first, so the message never
    lands on a bar's line.
    """
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except ImportError:
        pass
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{command}: error: {message}", file=sys.stderr, flush=True)
    return 2


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(f in text for f in self.fragments)


def quiet_known_warnings() -> None:
    """Silence two transformers messages that are wrong for this CLI.

    - "Token indices sequence length is longer than the specified maximum": we tokenize whole documents
      and cut them into windows ourselves; no sequence past the model's limit is ever fed as one.
    - "exceeded the model's predefined maximum length": evaluating past the native window is the point
      of a long-context evaluation; ``eval`` prints its own note when a length is beyond the window.
    """
    for name, fragment in (
        (
            "transformers.tokenization_utils_base",
            "Token indices sequence length is longer than the specified",
        ),
        ("transformers.generation.stopping_criteria", "exceeded the model's predefined maximum length"),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragment))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``only``, just that sub-command's (the others' modules, and torch with
    them, are not imported: an argument error then costs a fraction of a second)."""
    parser = ArgumentParser(prog=PROG, description="LongRecipe: efficient long-context extension of LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"lr_train.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_known_warnings()
    args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
    try:
        for dest, flag in MODEL_ARGS.items():
            value = getattr(args, dest, None)
            if isinstance(value, str):
                check_model_arg(value, flag, allow_file=args.command == "plan")
        limit_threads()
        rc = args.func(args)
    except ValueError as exc:
        rc = fail(args.command, exc)
    except KeyboardInterrupt:
        fail(args.command, "interrupted")
        rc = 130
    if rc:
        sys.exit(rc)
    return 0
