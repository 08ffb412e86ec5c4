"""Figures of the evaluations (matplotlib, Agg canvas), each PNG written atomically.

matplotlib is imported inside the functions, so ``import lr_train`` stays light; the figures are drawn
on an Agg canvas of their own, never through ``pyplot``, so no global backend or figure state changes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence


def length_label(n: int) -> str:
    """``1024 -> "1k"``, ``131072 -> "128k"``, ``333 -> "333"``."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _label(x) -> str:
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def _save(fig, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        # No "Software" stamp: the same numbers give the same bytes under any matplotlib patch release.
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def heatmap(
    path: str,
    matrix: Sequence[Sequence[float]],
    *,
    rows: Sequence,
    cols: Sequence,
    row_label: str,
    col_label: str,
    title: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    value_label: str = "accuracy",
) -> None:
    """Write ``matrix[row][col]`` as an annotated heat map PNG at ``path``.

    Rows (labelled ``rows``) run top to bottom, columns (``cols``) left to right; colours go red
    (``vmin``) → yellow → green (``vmax``), NaN (not measured) is grey; each cell shows its value and a
    colour bar labelled ``value_label`` sits on the right. Raises ``ValueError`` when ``matrix`` is
    empty or its shape does not match ``rows`` × ``cols``.
    """
    n_rows, n_cols = len(matrix), len(matrix[0]) if len(matrix) else 0
    if n_rows == 0 or n_cols == 0:
        raise ValueError("matrix must be non-empty")
    if len(rows) != n_rows or any(len(r) != len(cols) for r in matrix):
        raise ValueError(
            f"matrix is {n_rows} x {[len(r) for r in matrix]}, but rows has {len(rows)} labels and "
            f"cols {len(cols)}"
        )
    if not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got {vmin} and {vmax}")
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    data = np.array([[float(v) for v in r] for r in matrix], dtype=np.float64)
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#a0a0a0")
    fig = Figure(figsize=(1.6 + 0.85 * n_cols, 1.4 + 0.55 * n_rows), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(n_cols), [length_label(c) if isinstance(c, int) else _label(c) for c in cols])
    ax.set_yticks(range(n_rows), [_label(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    for i in range(n_rows):
        for j in range(n_cols):
            v = data[i, j]
            if math.isnan(v):
                ax.text(j, i, "–", ha="center", va="center", color="black", fontsize=9)
                continue
            r, g, b, _ = cmap((min(max(v, vmin), vmax) - vmin) / (vmax - vmin))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", color="white" if dark else "black", fontsize=9
            )
    fig.colorbar(im, ax=ax, label=value_label)
    _save(fig, path)


def accuracy_vs_length(
    path: str,
    lengths: Sequence[int],
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str,
    native_length: int | None = None,
    ylabel: str = "accuracy",
) -> None:
    """Write a line per series over context length, each with a shaded band, as a PNG at ``path``.

    ``series`` maps a name (an arm, a task) to ``(mean, low, high)``, one value per length (the band is
    ``low``..``high``, e.g. a 95% interval). The x axis is log2 with a tick at each length; a dashed
    vertical line marks ``native_length`` (the base model's window) when given. Raises ``ValueError``
    on empty input or a series whose lists do not have one value per length.
    """
    if not lengths or not series:
        raise ValueError("lengths and series must be non-empty")
    if any(n <= 0 for n in lengths):
        raise ValueError(f"lengths must be positive, got {list(lengths)}")
    for name, triple in series.items():
        if len(triple) != 3 or any(len(v) != len(lengths) for v in triple):
            raise ValueError(
                f"series {name!r} must be (mean, low, high) with {len(lengths)} values each (one per length)"
            )
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, NullLocator

    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = [float(n) for n in lengths]
    values: list[float] = []
    for name, (mean, low, high) in series.items():
        (line,) = ax.plot(x, mean, marker="o", label=name)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        values += [float(v) for v in (*mean, *low, *high)]
    if native_length is not None:
        ax.axvline(native_length, color="grey", linestyle="--", label=f"native window ({native_length})")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(x, [length_label(n) for n in lengths])
    span = x + ([float(native_length)] if native_length is not None else [])
    ax.set_xlim(min(span) / 2**0.25, max(span) * 2**0.25)
    if all(0.0 <= v <= 1.0 for v in values if not math.isnan(v)):
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)
