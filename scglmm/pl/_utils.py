"""Helpers shared by the plots: the Axes / ``show`` / ``save`` convention and its docs, the run and
the result to plot, titles, gene labels, input checks, and the ``-log10 p`` heights of the stored
p-values."""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import gammaln
from scipy.stats import chi2, norm
from scipy.stats import t as t_dist

from .._core._errors import InvalidTypeError, InvalidValueError, MissingKeyError
from .._layout import fit_params, run_keys
from ..get import results
from ..get._docs import with_sections

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend
    from numpy.typing import ArrayLike

__all__ = [
    "DOWN",
    "LEGEND",
    "NS",
    "UP",
    "check_count",
    "check_unit",
    "chi2_neg_log10_sf",
    "finish",
    "gene_labels",
    "height",
    "legend_outside",
    "neg_log10_p",
    "one_result",
    "own_figure",
    "plot_doc",
    "rank_stat",
    "readable_name",
    "render",
    "run_key",
    "title_of",
]

#: Colours of the volcano's calls: up, down, not significant.
UP, DOWN, NS = "#c0392b", "#2471a3", "#b3b3b3"

#: Legend style shared by the plots.
LEGEND = {"fontsize": 7, "frameon": True, "framealpha": 0.85, "edgecolor": "none"}


# ------------------------------------------------------------------------------------------------
# Axes, show, save
# ------------------------------------------------------------------------------------------------
#: ``show`` and ``save`` of every plot.
_SHOW_SAVE = """\
show
    Call :func:`matplotlib.pyplot.show`; ``None`` follows ``scanpy.settings.autoshow``.
save
    Write the figure to this path (format from the extension)."""

#: ``contrast``, ``group`` and ``key`` of the plots of one result (:func:`one_result`).
_CONTRAST_GROUP_KEY = """\
contrast
    Instead of ``coef``: a contrast tested with :func:`scglmm.tl.test`.
group
    For a fit with ``groupby``: the group to plot.
key
    The ``key_added`` of the fit."""

#: The parameters of the plots, and the return value, that read the same in each one's docstring.
_PLOT_SECTIONS = {
    # a plot on one Axes: figsize, ax, show, save and what it returns
    "figure_axes": f"""\
figsize
    Size of a new figure (ignored when ``ax`` is given); enlarged where the legend, placed outside
    the axes, needs room.
ax
    Draw into this Axes instead of a new figure.
{_SHOW_SAVE}

Returns
-------
The Axes if ``show`` is False, else ``None``.""",
    "show_save": _SHOW_SAVE,
    # the parameters of :func:`one_result`, with ``coef`` or after a plot's own ``coef``
    "one_result": f"""\
adata
    An AnnData on which :func:`scglmm.tl.fit` has run. Nothing is written to it.
coef
    The design column, as in :func:`scglmm.get.results`.
{_CONTRAST_GROUP_KEY}""",
    "contrast_group_key": _CONTRAST_GROUP_KEY,
}

#: Decorator of the plots: fills each marker line ``{name}`` of a docstring (``{figure_axes}``,
#: ``{show_save}``, ``{one_result}``, ``{contrast_group_key}``) with that section of :data:`_PLOT_SECTIONS`.
plot_doc = with_sections(**_PLOT_SECTIONS)


def render(
    draw: Callable[[Axes], None],
    *,
    ax: Axes | None,
    figsize: tuple[float, float] | None,
    show: bool | None,
    save: str | Path | None,
) -> Axes | None:
    """Call ``draw`` on ``ax`` (or a new figure's Axes), then save and show as scanpy does.

    Returns the Axes unless the figure was shown (``show``; ``None`` follows
    ``scanpy.settings.autoshow``).
    """
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize or (5.0, 4.2))
        _OWN_FIGURES.add(fig)
    draw(ax)
    return None if finish(ax.figure, show=show, save=save) else ax


#: The figures that a plot made itself (``ax`` not given): :func:`legend_outside` may lay them out.
_OWN_FIGURES: weakref.WeakSet = weakref.WeakSet()

#: Gap in points between a legend outside the axes and what it is placed next to.
_LEGEND_GAP = 6.0


def own_figure(fig: Figure) -> None:
    """Mark ``fig`` as made by the plot, so that :func:`legend_outside` lays it out."""
    _OWN_FIGURES.add(fig)


