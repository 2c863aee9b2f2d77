"""Donor effects of one gene (being moved to its own module; the other plots already are)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from .._inputs import counts, log_offset
from .._layout import stored_log_offset
from ..get._results import _params
from ._utils import gene_labels as _labels

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from numpy.typing import ArrayLike

__all__ = ["donor_effects"]


def _new_ax(ax: Axes | None, figsize: tuple[float, float] | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize or (5.0, 4.2))
    return ax


def _finish(ax: Axes, show: bool | None, save: str | Path | None) -> Axes | None:
    if save is not None:
        ax.figure.savefig(save, bbox_inches="tight", dpi=150)
    if show is None:
        from scanpy import settings

        show = bool(settings.autoshow)
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        return None
    return ax


# ------------------------------------------------------------------------------------------------
# donor effects of one gene
# ------------------------------------------------------------------------------------------------
def _fit_offset(
    adata: AnnData,
    key: str,
    Y,
    size_factors: str | ArrayLike | None,
    offset: str | ArrayLike | None,
) -> np.ndarray:
    """The log offset of the fit for all cells of ``adata``: given, or the one stored by the fit."""
    if size_factors is not None or offset is not None:
        off, _ = log_offset(adata, Y, size_factors, offset)
        return off
    return stored_log_offset(adata, key)


def _donor_of(obs: pd.DataFrame, donor_key: str, column: str, donors: Sequence[str]) -> pd.Series:
    if column not in obs.columns:
        msg = f"color_by column {column!r} not in adata.obs; available columns: {list(obs.columns)}."
        raise KeyError(msg)
    d = obs[donor_key].astype(str)
    n_per = obs[column].groupby(d, observed=True).nunique(dropna=False)
    varying = n_per[n_per > 1]
    if len(varying):
        msg = (
            f"color_by column {column!r} must be constant within each donor, but varies within "
            f"{len(varying)} donor(s) (e.g. {list(varying.index[:3])}); choose a donor-level column."
        )
        raise ValueError(msg)
    first = obs[column].groupby(d, observed=True).first()
    return first.reindex(list(donors))


def donor_effects(
    adata: AnnData,
    gene: str,
    *,
    group: str | None = None,
    key: str = "scglmm",
    color_by: str | None = None,
    size_factors: str | ArrayLike | None = None,
    offset: str | ArrayLike | None = None,
    gene_symbols: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    r"""Each donor's effect on one gene: the fitted conditional mode beside the raw data.

    For donor :math:`i`, with the fixed-effect prediction :math:`\hat\eta_{ij} = x_{ij}^\top
    \hat\beta + o_{ij}` of each of its cells, the plot shows (all on the natural-log scale):

    - **filled circle**: the conditional mode :math:`\hat b_i` stored by :func:`scglmm.tl.fit`
      (shrunk towards 0 by the fitted donor variance), with a bar of :math:`\pm 1.96 / \sqrt{H_i}`,
      where :math:`H_i = \sum_j \theta\mu_{ij}(\theta + y_{ij})/(\theta + \mu_{ij})^2 +
      1/\hat\sigma^2` is the curvature used by the Laplace approximation (the conditional SD given
      the estimated parameters, like lme4's ``condVar``; it ignores the uncertainty of
      :math:`\hat\beta`, :math:`\hat\sigma^2`, :math:`\hat\theta`). At the boundary
      :math:`\hat\sigma^2 = 0` every mode is 0 and no bar is drawn.
    - **open diamond**: the unshrunk raw ratio :math:`\log(\sum_j y_{ij} / \sum_j
      e^{\hat\eta_{ij}})`, observed over fixed-effect-predicted counts of the donor. Donors with no
      counts have no finite ratio and are left out (counted in the legend).
    - **grey band**: :math:`\pm 1.96\,\hat\sigma`, where 95 % of donor effects fall under the model.

    The design is rebuilt from ``adata.uns[key]['params']`` and ``adata.obs``, the offset taken
    from ``adata.uns[key]['log_offset']`` (or rebuilt from its recorded source; pass
    ``size_factors`` or ``offset`` again if neither is possible). For a fit with ``groupby``,
    ``group`` chooses the group, and only its cells are used.

    Parameters
    ----------
    adata
        The AnnData that :func:`scglmm.tl.fit` was run on (same cells). Nothing is written to it.
    gene
        A var name (or a value of ``gene_symbols``).
    group
        For a fit with ``groupby``: the group to plot.
    key
        The ``key_added`` of the fit.
    color_by
        A donor-level ``adata.obs`` column (constant within each donor, e.g. a condition that
        varies between donors) to colour the donors by; colours come from
        ``adata.uns[f'{color_by}_colors']`` when scanpy stored them there.
    size_factors, offset
        As in :func:`scglmm.tl.fit`; only needed when the fit's offset was an array.
    gene_symbols
        ``adata.var`` column in which to look ``gene`` up.
    figsize
        Size of a new figure (ignored when ``ax`` is given).
    ax
        Draw into this Axes instead of a new figure.
    show
        Call :func:`matplotlib.pyplot.show`; ``None`` follows ``scanpy.settings.autoshow``.
    save
        Write the figure to this path (format from the extension).

    Returns
    -------
    The Axes if ``show`` is False, else ``None``.
    """
    from .._formula import build_design
    from ..tl._test import subkeys

    subs = subkeys(adata, key, group)
    if group is None and list(subs) != [""]:
        msg = f"the fit under key {key!r} was run with groupby; choose one group with group=, one of {list(subs)}."
        raise ValueError(msg)
    key = key if group is None else subs[str(group)]
    params = _params(adata, key)
    names = _labels(adata, gene_symbols)
    hits = np.flatnonzero(np.asarray(names == gene))
    if len(hits) != 1:
        where = "var_names" if gene_symbols is None else f"var[{gene_symbols!r}]"
        msg = f"gene {gene!r} found {len(hits)} times in {where}; give a name that occurs exactly once."
        raise KeyError(msg)
    g = int(hits[0])
    donor_key = params["donor_key"]
    modes_df = adata.varm[f"{key}_donor_effects"]
    donors = [str(d) for d in modes_df.columns]
    modes = modes_df.iloc[g].to_numpy(dtype=float)
    fitrow = adata.varm[f"{key}_fit"].iloc[g]
    sigma2, theta = float(fitrow["sigma2"]), float(fitrow["theta"])
    if not np.all(np.isfinite(modes)) or not np.isfinite(sigma2):
        msg = f"gene {gene!r} has no estimate (status {fitrow['status']!r}); there are no donor effects to plot."
        raise ValueError(msg)

    layer = params.get("layer", "X")
    Y, _ = counts(adata, None if layer == "X" else layer)
    off = _fit_offset(adata, key, Y, size_factors, offset)
    # a fit with groupby= stores each group under its own key; use that group's cells
    if params.get("groupby") is not None and "group" in params:
        cells = (adata.obs[params["groupby"]].astype(str) == str(params["group"])).to_numpy()
    else:
        cells = np.ones(adata.n_obs, dtype=bool)
    obs = adata.obs.loc[cells]
    y = Y[:, g]
    y = np.asarray(y.toarray() if sparse.issparse(y) else y, dtype=float).ravel()[cells]
    design = build_design(params["fixed_formula"], obs)
    beta = adata.varm[f"{key}_coef"].iloc[g][design.columns].to_numpy(dtype=float)
    eta = design.matrix @ beta + off[cells]
    d_lab = obs[donor_key].astype(str).to_numpy()
    codes = pd.Index(donors).get_indexer(d_lab)
    if np.any(codes < 0):
        extra = sorted(set(d_lab[codes < 0]))[:3]
        msg = f"cells of donors {extra} were not in the fit; plot the AnnData that was fitted."
        raise ValueError(msg)
    mu = np.exp(eta + modes[codes])
    w = mu if np.isinf(theta) else theta * mu * (theta + y) / (theta + mu) ** 2
    m = len(donors)
    H = np.bincount(codes, weights=w, minlength=m)
    cond_sd = 1.0 / np.sqrt(H + 1.0 / sigma2) if sigma2 > 0 else np.zeros(m)
    ysum = np.bincount(codes, weights=y, minlength=m)
    fsum = np.bincount(codes, weights=np.exp(eta), minlength=m)
    with np.errstate(divide="ignore"):
        raw = np.log(ysum) - np.log(fsum)

    if color_by is not None:
        lev = _donor_of(obs, donor_key, color_by, donors)
        col = adata.obs[color_by]
        from matplotlib import colormaps

        if isinstance(col.dtype, pd.CategoricalDtype):
            all_cats = [str(c) for c in col.cat.categories]
            palette = adata.uns.get(f"{color_by}_colors")
            if palette is None or len(palette) != len(all_cats):
                palette = [colormaps["tab10"](i % 10) for i in range(len(all_cats))]
            pal = dict(zip(all_cats, palette, strict=True))
        else:
            all_cats = sorted({str(v) for v in lev})
            pal = {c: colormaps["tab10"](i % 10) for i, c in enumerate(all_cats)}
        lev_s = lev.astype(str).to_numpy()
        cats = [c for c in all_cats if (lev_s == c).any()]
        rank = {c: i for i, c in enumerate(cats)}
        order = sorted(range(m), key=lambda i: (rank[lev_s[i]], modes[i], donors[i]))
        groups = [(c, [i for i in order if lev_s[i] == c], pal[c]) for c in cats]
    else:
        order = sorted(range(m), key=lambda i: (modes[i], donors[i]))
        groups = [(None, order, "#333333")]
    pos = np.empty(m)
    pos[order] = np.arange(m)

    ax = _new_ax(ax, figsize)
    if sigma2 > 0:
        s = 1.96 * np.sqrt(sigma2)
        ax.axhspan(-s, s, color="0.9", zorder=0, label=r"$\pm 1.96\,\hat\sigma$ (model spread)")
    ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=1)
    n_nocount = int((~np.isfinite(raw)).sum())
    for i, (c, idx, color) in enumerate(groups):
        idx = np.asarray(idx, dtype=int)
        lab = "" if c is None else f"{color_by} = {c}"
        ax.errorbar(
            pos[idx],
            modes[idx],
            yerr=1.96 * cond_sd[idx],
            fmt="o",
            color=color,
            markersize=6,
            capsize=2,
            linewidth=1,
            zorder=3,
            label=f"conditional mode ± 1.96 cond. SD{'' if c is None else f' ({lab})'}",
        )
        fin = idx[np.isfinite(raw[idx])]
        raw_label = "raw log(observed / fixed-effect fit)"
        if n_nocount:
            raw_label += f" ({n_nocount} donor(s) without counts not shown)"
        ax.scatter(
            pos[fin],
            raw[fin],
            marker="D",
            s=28,
            facecolors="none",
            edgecolors=[color],
            linewidths=1.2,
            zorder=4,
            label=raw_label if i == len(groups) - 1 else None,
        )
    ax.set_xticks(np.arange(m))
    ax.set_xticklabels([donors[i] for i in order], rotation=90 if m > 8 else 0, fontsize=8)
    ax.set_xlim(-0.6, m - 0.4)
    ax.set_xlabel(f"donor ({donor_key})")
    ax.set_ylabel("donor effect on log mean (natural log)")
    disp = "Poisson" if np.isinf(theta) else f"theta = {theta:.3g}"
    ax.set_title(f"{names[g]}: sigma2 = {sigma2:.3g}, {disp}, status {fitrow['status']}", fontsize=9)
    ax.legend(fontsize=7, loc="best", frameon=True, framealpha=0.85, edgecolor="none")
    return _finish(ax, show, save)
