"""Volcano plot of one coefficient or contrast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._errors import InvalidValueError, MissingKeyError
from ._labels import repel_labels
from ._utils import (
    DOWN,
    NS,
    UP,
    check_count,
    check_unit,
    gene_labels,
    height,
    legend_outside,
    one_result,
    plot_doc,
    rank_stat,
    render,
    title_of,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["volcano"]

#: (legend label, genes in the class, colour)
_Class = tuple[str, np.ndarray, object]


@dataclass(frozen=True)
class _Calls:
    """What the volcano shows of each gene: position, clipping, and whether it is called."""

    x: np.ndarray  # log2 fold change
    y: np.ndarray  # -log10 p
    clipped: np.ndarray  # p = 0 clipped at the smallest p
    rank: np.ndarray  # |stat|, to break ties
    ok: np.ndarray  # has an estimate
    sig: np.ndarray  # adj. p < p_threshold and |log2 FC| >= lfc_threshold
    passed_p: np.ndarray  # adj. p < p_threshold


def _check_args(lfc_threshold: float, p_threshold: float, n_labels: int) -> None:
    if lfc_threshold < 0 or not np.isfinite(lfc_threshold):
        msg = f"lfc_threshold must be a non-negative log2 fold change; got {lfc_threshold!r}."
        raise InvalidValueError(msg, param="lfc_threshold")
    check_unit("p_threshold", p_threshold, low=0.0, high=1.0)
    check_count("n_labels", n_labels, low=0, what="non-negative")


def _calls(res: pd.DataFrame, lfc_threshold: float, p_threshold: float) -> _Calls:
    x = res["log2_fc"].to_numpy()
    y, clipped = height(res)
    ok = np.isfinite(x) & np.isfinite(y)
    adj = res["adj_p_value"].to_numpy()
    with np.errstate(invalid="ignore"):
        sig = ok & (adj < p_threshold) & (np.abs(x) >= lfc_threshold)
        passed_p = ok & (adj < p_threshold)
    return _Calls(x, y, clipped, rank_stat(res), ok, sig, passed_p)


def _call_classes(c: _Calls, lfc_threshold: float, p_threshold: float) -> tuple[list[_Class], str]:
    """Up, down and not significant, with the legend's title."""
    up, down, ns = c.sig & (c.x > 0), c.sig & (c.x < 0), c.ok & ~c.sig
    classes = [
        (f"up ({int(up.sum())})", up, UP),
        (f"down ({int(down.sum())})", down, DOWN),
        (f"not significant ({int(ns.sum())})", ns, NS),
    ]
    return classes, f"adj. p < {p_threshold:g}, |log2 FC| >= {lfc_threshold:g}"


def _var_classes(adata: AnnData, color_by: str, ok: np.ndarray) -> tuple[list[_Class], str]:
    """One class per category of ``adata.var[color_by]`` that has genes to draw."""
    if color_by not in adata.var.columns:
        msg = f"color_by column {color_by!r} not in adata.var; available columns: {list(adata.var.columns)}."
        raise MissingKeyError(msg, param="color_by")
    col = adata.var[color_by]
    cats = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(pd.unique(col))
    vals = col.to_numpy()
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    classes = []
    for i, cat in enumerate(cats):
        m = ok & (vals == cat)
        if m.any():
            classes.append((f"{cat} ({int(m.sum())})", m, cmap(i % 10)))
    return classes, color_by


def _draw_points(ax: Axes, c: _Calls, classes: list[_Class], point_size: float) -> None:
    for label, m, color in classes:
        shown, clip = m & ~c.clipped, m & c.clipped
        ax.scatter(c.x[shown], c.y[shown], s=point_size, c=[color], label=label, linewidths=0)
        if clip.any():
            ax.scatter(c.x[clip], c.y[clip], s=2 * point_size, c=[color], marker="^", linewidths=0)


def _draw_thresholds(ax: Axes, c: _Calls, lfc_threshold: float) -> None:
    if lfc_threshold > 0:
        for v in (-lfc_threshold, lfc_threshold):
            ax.axvline(v, color="0.4", linestyle="--", linewidth=0.8, gid="lfc_threshold")
    if c.passed_p.any():
        ax.axhline(c.y[c.passed_p].min(), color="0.4", linestyle="--", linewidth=0.8, gid="p_threshold")