def legend_outside(ax: Axes, *, where: str = "below", **kwargs) -> Legend:
    """The legend of ``ax`` outside its data area, so that it covers neither data nor text.

    ``where="below"``: centred under the x tick labels and the x label (one column, as wide as its
    longest entry); ``"right"``: right of the axes, top-aligned. Call it after the axis labels and
    tick labels are set. A figure that the plot made itself is then laid out again
    (enlarged where the legend reaches beyond an edge, its Axes keeping their size); in a
    figure given through ``ax`` the legend may reach beyond the figure's edge, as scanpy's legends
    in the right margin do (``save`` writes with ``bbox_inches="tight"``).
    """
    from matplotlib.transforms import offset_copy

    fig = ax.figure
    style = {**LEGEND, "borderaxespad": 0.0, **kwargs}
    if where == "right":
        anchor = offset_copy(ax.transAxes, fig=fig, x=_LEGEND_GAP, y=0.0, units="points")
        legend = ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), bbox_transform=anchor, **style)
    else:
        renderer = fig.canvas.get_renderer()
        frame = ax.get_window_extent(renderer)
        below = ax.get_tightbbox(renderer)  # the x tick labels and the x label, before the legend
        drop = max(frame.y0 - below.y0, 0.0) * 72.0 / fig.dpi + _LEGEND_GAP
        anchor = offset_copy(ax.transAxes, fig=fig, x=0.0, y=-drop, units="points")
        legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=anchor, **style)
    if fig in _OWN_FIGURES:
        _grow_to_fit(fig)
    return legend


def _grow_to_fit(fig: Figure, pad: float = 0.05) -> None:
    """Enlarge ``fig`` where its content (a legend outside the axes, a long label) reaches beyond
    an edge, keeping every Axes at its size in inches: the data area stays as ``figsize`` made it."""
    renderer = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(renderer)  # inches
    width, height = fig.get_size_inches()
    left, bottom = max(-tight.x0 + pad, 0.0), max(-tight.y0 + pad, 0.0)
    right, top = max(tight.x1 - width + pad, 0.0), max(tight.y1 - height + pad, 0.0)
    if left + right + bottom + top == 0.0:
        return
    boxes = [(ax, ax.get_position()) for ax in fig.axes]
    new_w, new_h = width + left + right, height + bottom + top
    fig.set_size_inches(new_w, new_h)
    for ax, p in boxes:
        ax.set_position(
            [
                (p.x0 * width + left) / new_w,
                (p.y0 * height + bottom) / new_h,
                p.width * width / new_w,
                p.height * height / new_h,
            ]
        )


def finish(fig: Figure, *, show: bool | None, save: str | Path | None) -> bool:
    """Save ``fig`` if ``save`` is a path, then show it as scanpy does; return whether it was shown
    (``show``; ``None`` follows ``scanpy.settings.autoshow``)."""
    if save is not None:
        fig.savefig(save, bbox_inches="tight", dpi=150)
    if show is None:
        from scanpy import settings

        show = bool(settings.autoshow)
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return bool(show)


# ------------------------------------------------------------------------------------------------
# what to plot
# ------------------------------------------------------------------------------------------------
def run_key(adata: AnnData, key: str, group: str | None) -> str:
    """The run key of the fit under ``key`` (of its group ``group`` for a fit with ``groupby``)."""
    if group is not None and not isinstance(group, str):
        msg = f"group must be the name of one group of the groupby fit; got {group!r}."
        raise InvalidTypeError(msg, param="group")
    subs = run_keys(adata, key, group)
    if group is None and list(subs) != [""]:
        msg = f"the fit under key {key!r} was run with groupby; choose one group with group=, one of {list(subs)}."
        raise InvalidValueError(msg, param="group")
    return subs[""] if group is None else subs[group]


def one_result(adata: AnnData, coef: str | None, contrast: str | None, group: str | None, key: str) -> pd.DataFrame:
    """:func:`scglmm.get.results` for exactly one coefficient or contrast of one fit or group;
    ``attrs["name"]`` names it as stored, ``attrs["title"]`` in words (:func:`readable_name`)."""
    sub = run_key(adata, key, group)
    res = results(adata, coef, contrast=contrast, group=group, key=key)
    res.attrs["name"] = str(res.attrs.get("contrast", res.attrs.get("coef", "")))
    res.attrs["title"] = readable_name(res.attrs["name"], fit_params(adata, sub))
    return res


