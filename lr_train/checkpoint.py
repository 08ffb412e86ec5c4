"""Atomic saving: every directory a command leaves behind is complete, or absent."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

STEP_DIR = re.compile(r"^step-(\d{8})$")


@contextlib.contextmanager
def atomic_dir(path: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory beside ``path``; on success it is renamed to ``path``.

    On an exception the temporary directory is removed and ``path`` is left as it was. With
    ``overwrite`` an existing ``path`` is replaced only after the new one is complete.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.rmdir(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def step_dirs(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = STEP_DIR.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def prune(root: str, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (never the newest one)."""
    for _, path in step_dirs(root)[: -max(keep, 1)]:
        shutil.rmtree(path, ignore_errors=True)
