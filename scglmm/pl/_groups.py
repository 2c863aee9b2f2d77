"""Summary of a fit with ``groupby``: DE genes up and down per group, and a heatmap of the log2 fold
changes of the top genes across the groups.

Two steps: read the stacked results of every group and call the genes (:func:`_summary`), draw
the bars (:func:`_draw_counts`) and the heatmap (:func:`_draw_heatmap`) into a grid that takes
the place of ``ax`` or fills a new figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._errors import InvalidValueError
from .._layout import fit_params, run_keys
from ..get import results
from ._utils import (
    DOWN,
    UP,
    check_count,
    check_unit,
    finish,
    gene_labels,
    legend_outside,
    own_figure,
    plot_doc,
    readable_name,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["groups_summary"]

#: Colour of a heatmap cell without an estimate.
_MISSING = "0.82"


@dataclass(frozen=True)
class _Summary:
    """What the figure shows."""

    groups: list[str]
    up: np.ndarray  # DE genes up, per group
    down: np.ndarray  # DE genes down, per group
    lfc: pd.DataFrame  # top genes x groups: log2 fold change, NaN without an estimate
    called: pd.DataFrame  # top genes x groups: DE in that group
    any_called: bool  # the top genes are DE somewhere (else: the smallest p-values)
    title: str  # the coefficient or contrast in words, and the groupby column
    skipped: list[str]  # groups the fit skipped


def _check_args(alpha: float, lfc_threshold: float, n_top: int) -> None:
    check_unit("alpha", alpha, low=0.0, high=1.0)
    if not (np.isfinite(lfc_threshold) and lfc_threshold >= 0):
        msg = f"lfc_threshold must be a non-negative log2 fold change; got {lfc_threshold!r}."
        raise InvalidValueError(msg, param="lfc_threshold")
    check_count("n_top", n_top, low=1, what="positive")


def _group_runs(adata: AnnData, key: str) -> dict[str, str]:
    subs = run_keys(adata, key)
    if list(subs) == [""]:
        msg = (
            f"the fit under key {key!r} was not run with groupby; groups_summary compares groups "
            "(fit with scglmm.tl.fit(..., groupby=...)), use scglmm.pl.volcano for a single fit."
        )
        raise InvalidValueError(msg, param="key")
    return subs


def _wide(res: pd.DataFrame, column: str, genes: pd.Index, groups: list[str]) -> pd.DataFrame:
    """``res[column]`` as genes x groups (the stacked results have one block per group)."""
    long = pd.DataFrame({"gene": res.index, "group": res["group"].astype(str), "v": res[column].to_numpy()})
    return long.pivot(index="gene", columns="group", values="v").reindex(index=genes, columns=groups)


def _top_genes(adj: pd.DataFrame, stat: pd.DataFrame, called: pd.DataFrame, n_top: int) -> tuple[pd.Index, bool]:
    """Genes DE in at least one group, by their smallest adjusted p-value over the groups (ties:
    largest |stat|); if none is DE, the genes with the smallest adjusted p-values."""
    any_called = bool(called.to_numpy().any())
    pool = called.any(axis=1) if any_called else adj.notna().any(axis=1)
    order = pd.DataFrame({"p": adj.min(axis=1), "s": -stat.abs().max(axis=1)})[pool]
    order = order.sort_values(["p", "s"], kind="stable")
    return order.index[:n_top], any_called


def _summary(
    adata: AnnData, coef: str | None, contrast: str | None, key: str, thresholds: tuple[float, float], n_top: int
) -> _Summary:
    alpha, lfc_threshold = thresholds
    subs = _group_runs(adata, key)
    groups = list(subs)
    res = results(adata, coef, contrast=contrast, key=key)
    genes = adata.var_names
    lfc, adj, stat = (_wide(res, c, genes, groups) for c in ("log2_fc", "adj_p_value", "stat"))
    with np.errstate(invalid="ignore"):
        called = (adj < alpha) & (lfc.abs() >= lfc_threshold)
    top, any_called = _top_genes(adj, stat, called, n_top)
    name = str(res.attrs.get("contrast", res.attrs.get("coef", "")))
    params = fit_params(adata, key)
    return _Summary(
        groups=groups,
        up=(called & (lfc > 0)).sum(axis=0).to_numpy(dtype=int),
        down=(called & (lfc < 0)).sum(axis=0).to_numpy(dtype=int),
        lfc=lfc.loc[top],
        called=called.loc[top],
        any_called=any_called,
        title=f"{readable_name(name, fit_params(adata, subs[groups[0]]))} by {params.get('groupby', 'group')}",
        skipped=[str(g) for g in params.get("skipped_groups", [])],
    )


def _draw_counts(ax: Axes, s: _Summary, alpha: float, lfc_threshold: float) -> None:
    """Bars of DE genes up and down per group, with their numbers."""
    x = np.arange(len(s.groups))
    for offset, counts, color, label in ((-0.2, s.up, UP, "up"), (0.2, s.down, DOWN, "down")):
        bars = ax.bar(x + offset, counts, width=0.4, color=color, label=label)
        for patch in bars.patches:
            patch.set_gid(label)
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_ylabel("DE genes")
    ax.margins(y=0.15)
    ax.tick_params(labelbottom=False)
    title = f"{s.title}\nDE genes: adj. p < {alpha:g}, |log2 FC| >= {lfc_threshold:g}"
    if s.skipped:
        title += f"\nnot fitted: {', '.join(s.skipped)}"
    ax.set_title(title, fontsize=9)
    legend_outside(ax, where="right")


def _draw_heatmap(ax: Axes, cax: Axes, s: _Summary, names: pd.Index, genes: pd.Index) -> None:
    """log2 fold changes of the top genes (rows) in each group (columns); DE cells get a dot."""
    from matplotlib import colormaps

    values = np.ma.masked_invalid(s.lfc.to_numpy(dtype=float))
    vmax, clipped = _colour_limit(values)
    cmap = colormaps["RdBu_r"].with_extremes(bad=_MISSING)
    image = ax.imshow(values, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    rows, cols = np.nonzero(s.called.to_numpy())
    ax.scatter(cols, rows, s=6, c="black", marker="o", linewidths=0, gid="called")
    ax.set_xticks(np.arange(len(s.groups)), s.groups, rotation=90 if len(s.groups) > 6 else 0, fontsize=8)
    ax.set_yticks(np.arange(len(s.lfc)), [str(names[genes.get_loc(g)]) for g in s.lfc.index], fontsize=7)
    ax.set_xlim(-0.5, len(s.groups) - 0.5)
    which = "DE in at least one group" if s.any_called else "smallest adj. p (none is DE)"
    ax.set_title(f"top {len(s.lfc)} genes, {which}; dot: DE; grey: no estimate", fontsize=8)
    ax.figure.colorbar(image, cax=cax, label="log2 fold change", extend="both" if clipped else "neither")


#: The colour scale of the heatmap reaches this quantile of |log2 FC| (with at least 20 cells).
COLOUR_QUANTILE = 0.95


def _colour_limit(values: np.ma.MaskedArray) -> tuple[float, bool]:
    """The heatmap's colour limit, symmetric about 0, and whether some cells lie beyond it: the
    :data:`COLOUR_QUANTILE` quantile of |log2 FC|, so that one gene with an extreme fold change (near
    separation, e.g. a log2 FC of 19) does not wash out every other cell; the largest value with fewer
    than 20 cells. Cells beyond it take the extreme colours (the colour bar's arrows say so)."""
    a = np.abs(values.compressed())
    if a.size == 0:
        return 1.0, False
    top = float(a.max())
    lim = float(np.quantile(a, COLOUR_QUANTILE)) if a.size >= 20 else top
    if lim <= 0.0:
        return (top if top > 0.0 else 1.0), False
    return lim, top > lim


def _grid(ax: Axes | None, figsize: tuple[float, float] | None, s: _Summary) -> dict[str, Axes]:
    """The counts, heatmap and colour bar Axes, in a new figure or in the place of ``ax``."""
    import matplotlib.pyplot as plt

    n_rows, n_groups = len(s.lfc), len(s.groups)
    ratios = {"height_ratios": [2.0, max(2.0, 0.16 * n_rows)], "width_ratios": [1.0, 0.05]}
    if ax is None:
        size = figsize or (max(4.0, 0.55 * n_groups + 2.5), 3.0 + 0.16 * n_rows)
        fig = plt.figure(figsize=size)
        own_figure(fig)
        gs = fig.add_gridspec(2, 2, hspace=0.25, wspace=0.05, **ratios)
    else:
        fig, box = ax.figure, ax.get_position()
        ax.remove()
        gs = fig.add_gridspec(
            2, 2, left=box.x0, right=box.x1, bottom=box.y0, top=box.y1, hspace=0.25, wspace=0.05, **ratios
        )
    counts = fig.add_subplot(gs[0, 0])
    heatmap = fig.add_subplot(gs[1, 0], sharex=counts)
    return {"counts": counts, "heatmap": heatmap, "colorbar": fig.add_subplot(gs[1, 1])}


@plot_doc
def groups_summary(
    adata: AnnData,
    coef: str | None = None,
    *,
    contrast: str | None = None,
    key: str = "scglmm",
    alpha: float = 0.05,
    lfc_threshold: float = 1.0,
    n_top: int = 20,
    gene_symbols: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> dict[str, Axes] | None:
    """Summary of a fit with ``groupby`` across its groups (e.g. cell types), as muscat users know it.

    Two panels, the groups as columns in both:

    - **bars**: per group the number of DE genes up (red) and down (blue). A gene is DE in a
      group when its Benjamini-Hochberg adjusted p-value (over the genes of that group) is
      below ``alpha`` and its absolute log2 fold change is at least ``lfc_threshold``, the call of
      :func:`scglmm.pl.volcano` of that group with ``p_threshold=alpha``.
    - **heatmap**: the log2 fold changes of the ``n_top`` top genes (rows) in every group, on a
      colour scale symmetric about 0 that reaches the 95th percentile of their absolute values (so
      that one extreme gene does not wash out the others; cells beyond it take the extreme colours,
      and the colour bar's arrows say so). Top genes are DE in at least one group, ordered by their
      smallest adjusted p-value over the groups (if no gene is DE: the genes with the smallest
      adjusted p-values, as the heatmap's title says). A dot marks a group in which the gene is
      DE; grey cells are missing values, a gene without an estimate in that group (see the
      ``status`` of :func:`scglmm.get.results`).

    Everything is read with :func:`scglmm.get.results`; groups that the fit skipped (too few cells
    or donors) are named in the title.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run with ``groupby``. Nothing is written to it.
    coef
        The design column to summarise, as in :func:`scglmm.get.results`; ``None`` takes the only
        non-intercept column.
    contrast
        Instead of ``coef``: a contrast tested with :func:`scglmm.tl.test` in every group.
    key
        The ``key_added`` of the fit.
    alpha
        Maximum adjusted p-value of a DE gene.
    lfc_threshold
        Minimum absolute log2 fold change of a DE gene (base 2, unlike the stored natural-log
        coefficients); 0 counts by the adjusted p-value alone.
    n_top
        Number of genes in the heatmap (fewer if fewer genes qualify).
    gene_symbols
        ``adata.var`` column with the names to print (default: ``var_names``).
    figsize
        Size of a new figure (ignored when ``ax`` is given); by default it grows with the number
        of groups and genes.
    ax
        Draw into the place of this Axes (it is replaced by the panels) instead of a new figure.
    {show_save}

    Returns
    -------
    If ``show`` is False, a dict of the Axes: ``"counts"`` (the bars), ``"heatmap"`` and
    ``"colorbar"``; else ``None``.
    """
    _check_args(alpha, lfc_threshold, n_top)
    s = _summary(adata, coef, contrast, key, (alpha, lfc_threshold), int(n_top))
    names = gene_labels(adata, gene_symbols)
    axes = _grid(ax, figsize, s)
    _draw_counts(axes["counts"], s, alpha, lfc_threshold)
    _draw_heatmap(axes["heatmap"], axes["colorbar"], s, names, adata.var_names)
    return None if finish(axes["counts"].figure, show=show, save=save) else axes