#: A design column coding one level of a factor, as formulaic names it: ``condition[T.stim]``.
_LEVEL_COLUMN = re.compile(r"^(?P<variable>[^\[\]:]+)\[T\.(?P<level>[^\]]*)\]$")


def readable_name(name: str, params: Mapping) -> str:
    """A design column or contrast in words, for titles.

    A column coding one level of a factor reads ``"stim vs ctrl"`` (its reference level from
    ``params["reference_levels"]``; a boolean column ``flag`` reads ``"flag: True vs False"``),
    a numeric covariate ``"pct_mito (per unit increase)"``. Anything else (interactions,
    contrasts, columns of other codings) keeps its stored name.
    """
    reference = {str(k): str(v) for k, v in dict(params.get("reference_levels", {})).items()}
    hit = _LEVEL_COLUMN.match(name)
    if hit is not None and reference.get(hit["variable"].strip("`")):
        return f"{hit['level']} vs {reference[hit['variable'].strip('`')]}"
    if name not in list(params.get("design_columns", [])) or name == "Intercept" or ":" in name or hit is not None:
        return name
    if reference.get(name.strip("`")) == "":  # a boolean column is coded as one 0/1 column
        return f"{name}: True vs False"
    return name if name.strip("`") in reference else f"{name} (per unit increase)"


def title_of(res: pd.DataFrame, group: str | None, n: int, *, n_nan: int = 0, n_clipped: int = 0) -> str:
    """``"title [group]: n genes"``, the start of every title of a result (``title`` in words).

    Then, where there are any, the ``n_nan`` genes not shown for want of an estimate, and on a
    new line the ``n_clipped`` genes with p = 0 drawn as triangles at the smallest p.
    """
    title = f"{res.attrs.get('title', res.attrs['name'])}{'' if group is None else f' [{group}]'}: {n} genes"
    if n_nan:
        title += f" ({n_nan} with no estimate not shown)"
    if n_clipped:
        title += f"\n{n_clipped} with p = 0 clipped at the smallest p (triangles)"
    return title


def gene_labels(adata: AnnData, gene_symbols: str | None) -> pd.Index:
    """The names to print for the genes: ``var_names`` or the ``gene_symbols`` column of ``var``."""
    if gene_symbols is None:
        return adata.var_names
    if gene_symbols not in adata.var.columns:
        msg = f"gene_symbols column {gene_symbols!r} not in adata.var; available columns: {list(adata.var.columns)}."
        raise MissingKeyError(msg, param="gene_symbols")
    return pd.Index(adata.var[gene_symbols].astype(str))


def check_unit(name: str, value: float, *, low: float, high: float) -> None:
    """Raise unless ``low < value < high`` (``name`` is the parameter)."""
    if not (np.isfinite(value) and low < value < high):
        msg = f"{name} must lie strictly between {low} and {high}; got {value!r}."
        raise InvalidValueError(msg, param=name)


def check_count(name: str, value: object, *, low: int, what: str) -> None:
    """Raise unless ``value`` is an integer of at least ``low`` (``what`` says which, in the message)."""
    if not isinstance(value, int | np.integer) or value < low:
        msg = f"{name} must be a {what} integer; got {value!r}."
        raise InvalidValueError(msg, param=name)


# ------------------------------------------------------------------------------------------------
# -log10 p
# ------------------------------------------------------------------------------------------------
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


def chi2_neg_log10_sf(x: ArrayLike, df: ArrayLike) -> np.ndarray:
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


def height(res: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
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
        y[zero] = chi2_neg_log10_sf(stat, df) if lrt else neg_log10_p(stat, df)
    bad = zero & ~np.isfinite(y)
    if bad.any():
        pos = p[p > 0]
        y[bad] = -np.log10(pos.min()) if pos.size else 0.0
        clipped = bad
    return y, clipped


def rank_stat(res: pd.DataFrame) -> np.ndarray:
    """|test statistic|, to order genes with equal p-values."""
    return np.abs(res["stat"].to_numpy(dtype=float))
