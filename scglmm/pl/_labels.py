"""Point labels that do not overlap: placed by adjustText, then checked on the rendered figure.

:func:`repel_labels` writes one text per point, lets :func:`adjustText.adjust_text` push the
texts apart and away from the points (a thin line joins a moved text to its point), and then
measures the rendered text boxes: a label that still overlaps one drawn before it (the labels
come in order of importance), or that reaches beyond the axes, is removed, so what is left is
always readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.patches import Patch
    from matplotlib.text import Text

__all__ = ["repel_labels"]

#: Iterations of adjustText: a fixed number, not a time limit, so that the result is reproducible.
_ITERATIONS = 100

#: How hard labels push each other apart: stronger than adjustText's (0.1, 0.2), so that 15 labels
#: find their places on a small figure within the iterations.
_FORCE_TEXT = (0.3, 0.6)

#: Size in pixels of the grid on which the points to avoid are thinned.
_CELL = 6.0

#: The line from a moved label to its point.
_LINE = {"arrowstyle": "-", "color": "0.35", "linewidth": 0.6, "shrinkA": 1, "shrinkB": 2}


def repel_labels(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    *,
    avoid: tuple[np.ndarray, np.ndarray] | None = None,
    fontsize: float = 7,
    gid: str = "gene_label",
) -> int:
    """Label the points ``(x[i], y[i])`` with ``labels[i]`` (most important first) without overlaps.

    Call it after everything that changes the axes limits has been drawn. The texts get the
    ``gid`` and the joining lines ``f"{gid}_line"``.

    Parameters
    ----------
    ax
        The Axes to label, in data coordinates.
    x, y
        The labelled points.
    labels
        The texts, in order of importance.
    avoid
        Further points (x, y) that the labels should not cover, e.g. all points of a scatter.
    fontsize
        Font size of the labels.
    gid
        The ``gid`` of the texts.

    Returns
    -------
    The number of labels removed because no place without an overlap was found.
    """
    if len(labels) == 0:
        return 0
    from adjustText import adjust_text

    texts = [ax.text(xi, yi, str(s), fontsize=fontsize, gid=gid) for xi, yi, s in zip(x, y, labels, strict=True)]
    px, py = (np.asarray(x), np.asarray(y)) if avoid is None else _thinned(ax, *avoid)
    _, lines = adjust_text(texts, x=px, y=py, ax=ax, iter_lim=_ITERATIONS, force_text=_FORCE_TEXT, arrowprops=_LINE)
    for line in lines:
        line.set_gid(f"{gid}_line")
    return _remove_overlapping(ax, texts, lines)


def _thinned(ax: Axes, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point per cell of a grid of ``_CELL`` pixels: adjustText's time grows with the square of
    the points near the labels, and points closer than a few pixels repel a label the same."""
    xy = np.column_stack([x, y])
    xy = xy[np.all(np.isfinite(xy), axis=1)]
    cells = np.floor(ax.transData.transform(xy) / _CELL)
    _, first = np.unique(cells, axis=0, return_index=True)
    kept = xy[np.sort(first)]
    return kept[:, 0], kept[:, 1]


def _remove_overlapping(ax: Axes, texts: list[Text], lines: list[Patch]) -> int:
    """Remove each text (and its line) that overlaps a text before it or reaches beyond the axes
    (over the tick labels, or a legend outside); return how many."""
    renderer = ax.figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    frame = ax.get_window_extent(renderer).padded(1.0)  # adjustText keeps labels just inside
    drop = {i for i, b in enumerate(boxes) if b.x0 < frame.x0 or b.x1 > frame.x1 or b.y0 < frame.y0 or b.y1 > frame.y1}
    for i, j in combinations(range(len(texts)), 2):
        if i not in drop and j not in drop and boxes[i].overlaps(boxes[j]):
            drop.add(j)
    for j in drop:
        for line in lines:
            if getattr(line, "patchA", None) is texts[j]:
                line.remove()
        texts[j].remove()
    return len(drop)
