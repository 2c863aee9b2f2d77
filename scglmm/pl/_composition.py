"""Plot of a composition analysis: each sample's share of every cell type by condition (a line per donor),
and each type's log odds ratio with its interval."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from .._core._errors import InvalidValueError
from .._formula import parse_fit_formula
from ..get import composition as composition_table
from ..get._composition import sample_proportions
from ._utils import finish, legend_outside, own_figure

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["composition"]


def composition(
    adata: AnnData,
    coef: str,
    *,
    key: str = "scglmm_composition",
    donor_key: str | None = None,
    level: float = 0.95,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> dict[str, Axes] | None:
    """Cell-type shares per sample and the tested effect of every type (two panels).

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.composition` has run. Nothing is written to it.
    coef
        The coefficient, as in :func:`scglmm.get.composition`; its factor's levels are the groups of
        the left panel (a numeric coefficient is refused).
    key
        The ``key_added`` of the analysis.
    donor_key
        The column whose samples are joined by a line (default: the first grouping factor of the formula).
    level
        Coverage of the intervals (on the analysis' test: t with its df, else normal).
    figsize
        Size of a new figure (ignored when ``ax`` is given).
    ax
        Draw both panels in the place of this Axes instead of a new figure.
    show
        Call :func:`matplotlib.pyplot.show`; ``None`` follows ``scanpy.settings.autoshow``.
    save
        Write the figure to this path (format from the extension).

    Returns
    -------
    ``{"proportions": Axes, "effects": Axes}`` if ``show`` is False, else ``None``.
    """
    if not 0.0 < level < 1.0:
        msg = f"level={level!r}: a coverage between 0 and 1 is needed, e.g. 0.95."
        raise InvalidValueError(msg, param="level")
    tab = composition_table(adata, coef, key=key)
    props = sample_proportions(adata, key=key)
    factor = _factor(adata, key, tab)
    donor = donor_key or parse_fit_formula(str(adata.uns[key]["params"]["formula"])).specs[0].group[0]
    left, right = _panels(ax, figsize, len(tab))
    fig = left.figure
    _draw_shares(left, props, list(tab.index), factor, donor)
    _draw_effects(right, tab, level, coef)
    legend_outside(left, where="below", title=factor)
    return None if finish(fig, show=show, save=save) else {"proportions": left, "effects": right}


def _panels(ax: Axes | None, figsize: tuple[float, float] | None, n: int) -> tuple[Axes, Axes]:
    """The shares and effects Axes, in a new figure or in the place of ``ax``."""
    import matplotlib.pyplot as plt

    grid = {"width_ratios": [max(n, 3), 4], "wspace": 0.15}
    if ax is None:
        fig = plt.figure(figsize=figsize or (4.0 + 0.45 * n, 4.2))
        own_figure(fig)
        gs = fig.add_gridspec(1, 2, **grid)
    else:
        fig, box = ax.figure, ax.get_position()
        ax.remove()
        gs = fig.add_gridspec(1, 2, left=box.x0, right=box.x1, bottom=box.y0, top=box.y1, **grid)
    return fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1])


def _factor(adata: AnnData, key: str, tab: pd.DataFrame) -> str:
    """The variable whose levels the ``prop_<level>`` columns hold."""
    if "prop_mean" in tab.columns:
        msg = "the coefficient is numeric: the plot needs a factor's level (e.g. coef='condition')."
        raise InvalidValueError(msg, param="coef")
    params = adata.uns[key]["params"]
    variables = [str(v) for v in np.atleast_1d(params["factor_variables"])]
    levels = [c.removeprefix("prop_") for c in tab.columns if c.startswith("prop_")]
    obs = pd.DataFrame(adata.uns[key]["sample_obs"])
    return next(v for v in variables if set(obs[v].astype(str)) == set(levels))


def _draw_shares(ax: Axes, props: pd.DataFrame, types: list[str], factor: str, donor: str) -> None:
    """Per type, every sample's share at its level's offset, a line joining each donor's samples."""
    levels = list(pd.unique(props[factor].astype(str)))
    offsets = np.linspace(-0.25, 0.25, len(levels)) if len(levels) > 1 else np.zeros(1)
    colours = [f"C{i}" for i in range(len(levels))]
    x_of = dict(zip(levels, offsets, strict=True))
    for k, t in enumerate(types):
        for _, part in props.groupby(props[donor].astype(str)):
            part = part.assign(_x=[k + x_of[str(v)] for v in part[factor]]).sort_values("_x")
            if len(part) > 1:
                ax.plot(part["_x"], 100 * part[t], color="0.7", lw=0.7, zorder=1)
    for lv, off, col in zip(levels, offsets, colours, strict=True):
        sel = props[factor].astype(str) == lv
        for k, t in enumerate(types):
            ax.scatter(np.full(sel.sum(), k + off), 100 * props.loc[sel, t], s=12, color=col, zorder=2,
                       label=lv if k == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(types)))
    ax.set_xticklabels(types, rotation=90 if max(len(t) for t in types) * len(types) > 40 else 0)
    ax.set_xlim(-0.6, len(types) - 0.4)
    ax.set_ylabel("% of the sample's cells")
    ax.set_title("cell-type shares per sample")


def _draw_effects(ax: Axes, tab: pd.DataFrame, level: float, coef: str) -> None:
    """Each type's log odds ratio with its interval, significant ones (adjusted p < 0.05) filled."""
    df = tab["df"].to_numpy(float)
    q = np.where(np.isfinite(df), stats.t.ppf(0.5 + level / 2, np.where(np.isfinite(df), df, 1.0)),
                 stats.norm.ppf(0.5 + level / 2))  # fmt: skip
    y = np.arange(len(tab))[::-1]
    sig = (tab["adj_p_value"] < 0.05).to_numpy()
    ax.errorbar(tab["log_or"], y, xerr=q * tab["se"], fmt="none", ecolor="0.4", lw=1)
    ax.scatter(tab["log_or"][sig], y[sig], color="C3", s=22, zorder=3)
    ax.scatter(tab["log_or"][~sig], y[~sig], facecolor="white", edgecolor="0.3", s=22, zorder=3)
    ax.axvline(0.0, color="0.6", lw=0.8, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels(list(tab.index))
    ax.yaxis.tick_right()
    ax.set_xlabel(f"log odds ratio, {round(100 * level)}% interval")
    ax.set_title(f"{coef} (filled: adj. p < 0.05)", fontsize="medium")
