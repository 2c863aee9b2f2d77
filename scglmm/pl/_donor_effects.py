"""Each donor's effect on one gene: the stored conditional modes beside the raw per-donor data.

Three steps: resolve the run and the gene (:func:`_stored_gene`), rebuild the per-donor data
from the counts, the design and the offset of the fit (:func:`_rebuild`), draw
(:func:`_donor_order`, :func:`_draw_donors`, :func:`_draw_text`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from .._core._errors import InvalidValueError, MissingKeyError
from .._formula import build_design
from .._inputs import counts, log_offset
from .._layout import fit_params, stored_log_offset, varm_key
from ._utils import LEGEND, gene_labels, render, run_key

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from numpy.typing import ArrayLike

__all__ = ["donor_effects"]

#: (category of color_by or None, donor indices in drawing order, colour)
_Group = tuple[str | None, list[int], object]


@dataclass(frozen=True)
class _Gene:
    """What the fit stored for one gene of one run."""

    sub: str  # run key
    params: dict  # uns[sub]["params"]
    index: int  # position in var
    label: str  # name to print
    donors: list[str]  # the fitted donors, in stored order
    modes: np.ndarray  # conditional modes, one per donor
    sigma2: float
    theta: float
    status: str


@dataclass(frozen=True)
class _Donors:
    """The per-donor data rebuilt from the counts of the run's cells."""

    obs: pd.DataFrame  # obs of the run's cells
    cond_sd: np.ndarray  # conditional SD of each mode
    raw: np.ndarray  # log(observed / fixed-effect-predicted counts), -inf or NaN without counts


# ------------------------------------------------------------------------------------------------
# step 1: the run and the gene
# ------------------------------------------------------------------------------------------------
def _gene_index(adata: AnnData, gene: str, gene_symbols: str | None) -> tuple[int, str]:
    """Position of ``gene`` in ``var`` and its printed name; it must occur exactly once."""
    names = gene_labels(adata, gene_symbols)
    hits = np.flatnonzero(np.asarray(names == gene))
    if len(hits) != 1:
        where = "var_names" if gene_symbols is None else f"var[{gene_symbols!r}]"
        msg = f"gene {gene!r} found {len(hits)} times in {where}; give a name that occurs exactly once."
        raise MissingKeyError(msg, param="gene")
    g = int(hits[0])
    return g, str(names[g])


def _stored_gene(adata: AnnData, gene: str, group: str | None, key: str, gene_symbols: str | None) -> _Gene:
    """The stored modes and variance parameters of ``gene``; raises if the gene has no estimate."""
    sub = run_key(adata, key, group)
    params = fit_params(adata, sub)
    g, label = _gene_index(adata, gene, gene_symbols)
    if varm_key(sub, "donor_effects") not in adata.varm:  # a general random-effect structure
        msg = (
            f"donor_effects plots fits with one donor random intercept; the fit under {sub!r} has the structure "
            f"{params.get('random_structure', '?')!r} (its conditional modes are in "
            f"adata.varm[{varm_key(sub, 'modes')!r}], its variance components in scglmm.get.varcomp)."
        )
        raise InvalidValueError(msg, param="key")
    modes_df = adata.varm[varm_key(sub, "donor_effects")]
    fitrow = adata.varm[varm_key(sub, "fit")].iloc[g]
    t = _Gene(
        sub=sub,
        params=params,
        index=g,
        label=label,
        donors=[str(d) for d in modes_df.columns],
        modes=modes_df.iloc[g].to_numpy(dtype=float),
        sigma2=float(fitrow["sigma2"]),
        theta=float(fitrow["theta"]),
        status=fitrow["status"],
    )
    if not np.all(np.isfinite(t.modes)) or not np.isfinite(t.sigma2):
        msg = f"gene {gene!r} has no estimate (status {t.status!r}); there are no donor effects to plot."
        raise InvalidValueError(msg, param="gene")
    return t


# ------------------------------------------------------------------------------------------------
# step 2: the per-donor data
# ------------------------------------------------------------------------------------------------
def _fit_offset(
    adata: AnnData, sub: str, Y: object, size_factors: str | ArrayLike | None, offset: str | ArrayLike | None
) -> np.ndarray:
    """The log offset of the fit for all cells of ``adata``: given, or the one stored by the fit."""
    if size_factors is not None or offset is not None:
        off, _ = log_offset(adata, Y, size_factors, offset)
        return off
    return stored_log_offset(adata, sub)


