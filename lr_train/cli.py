"""Command-line entry point. Each sub-command lives in ``lr_train/commands/<name>.py`` and defines
``add_parser(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func`` (called with the args)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("prepare", "analyze", "plan", "train", "merge", "eval", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lr_train", description="LongRecipe: efficient long-context extension of LLMs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        importlib.import_module(f"lr_train.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    if rc:
        sys.exit(rc)
    return 0
