"""Atomic saving: every folder or file a command leaves behind is complete, or absent."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

STEP_DIR = re.compile(r"^step-(\d{8})$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _named(path: str, flag: str | None) -> str:
    return f"{flag} {path}" if flag else path


def check_output(path: str, *, overwrite: bool, flag: str | None = None, kind: str = "folder") -> None:
    """Raise ValueError (naming ``flag``) unless ``path`` can be written as a new ``kind`` ("folder" or
    "file"): it must not exist (or, with ``overwrite``, be a ``kind`` already: a file is never replaced by
    a folder or the other way round), and no existing part of its parent may be a file.
    """
    if os.path.lexists(path):
        is_dir = os.path.isdir(path)
        if kind == "folder" and not is_dir:
            raise ValueError(
                f"{_named(path, flag)} is a file, not a folder; remove it or choose another path "
                "(--overwrite replaces folders only)"
            )
        if kind == "file" and is_dir:
            raise ValueError(f"{_named(path, flag)} is a folder; pass a file path")
        if not overwrite:
            raise ValueError(f"{_named(path, flag)} exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{_named(path, flag)}: {parent} is a file, so nothing can be written under it")


@contextlib.contextmanager
def atomic_dir(path: str, *, overwrite: bool = False, flag: str | None = None) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    On an exception the temporary folder is removed and ``path`` is left as it was. With ``overwrite``
    an existing folder ``path`` is replaced only after the new one is complete; an existing file is
    refused (see ``check_output``; ``flag`` names the argument in its errors). The folder gets the
    permissions of one made by ``os.makedirs`` (0777 less the umask), not ``mkdtemp``'s 0700.
    """
    path = os.path.abspath(path)
    check_output(path, overwrite=overwrite, flag=flag)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        check_output(path, overwrite=overwrite, flag=flag)
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str, text: str, *, overwrite: bool = False, flag: str | None = None) -> None:
    """Write ``text`` to the file ``path`` through a temporary sibling renamed at the end (mode 0666 less
    the umask); refuses an existing file unless ``overwrite``, and a folder always."""
    path = os.path.abspath(path)
    check_output(path, overwrite=overwrite, flag=flag, kind="file")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


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