def _run_cells(adata: AnnData, params: dict) -> np.ndarray:
    """The cells of the run: a fit with ``groupby`` stores each group under its own key."""
    if params.get("groupby") is not None and "group" in params:
        return (adata.obs[params["groupby"]].astype(str) == str(params["group"])).to_numpy()
    return np.ones(adata.n_obs, dtype=bool)


def _donor_codes(obs: pd.DataFrame, donor_key: str, donors: Sequence[str]) -> np.ndarray:
    """Index of each cell's donor among the fitted donors."""
    d_lab = obs[donor_key].astype(str).to_numpy()
    codes = pd.Index(donors).get_indexer(d_lab)
    if np.any(codes < 0):
        extra = sorted(set(d_lab[codes < 0]))[:3]
        msg = f"cells of donors {extra} were not in the fit; plot the AnnData that was fitted."
        raise InvalidValueError(msg, param="adata")
    return codes


def _per_donor(t: _Gene, y: np.ndarray, eta: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Conditional SD of each mode (Laplace curvature) and the raw log ratio of each donor."""
    m = len(t.donors)
    mu = np.exp(eta + t.modes[codes])
    w = mu if np.isinf(t.theta) else t.theta * mu * (t.theta + y) / (t.theta + mu) ** 2
    H = np.bincount(codes, weights=w, minlength=m)
    cond_sd = 1.0 / np.sqrt(H + 1.0 / t.sigma2) if t.sigma2 > 0 else np.zeros(m)
    ysum = np.bincount(codes, weights=y, minlength=m)
    fsum = np.bincount(codes, weights=np.exp(eta), minlength=m)
    with np.errstate(divide="ignore"):
        raw = np.log(ysum) - np.log(fsum)
    return cond_sd, raw


def _rebuild(adata: AnnData, t: _Gene, size_factors: str | ArrayLike | None, offset: str | ArrayLike | None) -> _Donors:
    """Counts, fixed-effect prediction (design rebuilt from the stored formula) and per-donor data."""
    layer = t.params.get("layer", "X")
    Y, _ = counts(adata, None if layer == "X" else layer)
    off = _fit_offset(adata, t.sub, Y, size_factors, offset)
    cells = _run_cells(adata, t.params)
    obs = adata.obs.loc[cells]
    y = Y[:, t.index]
    y = np.asarray(y.toarray() if sparse.issparse(y) else y, dtype=float).ravel()[cells]
    design = build_design(t.params["fixed_formula"], obs)
    beta = adata.varm[varm_key(t.sub, "coef")].iloc[t.index][design.columns].to_numpy(dtype=float)
    eta = design.matrix @ beta + off[cells]
    codes = _donor_codes(obs, t.params["donor_key"], t.donors)
    cond_sd, raw = _per_donor(t, y, eta, codes)
    return _Donors(obs, cond_sd, raw)


# ------------------------------------------------------------------------------------------------
# step 3: draw
# ------------------------------------------------------------------------------------------------
def _donor_levels(obs: pd.DataFrame, donor_key: str, column: str, donors: Sequence[str]) -> pd.Series:
    """The value of ``obs[column]`` of each donor; it must be constant within each donor."""
    if column not in obs.columns:
        msg = f"color_by column {column!r} not in adata.obs; available columns: {list(obs.columns)}."
        raise MissingKeyError(msg, param="color_by")
    d = obs[donor_key].astype(str)
    n_per = obs[column].groupby(d, observed=True).nunique(dropna=False)
    varying = n_per[n_per > 1]
    if len(varying):
        msg = (
            f"color_by column {column!r} must be constant within each donor, but varies within "
            f"{len(varying)} donor(s) (e.g. {list(varying.index[:3])}); choose a donor-level column."
        )
        raise InvalidValueError(msg, param="color_by")
    first = obs[column].groupby(d, observed=True).first()
    return first.reindex(list(donors))


def _palette(adata: AnnData, color_by: str, lev: pd.Series) -> tuple[list[str], dict[str, object]]:
    """All categories of ``color_by`` in order and their colours (scanpy's ``uns`` colours if stored)."""
    from matplotlib import colormaps

    col = adata.obs[color_by]
    if isinstance(col.dtype, pd.CategoricalDtype):
        all_cats = [str(c) for c in col.cat.categories]
        palette = adata.uns.get(f"{color_by}_colors")
        if palette is None or len(palette) != len(all_cats):
            palette = [colormaps["tab10"](i % 10) for i in range(len(all_cats))]
        return all_cats, dict(zip(all_cats, palette, strict=True))
    all_cats = sorted({str(v) for v in lev})
    return all_cats, {c: colormaps["tab10"](i % 10) for i, c in enumerate(all_cats)}


def _donor_order(adata: AnnData, t: _Gene, obs: pd.DataFrame, color_by: str | None) -> tuple[list[int], list[_Group]]:
    """Donors left to right (by category of ``color_by``, then by mode) and the groups to draw."""
    m, modes, donors = len(t.donors), t.modes, t.donors
    if color_by is None:
        order = sorted(range(m), key=lambda i: (modes[i], donors[i]))
        return order, [(None, order, "#333333")]
    lev = _donor_levels(obs, t.params["donor_key"], color_by, donors)
    all_cats, pal = _palette(adata, color_by, lev)
    lev_s = lev.astype(str).to_numpy()
    cats = [c for c in all_cats if (lev_s == c).any()]
    rank = {c: i for i, c in enumerate(cats)}
    order = sorted(range(m), key=lambda i: (rank[lev_s[i]], modes[i], donors[i]))
    return order, [(c, [i for i in order if lev_s[i] == c], pal[c]) for c in cats]


def _draw_donors(ax: Axes, t: _Gene, d: _Donors, order: list[int], groups: list[_Group], color_by: str | None) -> None:
    """The model band, and per donor the mode with its bar and the raw ratio."""
    pos = np.empty(len(t.donors))
    pos[order] = np.arange(len(t.donors))
    if t.sigma2 > 0:
        s = 1.96 * np.sqrt(t.sigma2)
        ax.axhspan(-s, s, color="0.9", zorder=0, label=r"$\pm 1.96\,\hat\sigma$ (model spread)")
    ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=1)
    n_nocount = int((~np.isfinite(d.raw)).sum())
    raw_label = "raw log(observed / fixed-effect fit)"
    if n_nocount:
        raw_label += f" ({n_nocount} donor(s) without counts not shown)"
    for i, (c, idx, color) in enumerate(groups):
        idx = np.asarray(idx, dtype=int)
        lab = "" if c is None else f" ({color_by} = {c})"
        ax.errorbar(
            pos[idx],
            t.modes[idx],
            yerr=1.96 * d.cond_sd[idx],
            fmt="o",
            color=color,
            markersize=6,
            capsize=2,
            linewidth=1,
            zorder=3,
            label=f"conditional mode ± 1.96 cond. SD{lab}",
        )
        fin = idx[np.isfinite(d.raw[idx])]
        last = i == len(groups) - 1
        ax.scatter(
            pos[fin],
            d.raw[fin],
            marker="D",
            s=28,
            facecolors="none",
            edgecolors=[color],
            linewidths=1.2,
            zorder=4,
            label=raw_label if last else None,
        )


def _draw_text(ax: Axes, t: _Gene, order: list[int]) -> None:
    m = len(t.donors)
    ax.set_xticks(np.arange(m))
    ax.set_xticklabels([t.donors[i] for i in order], rotation=90 if m > 8 else 0, fontsize=8)
    ax.set_xlim(-0.6, m - 0.4)
    ax.set_xlabel(f"donor ({t.params['donor_key']})")
    ax.set_ylabel("donor effect on log mean (natural log)")
    disp = "Poisson" if np.isinf(t.theta) else f"theta = {t.theta:.3g}"
    ax.set_title(f"{t.label}: sigma2 = {t.sigma2:.3g}, {disp}, status {t.status}", fontsize=9)
    ax.legend(loc="best", **LEGEND)


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
    t = _stored_gene(adata, gene, group, key, gene_symbols)
    d = _rebuild(adata, t, size_factors, offset)
    order, groups = _donor_order(adata, t, d.obs, color_by)

    def draw(ax: Axes) -> None:
        _draw_donors(ax, t, d, order, groups, color_by)
        _draw_text(ax, t, order)

    return render(draw, ax=ax, figsize=figsize, show=show, save=save)
