"""A dependency-free PNG heat map (the needle-in-a-haystack grid), written atomically."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence


def _color(v: float) -> tuple[int, int, int]:
    # red (0) -> yellow (0.5) -> green (1); NaN (not measured) is grey.
    if v != v:
        return (160, 160, 160)
    v = min(max(v, 0.0), 1.0)
    if v < 0.5:
        return (220, int(40 + 360 * v), 40)
    return (int(220 - 360 * (v - 0.5)), 220, 40)


def write_heatmap_png(path: str, grid: Sequence[Sequence[float]], cell: int = 32) -> None:
    """Write ``grid[row][col]`` (values in [0, 1]) as a PNG, one ``cell``-pixel square per value.

    Rows are drawn top to bottom, columns left to right, with a 1-pixel white border between cells.
    """
    rows, cols = len(grid), len(grid[0]) if grid else 0
    if rows == 0 or cols == 0:
        raise ValueError("grid must be non-empty")
    width, height = cols * cell, rows * cell
    raw = bytearray()
    for y in range(height):
        raw.append(0)
        r = y // cell
        for x in range(width):
            c = x // cell
            border = (x % cell == cell - 1) or (y % cell == cell - 1)
            raw.extend((255, 255, 255) if border else _color(float(grid[r][c])))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(bytes(raw), 9))
    png += chunk(b"IEND", b"")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)
