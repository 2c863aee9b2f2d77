"""Calibration checks of the p-values of one coefficient or contrast: QQ plot and histogram."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import beta as beta_dist
from scipy.stats import chi2

from .._core._errors import InvalidValueError
from ._utils import check_count, check_unit, height, legend_outside, one_result, plot_doc, rank_stat, render, title_of

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["pvalue_hist", "pvalue_qq"]

_BLUE = "#1f4e79"


def _pvals(
    adata: AnnData, coef: str | None, contrast: str | None, group: str | None, key: str
) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The result, which genes have a p-value, and how many have none; raises if none has one."""
    res = one_result(adata, coef, contrast, group, key)
    ok = np.isfinite(res["p_value"].to_numpy(dtype=float))
    if not ok.any():
        msg = f"no gene has a p-value for {res.attrs['name']!r}; nothing to plot."
        raise InvalidValueError(msg, param="coef" if contrast is None else "contrast")
    return res, ok, int((~ok).sum())


def _render(
    panel: Callable[[Axes], None],
    title: str,
    legend_loc: str,
    *,
    ax: Axes | None,
    figsize: tuple[float, float] | None,
    show: bool | None,
    save: str | Path | None,
) -> Axes | None:
    """Draw ``panel`` with its ``title`` and legend (outside the axes, at ``legend_loc`` of
    :func:`legend_outside`), then :func:`render` it."""

    def draw(ax: Axes) -> None:
        panel(ax)
        ax.set_title(title, fontsize=9)
        legend_outside(ax, where=legend_loc)

    return render(draw, ax=ax, figsize=figsize, show=show, save=save)


# ------------------------------------------------------------------------------------------------
# QQ plot
# ------------------------------------------------------------------------------------------------
def _qq_points(res: pd.DataFrame, ok: np.ndarray, ci: float) -> dict[str, np.ndarray]:
    """Expected and observed heights in decreasing order, the band and which points are clipped."""
    n = int(ok.sum())
    y, clipped = height(res)
    order = np.lexsort((-rank_stat(res)[ok], -y[ok]))
    k = np.arange(1, n + 1)
    return {
        "exp": -np.log10(k / (n + 1.0)),
        "obs": y[ok][order],
        "clip": clipped[ok][order],
        "lo": -np.log10(beta_dist.ppf((1.0 + ci) / 2.0, k, n + 1 - k)),
        "hi": -np.log10(beta_dist.ppf((1.0 - ci) / 2.0, k, n + 1 - k)),
    }


def _inflation(res: pd.DataFrame, ok: np.ndarray) -> float:
    """Genomic inflation factor: median chi-square(1) quantile of the p-values over its null median."""
    return float(np.median(chi2.isf(res["p_value"].to_numpy(dtype=float)[ok], 1)) / chi2.ppf(0.5, 1))


def _draw_qq(ax: Axes, q: dict[str, np.ndarray], label: str, ci: float, point_size: float) -> None:
    exp, obs, clip = q["exp"], q["obs"], q["clip"]
    ax.fill_between(exp, q["lo"], q["hi"], color="0.85", linewidth=0, label=f"{ci:.0%} pointwise band (uniform)")
    top = float(exp.max())
    ax.plot([0, top], [0, top], color="0.3", linewidth=0.8, linestyle="--", label="uniform expectation")
    ax.scatter(exp[~clip], obs[~clip], s=point_size, c=_BLUE, linewidths=0, label=label, zorder=3)
    if clip.any():
        ax.scatter(exp[clip], obs[clip], s=2 * point_size, c=_BLUE, marker="^", linewidths=0, zorder=3)
    ax.set_xlabel(r"expected $-\log_{10}$ p (uniform)")
    ax.set_ylabel(r"observed $-\log_{10}$ p")


@plot_doc
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
    {one_result}
    ci
        Coverage of the pointwise band.
    point_size
        Marker area in points squared.
    {figure_axes}
    """
    check_unit("ci", ci, low=0.0, high=1.0)
    res, ok, n_nan = _pvals(adata, coef, contrast, group, key)
    q = _qq_points(res, ok, ci)
    label = f"{res.attrs['name']} (lambda = {_inflation(res, ok):.2f})"
    title = title_of(res, group, int(ok.sum()), n_nan=n_nan, n_clipped=int(q["clip"].sum()))
    panel = partial(_draw_qq, q=q, label=label, ci=ci, point_size=point_size)
    return _render(panel, title, "below", ax=ax, figsize=figsize, show=show, save=save)


# ------------------------------------------------------------------------------------------------
# histogram
# ------------------------------------------------------------------------------------------------
def _draw_hist(ax: Axes, p: np.ndarray, bins: int, alpha: float) -> None:
    n = p.size
    frac = float((p < alpha).mean())
    ax.hist(p, bins=np.linspace(0.0, 1.0, int(bins) + 1), color=_BLUE, edgecolor="white", linewidth=0.5)
    expected = n / bins
    ax.axhline(
        expected, color="0.3", linestyle="--", linewidth=0.8, label=f"uniform expectation ({expected:.3g} per bin)"
    )
    ax.plot([], [], " ", label=f"p < {alpha:g}: {frac:.1%} of genes (expected {alpha:.0%})")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("p-value")
    ax.set_ylabel("number of genes")


@plot_doc
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
    {one_result}
    bins
        Number of equal-width bins on [0, 1].
    alpha
        Level whose observed rejection rate is reported.
    {figure_axes}
    """
    check_count("bins", bins, low=1, what="positive")
    check_unit("alpha", alpha, low=0.0, high=1.0)
    res, ok, n_nan = _pvals(adata, coef, contrast, group, key)
    p = res["p_value"].to_numpy(dtype=float)[ok]
    title = title_of(res, group, p.size, n_nan=n_nan)
    panel = partial(_draw_hist, p=p, bins=bins, alpha=alpha)
    return _render(panel, title, "below", ax=ax, figsize=figsize, show=show, save=save)