def _draw_labels(ax: Axes, c: _Calls, names: pd.Index, n_labels: int) -> int:
    """Label the ``n_labels`` significant genes with the smallest p-values, without overlaps.

    Returns the number of labels left out because they found no free place.
    """
    top = np.flatnonzero(c.sig)
    top = top[np.lexsort((-c.rank[top], -c.y[top]))][: int(n_labels)]
    return repel_labels(ax, c.x[top], c.y[top], [str(names[g]) for g in top], avoid=(c.x[c.ok], c.y[c.ok]))


def _draw_text(ax: Axes, res: pd.DataFrame, c: _Calls, group: str | None, legend_title: str) -> None:
    """Axis labels, title and the legend right of the axes (which lays out a figure the plot made)."""
    name = res.attrs["name"]
    ax.set_xlabel(f"log2 fold change ({name})")
    ax.set_ylabel(r"$-\log_{10}$ p")
    ax.set_title(_title(res, c, group, 0), fontsize=9)
    legend_outside(ax, where="right", title=legend_title, title_fontsize=7)


def _title(res: pd.DataFrame, c: _Calls, group: str | None, n_unlabelled: int) -> str:
    title = title_of(res, group, int(c.ok.sum()), n_nan=int((~c.ok).sum()), n_clipped=int(c.clipped.sum()))
    if n_unlabelled:
        title += f"\n{n_unlabelled} label(s) left out: no place without overlap"
    return title


@plot_doc
def volcano(
    adata: AnnData,
    coef: str | None = None,
    *,
    contrast: str | None = None,
    group: str | None = None,
    key: str = "scglmm",
    color_by: str | None = None,
    lfc_threshold: float = 1.0,
    p_threshold: float = 0.05,
    n_labels: int = 10,
    gene_symbols: str | None = None,
    point_size: float = 10.0,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    r"""Volcano plot of one coefficient or contrast: log2 fold change against :math:`-\log_{10} p`.

    The y axis is the stored p-value (Wald with the fit's calibration, or the likelihood-ratio
    p-value of a contrast tested with ``method="lrt"``). Genes whose p-value underflowed to 0 are
    drawn at their exact height, computed from the test statistic with the log survival function
    of its reference distribution; only where that is impossible are they clipped at the smallest
    positive p-value and drawn as triangles.

    A gene is called significant when its Benjamini-Hochberg adjusted p-value is below
    ``p_threshold`` **and** its absolute log2 fold change is at least ``lfc_threshold``. The
    dashed horizontal line is the raw p-value at which the BH procedure stops rejecting (every
    gene on or above it has adjusted p < ``p_threshold``); it is absent when no gene passes.
    Dashed vertical lines mark ``+-lfc_threshold``. Genes without an estimate (NaN, see the
    ``status``) are not drawn; their number is given in the title.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run. Nothing is written to it.
    coef
        The design column to plot, as in :func:`scglmm.get.results`; ``None`` takes the only
        non-intercept column.
    {contrast_group_key}
    color_by
        An ``adata.var`` column (categorical, boolean or string) to colour the genes by, one colour
        per category. ``None`` colours by the call: up, down, not significant.
    lfc_threshold
        Minimum absolute log2 fold change of a significant gene (base 2, unlike the stored
        natural-log coefficients).
    p_threshold
        Maximum BH-adjusted p-value of a significant gene.
    n_labels
        Label this many significant genes, those with the smallest p-values. The labels are
        pushed apart and off the points (with adjustText), a thin line joining a moved label to
        its gene; a label that still finds no place free of the others is left out, and the title
        says how many were.
    gene_symbols
        ``adata.var`` column with the names to print (default: ``var_names``).
    point_size
        Marker area in points squared.
    {figure_axes}
    """
    _check_args(lfc_threshold, p_threshold, n_labels)
    res = one_result(adata, coef, contrast, group, key)
    names = gene_labels(adata, gene_symbols)
    c = _calls(res, lfc_threshold, p_threshold)
    if color_by is None:
        classes, legend_title = _call_classes(c, lfc_threshold, p_threshold)
    else:
        classes, legend_title = _var_classes(adata, color_by, c.ok)

    def draw(ax: Axes) -> None:
        _draw_points(ax, c, classes, point_size)
        _draw_thresholds(ax, c, lfc_threshold)
        _draw_text(ax, res, c, group, legend_title)  # before the labels: the layout is final then
        n_unlabelled = _draw_labels(ax, c, names, n_labels)
        if n_unlabelled:
            ax.set_title(_title(res, c, group, n_unlabelled), fontsize=9)

    return render(draw, ax=ax, figsize=figsize, show=show, save=save)
