"""Plots of stored fits: volcano, donor effects of one gene, p-value calibration checks.

All functions read what :func:`scglmm.tl.fit` stored and write nothing into the AnnData.
They follow scanpy's conventions: ``ax`` draws into an existing Axes, ``save`` writes the figure
to a file, ``show`` decides whether :func:`matplotlib.pyplot.show` is called, and the Axes is
returned when ``show`` is False.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import gammaln
from scipy.stats import beta as beta_dist
from scipy.stats import chi2, norm
from scipy.stats import t as t_dist

from .._inputs import counts, log_offset
from .._layout import stored_log_offset
from ..get._results import _params, results

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from numpy.typing import ArrayLike

__all__ = ["volcano", "donor_effects", "pvalue_qq", "pvalue_hist"]

_UP, _DOWN, _NS = "#c0392b", "#2471a3", "#b3b3b3"


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------
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


def neg_log10_p(stat: ArrayLike, df: ArrayLike = np.inf) -> np.ndarray:
    """``-log10`` of the two-sided p-value of ``stat`` (normal where ``df`` is inf, else t), exact in the far tail.

    Computed as ``-(log 2 + log S(|stat|)) / log 10`` with the log survival function ``S``, so it
    stays finite where the p-value itself underflows to 0 (z = 45 gives 441.5).
    """
    z = np.abs(np.asarray(stat, dtype=float))
    d = np.broadcast_to(np.asarray(df, dtype=float), z.shape)
    normal = np.isinf(d)
    with np.errstate(invalid="ignore"):
        logsf = np.where(normal, norm.logsf(z), t_dist.logsf(z, np.where(normal, 1.0, d)))
    return -(np.log(2.0) + logsf) / np.log(10.0)


def _chi2_neg_log10_sf(x: ArrayLike, df: ArrayLike) -> np.ndarray:
    """``-log10`` of the chi-square survival function, finite far beyond where it underflows.

    Where ``chi2.logsf`` gives ``-inf``, the leading terms of the asymptotic expansion of the
    upper incomplete gamma function are used: with ``a = df / 2`` and ``u = x / 2``,
    ``log Q(a, u) = (a - 1) log u - u - lgamma(a) + log(1 + (a - 1) / u) + O(u^-2)``.
    """
    x = np.asarray(x, dtype=float)
    df = np.broadcast_to(np.asarray(df, dtype=float), x.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = chi2.logsf(x, df)
        a, u = df / 2.0, x / 2.0
        asym = (a - 1.0) * np.log(u) - u - gammaln(a) + np.log1p((a - 1.0) / u)
    out = np.where(np.isneginf(out) & np.isfinite(asym), asym, out)
    return -out / np.log(10.0)


def _one_result(adata: AnnData, coef: str | None, contrast: str | None, group: str | None, key: str) -> pd.DataFrame:
    """:func:`scglmm.get.results` for exactly one coefficient or contrast of one fit or group."""
    from ..tl._test import subkeys

    if group is not None and not isinstance(group, str):
        msg = f"group must be the name of one group of the groupby fit; got {group!r}."
        raise TypeError(msg)
    subs = subkeys(adata, key, group)
    if group is None and list(subs) != [""]:
        msg = f"the fit under key {key!r} was run with groupby; choose one group with group=, one of {list(subs)}."
        raise ValueError(msg)
    res = results(adata, coef, contrast=contrast, group=group, key=key)
    res.attrs["name"] = str(res.attrs.get("contrast", res.attrs.get("coef", "")))
    return res


def _height(res: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``-log10 p`` of the stored p-values; genes whose p-value is 0 get their exact height.

    The exact height comes from the test statistic and its reference distribution as
    :func:`scglmm.get.results` reports them (``stat`` with ``attrs['df']`` or a ``df`` column; a
    chi-square for likelihood-ratio contrasts). Where that is not possible, p = 0 is clipped at
    the smallest positive p-value and flagged in the second output.
    """
    p = res["p_value"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = -np.log10(p)
    clipped = np.zeros(p.shape, dtype=bool)
    zero = p == 0
    if not zero.any():
        return y, clipped
    stat = res["stat"].to_numpy(dtype=float)[zero]
    if "df" in res.columns:
        df = res["df"].to_numpy(dtype=float)[zero]
    else:
        df = np.full(stat.shape, float(res.attrs.get("df", np.nan)))
    lrt = res.attrs.get("method") == "lrt"
    with np.errstate(invalid="ignore"):
        y[zero] = _chi2_neg_log10_sf(stat, df) if lrt else neg_log10_p(stat, df)
    bad = zero & ~np.isfinite(y)
    if bad.any():
        pos = p[p > 0]
        y[bad] = -np.log10(pos.min()) if pos.size else 0.0
        clipped = bad
    return y, clipped


def _rank_stat(res: pd.DataFrame) -> np.ndarray:
    """|test statistic|, to order genes with equal p-values."""
    return np.abs(res["stat"].to_numpy(dtype=float))


def _labels(adata: AnnData, gene_symbols: str | None) -> pd.Index:
    if gene_symbols is None:
        return adata.var_names
    if gene_symbols not in adata.var.columns:
        msg = f"gene_symbols column {gene_symbols!r} not in adata.var; available columns: {list(adata.var.columns)}."
        raise KeyError(msg)
    return pd.Index(adata.var[gene_symbols].astype(str))


def _check_unit(name: str, value: float, *, low: float, high: float) -> None:
    if not (np.isfinite(value) and low < value < high):
        msg = f"{name} must lie strictly between {low} and {high}; got {value!r}."
        raise ValueError(msg)


# ------------------------------------------------------------------------------------------------
# volcano
# ------------------------------------------------------------------------------------------------
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
    contrast
        Instead of ``coef``: a contrast tested with :func:`scglmm.tl.test`.
    group
        For a fit with ``groupby``: the group to plot.
    key
        The ``key_added`` of the fit.
    color_by
        An ``adata.var`` column (categorical, boolean or string) to colour the genes by, one colour
        per category. ``None`` colours by the call: up, down, not significant.
    lfc_threshold
        Minimum absolute log2 fold change of a significant gene (base 2, unlike the stored
        natural-log coefficients).
    p_threshold
        Maximum BH-adjusted p-value of a significant gene.
    n_labels
        Label this many significant genes, those with the smallest p-values.
    gene_symbols
        ``adata.var`` column with the names to print (default: ``var_names``).
    point_size
        Marker area in points squared.
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
    if lfc_threshold < 0 or not np.isfinite(lfc_threshold):
        msg = f"lfc_threshold must be a non-negative log2 fold change; got {lfc_threshold!r}."
        raise ValueError(msg)
    _check_unit("p_threshold", p_threshold, low=0.0, high=1.0)
    if not isinstance(n_labels, int | np.integer) or n_labels < 0:
        msg = f"n_labels must be a non-negative integer; got {n_labels!r}."
        raise ValueError(msg)
    res = _one_result(adata, coef, contrast, group, key)
    names = _labels(adata, gene_symbols)
    x = res["log2_fc"].to_numpy()
    y, clipped = _height(res)
    rank = _rank_stat(res)
    ok = np.isfinite(x) & np.isfinite(y)
    n_nan = int((~ok).sum())
    adj = res["adj_p_value"].to_numpy()
    with np.errstate(invalid="ignore"):
        sig = ok & (adj < p_threshold) & (np.abs(x) >= lfc_threshold)
        passed_p = ok & (adj < p_threshold)

    ax = _new_ax(ax, figsize)
    if color_by is None:
        classes = [
            (f"up ({int((sig & (x > 0)).sum())})", sig & (x > 0), _UP),
            (f"down ({int((sig & (x < 0)).sum())})", sig & (x < 0), _DOWN),
            (f"not significant ({int((ok & ~sig).sum())})", ok & ~sig, _NS),
        ]
        legend_title = f"adj. p < {p_threshold:g}, |log2 FC| >= {lfc_threshold:g}"
    else:
        if color_by not in adata.var.columns:
            msg = f"color_by column {color_by!r} not in adata.var; available columns: {list(adata.var.columns)}."
            raise KeyError(msg)
        col = adata.var[color_by]
        cats = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(pd.unique(col))
        vals = col.to_numpy()
        from matplotlib import colormaps

        cmap = colormaps["tab10"]
        classes = []
        for i, c in enumerate(cats):
            m = ok & (vals == c)
            if m.any():
                classes.append((f"{c} ({int(m.sum())})", m, cmap(i % 10)))
        legend_title = color_by
    for label, m, color in classes:
        ax.scatter(x[m & ~clipped], y[m & ~clipped], s=point_size, c=[color], label=label, linewidths=0)
        if (m & clipped).any():
            ax.scatter(x[m & clipped], y[m & clipped], s=2 * point_size, c=[color], marker="^", linewidths=0)

    if lfc_threshold > 0:
        for v in (-lfc_threshold, lfc_threshold):
            ax.axvline(v, color="0.4", linestyle="--", linewidth=0.8, gid="lfc_threshold")
    if passed_p.any():
        ax.axhline(y[passed_p].min(), color="0.4", linestyle="--", linewidth=0.8, gid="p_threshold")

    top = np.flatnonzero(sig)
    top = top[np.lexsort((-rank[top], -y[top]))][: int(n_labels)]
    for g in top:
        ax.annotate(
            str(names[g]),
            (x[g], y[g]),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=7,
            gid="gene_label",
        )
    name = res.attrs["name"]
    ax.set_xlabel(f"log2 fold change ({name})")
    ax.set_ylabel(r"$-\log_{10}$ p")
    title = f"{name}{'' if group is None else f' [{group}]'}: {int(ok.sum())} genes"
    if n_nan:
        title += f" ({n_nan} with no estimate not shown)"
    if clipped.any():
        title += f"\n{int(clipped.sum())} with p = 0 clipped at the smallest p (triangles)"
    ax.set_title(title, fontsize=9)
    ax.legend(
        title=legend_title, fontsize=7, title_fontsize=7, loc="best", frameon=True, framealpha=0.85, edgecolor="none"
    )
    return _finish(ax, show, save)


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


# ------------------------------------------------------------------------------------------------
# calibration
# ------------------------------------------------------------------------------------------------
def _pvals(
    adata: AnnData, coef: str | None, contrast: str | None, group: str | None, key: str
) -> tuple[pd.DataFrame, np.ndarray, int]:
    res = _one_result(adata, coef, contrast, group, key)
    ok = np.isfinite(res["p_value"].to_numpy(dtype=float))
    return res, ok, int((~ok).sum())


def pvalue_qq(
    adata: AnnData,
    coef: str | None = None,
    *,
    contrast: str | None = None,
    group: str | None = None,
    key: str = "scglmm",
    ci: float = 0.95,
    point_size: float = 8.0,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    r"""QQ plot of the p-values of one coefficient or contrast against the uniform distribution.

    The k-th smallest of n p-values is drawn at expected :math:`-\log_{10}(k/(n+1))` against
    observed :math:`-\log_{10} p` (the stored p-values; exact heights where p underflowed to 0,
    as in :func:`volcano`). Under a true null for every gene the points follow the diagonal; the
    grey band is the pointwise ``ci`` interval of the k-th order statistic of n uniforms
    (:math:`\mathrm{Beta}(k, n+1-k)`). The legend gives the genomic inflation factor
    :math:`\lambda = \mathrm{median}(q) / \chi^2_{1, 0.5}`, with :math:`q` the :math:`\chi^2_1`
    quantile of each p-value (1 when calibrated). Use it on data where nothing should be found
    (e.g. a fake donor split) or on the bulk of genes. Genes without an estimate are left out
    and counted in the title.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run. Nothing is written to it.
    coef
        The design column, as in :func:`scglmm.get.results`.
    contrast
        Instead of ``coef``: a contrast tested with :func:`scglmm.tl.test`.
    group
        For a fit with ``groupby``: the group to plot.
    key
        The ``key_added`` of the fit.
    ci
        Coverage of the pointwise band.
    point_size
        Marker area in points squared.
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
    _check_unit("ci", ci, low=0.0, high=1.0)
    res, ok, n_nan = _pvals(adata, coef, contrast, group, key)
    name = res.attrs["name"]
    n = int(ok.sum())
    if n == 0:
        msg = f"no gene has a p-value for {name!r}; nothing to plot."
        raise ValueError(msg)
    height, clipped = _height(res)
    order = np.lexsort((-_rank_stat(res)[ok], -height[ok]))
    obs = height[ok][order]
    clip = clipped[ok][order]
    k = np.arange(1, n + 1)
    exp = -np.log10(k / (n + 1.0))
    lo = -np.log10(beta_dist.ppf((1.0 + ci) / 2.0, k, n + 1 - k))
    hi = -np.log10(beta_dist.ppf((1.0 - ci) / 2.0, k, n + 1 - k))
    lam = float(np.median(chi2.isf(res["p_value"].to_numpy(dtype=float)[ok], 1)) / chi2.ppf(0.5, 1))

    ax = _new_ax(ax, figsize)
    ax.fill_between(exp, lo, hi, color="0.85", linewidth=0, label=f"{ci:.0%} pointwise band (uniform)")
    top = float(exp.max())
    ax.plot([0, top], [0, top], color="0.3", linewidth=0.8, linestyle="--", label="uniform expectation")
    ax.scatter(
        exp[~clip], obs[~clip], s=point_size, c="#1f4e79", linewidths=0, label=f"{name} (lambda = {lam:.2f})", zorder=3
    )
    if clip.any():
        ax.scatter(exp[clip], obs[clip], s=2 * point_size, c="#1f4e79", marker="^", linewidths=0, zorder=3)
    ax.set_xlabel(r"expected $-\log_{10}$ p (uniform)")
    ax.set_ylabel(r"observed $-\log_{10}$ p")
    title = f"{name}{'' if group is None else f' [{group}]'}: {n} genes"
    if n_nan:
        title += f" ({n_nan} with no estimate not shown)"
    if clip.any():
        title += f"\n{int(clip.sum())} with p = 0 clipped at the smallest p (triangles)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", frameon=True, framealpha=0.85, edgecolor="none")
    return _finish(ax, show, save)


def pvalue_hist(
    adata: AnnData,
    coef: str | None = None,
    *,
    contrast: str | None = None,
    group: str | None = None,
    key: str = "scglmm",
    bins: int = 20,
    alpha: float = 0.05,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Histogram of the p-values of one coefficient or contrast, with the count expected if all are null.

    Under a true null for every gene the p-values are uniform: each of the ``bins`` equal bins on
    [0, 1] expects ``n / bins`` genes (dashed line). A peak at 0 on data where nothing should be
    found means anti-conservative p-values; a peak at 1 means conservative ones. The legend gives
    the fraction of genes with p < ``alpha`` (expected: ``alpha``). Genes without an estimate are
    left out and counted in the title.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run. Nothing is written to it.
    coef
        The design column, as in :func:`scglmm.get.results`.
    contrast
        Instead of ``coef``: a contrast tested with :func:`scglmm.tl.test`.
    group
        For a fit with ``groupby``: the group to plot.
    key
        The ``key_added`` of the fit.
    bins
        Number of equal-width bins on [0, 1].
    alpha
        Level whose observed rejection rate is reported.
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
    if not isinstance(bins, int | np.integer) or bins < 1:
        msg = f"bins must be a positive integer; got {bins!r}."
        raise ValueError(msg)
    _check_unit("alpha", alpha, low=0.0, high=1.0)
    res, ok, n_nan = _pvals(adata, coef, contrast, group, key)
    name = res.attrs["name"]
    p = res["p_value"].to_numpy(dtype=float)[ok]
    n = p.size
    if n == 0:
        msg = f"no gene has a p-value for {name!r}; nothing to plot."
        raise ValueError(msg)
    frac = float((p < alpha).mean())
    ax = _new_ax(ax, figsize)
    ax.hist(p, bins=np.linspace(0.0, 1.0, int(bins) + 1), color="#1f4e79", edgecolor="white", linewidth=0.5)
    ax.axhline(
        n / bins,
        color="0.3",
        linestyle="--",
        linewidth=0.8,
        label=f"uniform expectation ({n / bins:.3g} per bin)",
    )
    ax.plot([], [], " ", label=f"p < {alpha:g}: {frac:.1%} of genes (expected {alpha:.0%})")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("p-value")
    ax.set_ylabel("number of genes")
    title = f"{name}{'' if group is None else f' [{group}]'}: {n} genes"
    if n_nan:
        title += f" ({n_nan} with no estimate not shown)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right", frameon=True, framealpha=0.85, edgecolor="none")
    return _finish(ax, show, save)
