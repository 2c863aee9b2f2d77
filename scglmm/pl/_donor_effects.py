"""Each level's effect on one gene (each donor's, by default): the stored conditional modes beside the raw data.

Three steps: resolve the run, the gene and the random effect to show (:func:`_stored_gene`,
:func:`_choose`), rebuild the per-level data from the counts, the design and the offset of the fit
(:func:`_rebuild`, with :mod:`._levels`), draw (:func:`_level_order`, :func:`_draw_levels`,
:func:`_draw_text`). A fit with one ``(1 | donor)`` is read as the general structure with that one
term, so every fit takes the same path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from .._core._errors import InvalidValueError, MissingKeyError
from .._formula import RETermSpec, build_design, parse_fit_formula
from .._inputs import counts, log_offset, normalised_offset
from .._layout import fit_params, modes_key, normalisation, stored_log_offset, varm_key
from ._levels import Levels, StoredEffects, StoredTerm, rebuild_levels
from ._utils import gene_labels, legend_outside, plot_doc, readable_name, render, run_key

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from numpy.typing import ArrayLike

__all__ = ["donor_effects"]

#: (category of color_by or None, level indices in drawing order, colour)
_Group = tuple[str | None, list[int], object]


@dataclass(frozen=True)
class _Gene:
    """What the fit stored for one gene of one run, and the random effect to show."""

    sub: str  # run key
    params: dict  # uns[sub]["params"]
    index: int  # position in var
    label: str  # name to print
    status: str
    general: bool  # a structure other than one (1 | donor)
    effects: StoredEffects
    term: int  # the shown term
    coef: str  # the shown coefficient
    center: float  # its fixed effect, added to the modes (0 for an intercept or a coefficient without one)

    @property
    def shown(self) -> StoredTerm:
        return self.effects.terms[self.term]

    @property
    def variance(self) -> float:
        return float(self.effects.varcomp[f"var({self.coef}|{self.shown.group})"])

    @property
    def modes(self) -> np.ndarray:
        names = [self.shown.mode_name(lev, self.coef) for lev in self.shown.levels]
        return self.effects.modes[names].to_numpy(dtype=float)

    @property
    def values(self) -> np.ndarray:
        """What is plotted per level: the fixed effect plus the mode."""
        return self.modes + self.center


# ------------------------------------------------------------------------------------------------
# step 1: the run, the gene and the random effect
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


def _stored_terms(params: dict) -> tuple[StoredTerm, ...]:
    """The terms of a general structure, in the order of the formula (``params["random_effects"]``
    holds their coefficients and levels; its order does not survive an h5ad round trip)."""
    info = params["random_effects"]
    out = []
    for spec in parse_fit_formula(str(params["formula"])).terms:
        entry = info[str(spec)]
        coefs = tuple(str(c) for c in entry["coefficients"])
        out.append(StoredTerm(spec=spec, coefs=coefs, levels=tuple(str(v) for v in entry["levels"])))
    return tuple(out)


def _stored_effects(adata: AnnData, sub: str, params: dict, g: int) -> tuple[StoredEffects, bool]:
    """The random effects stored for gene ``g``, and whether the structure is a general one (an error
    naming ``store_modes`` if the fit did not store its modes)."""
    fitrow = adata.varm[varm_key(sub, "fit")].iloc[g]
    theta = float(fitrow["theta"])
    key = modes_key(adata, sub)
    if key == varm_key(sub, "modes"):
        modes = pd.Series(adata.varm[key].iloc[g], dtype=float)
        varcomp = pd.Series(adata.varm[varm_key(sub, "varcomp")].iloc[g], dtype=float)
        return StoredEffects(_stored_terms(params), modes, varcomp, theta), True
    stored = adata.varm[key]
    donor = str(params["donor_key"])
    term = StoredTerm(RETermSpec(lhs="1", group=(donor,)), ("Intercept",), tuple(str(d) for d in stored.columns))
    modes = pd.Series(stored.iloc[g].to_numpy(dtype=float), index=[term.mode_name(d, "Intercept") for d in term.levels])
    varcomp = pd.Series({f"var(Intercept|{donor})": float(fitrow["sigma2"])})
    return StoredEffects((term,), modes, varcomp, theta), False


def _choose(effects: StoredEffects, coef: str | None, factor: str | None, sub: str) -> tuple[int, str]:
    """The term and coefficient to show: the first (term, coefficient) matching ``coef`` and ``factor``
    (by default the first coefficient of the first term, its intercept if it has one)."""
    terms = effects.terms
    factors = list(dict.fromkeys(t.group for t in terms))
    shown = " + ".join(str(t.spec) for t in terms)
    if factor is not None and factor not in factors:
        msg = (
            f"factor {factor!r} is not a grouping factor of the random effects {shown} of the fit under {sub!r}; "
            f"grouping factors: {factors}."
        )
        raise MissingKeyError(msg, param="factor")
    pairs = [(i, c) for i, t in enumerate(terms) for c in t.coefs]
    hits = [(i, c) for i, c in pairs if (factor is None or terms[i].group == factor) and (coef is None or c == coef)]
    if not hits:
        where = "" if factor is None else f" by {factor!r}"
        valid = [f"{c}|{terms[i].group}" for i, c in pairs]
        msg = (
            f"coef {coef!r} has no random effect{where} in the fit under {sub!r} ({shown}); random "
            f"coefficients (coef|factor): {valid}."
        )
        raise MissingKeyError(msg, param="coef")
    return hits[0]


def _center(adata: AnnData, sub: str, g: int, coef: str) -> float:
    """The fixed effect of a random slope's coefficient (0 for an intercept or one without a fixed effect)."""
    table = adata.varm[varm_key(sub, "coef")]
    return 0.0 if coef == "Intercept" or coef not in table.columns else float(table.iloc[g][coef])


def _stored_gene(
    adata: AnnData,
    gene: str,
    group: str | None,
    key: str,
    gene_symbols: str | None,
    choice: tuple[str | None, str | None],
) -> _Gene:
    """The stored modes and variance parameters of ``gene``; raises if the gene has no estimate."""
    sub = run_key(adata, key, group)
    params = fit_params(adata, sub)
    g, label = _gene_index(adata, gene, gene_symbols)
    effects, general = _stored_effects(adata, sub, params, g)
    term, coef = _choose(effects, *choice, sub)
    t = _Gene(
        sub=sub,
        params=params,
        index=g,
        label=label,
        status=str(adata.varm[varm_key(sub, "fit")].iloc[g]["status"]),
        general=general,
        effects=effects,
        term=term,
        coef=coef,
        center=_center(adata, sub, g, coef),
    )
    known = np.concatenate([effects.modes.to_numpy(), effects.varcomp.filter(like="var(").to_numpy(), [t.center]])
    if not np.all(np.isfinite(known)):
        msg = f"gene {gene!r} has no estimate (status {t.status!r}); there are no donor effects to plot."
        raise InvalidValueError(msg, param="gene")
    return t


# ------------------------------------------------------------------------------------------------
# step 2: the per-level data
# ------------------------------------------------------------------------------------------------
def _fit_offset(
    adata: AnnData, sub: str, Y: object, size_factors: str | ArrayLike | None, offset: str | ArrayLike | None
) -> np.ndarray:
    """The log offset of the fit for all cells of ``adata``: given (size factors normalised as the fit's
    were), or the one stored by the fit."""
    if offset is not None:
        return log_offset(adata, Y, None, offset)[0]
    if size_factors is not None:
        off, _ = log_offset(adata, Y, size_factors, None)
        return normalised_offset(adata, Y, off, normalisation(adata, sub))[0]
    return stored_log_offset(adata, sub)


def _run_cells(adata: AnnData, params: dict) -> np.ndarray:
    """The cells of the run: a fit with ``groupby`` stores each group under its own key."""
    if params.get("groupby") is not None and "group" in params:
        return (adata.obs[params["groupby"]].astype(str) == str(params["group"])).to_numpy()
    return np.ones(adata.n_obs, dtype=bool)


def _rebuild(adata: AnnData, t: _Gene, size_factors: str | ArrayLike | None, offset: str | ArrayLike | None) -> Levels:
    """Counts, fixed-effect prediction (design rebuilt from the stored formula) and per-level data."""
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
    return rebuild_levels(obs, y, eta, t.effects, (t.term, t.coef), t.center, _sides(t))


def _sides(t: _Gene) -> str:
    """The two values of a 0/1 coefficient in words: ``"stim minus ctrl"``, else ``"<coef> = 1 minus 0"``."""
    words = readable_name(t.coef, t.params)
    if " vs " in words and ": " not in words:
        level, reference = words.split(" vs ", 1)
        return f"{level} minus {reference}"
    return f"{t.coef} = 1 minus 0"


# ------------------------------------------------------------------------------------------------
# step 3: draw
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Words:
    """The texts of the plot, which depend on the random effect shown."""

    noun: str  # what one level is called: "donor", "donor:sample level"
    xlabel: str
    ylabel: str
    points: str  # legend of the plotted values
    band: str  # legend of the model band


def _words(t: _Gene) -> _Words:
    factor = t.shown.group
    if not t.general:
        donor = str(t.params["donor_key"])
        return _Words(
            noun="donor",
            xlabel=f"donor ({donor})",
            ylabel="donor effect on log mean (natural log)",
            points="conditional mode ± 1.96 cond. SD",
            band=r"$\pm 1.96\,\hat\sigma$ (model spread)",
        )
    slope = t.coef != "Intercept" and t.coef in list(t.params.get("design_columns", []))
    if t.coef == "Intercept":
        ylabel = f"{factor} effect on log mean (natural log)"
    elif slope:
        ylabel = f"each {factor}'s own {readable_name(t.coef, t.params)}\n(fixed effect + mode, natural log)"
    else:
        ylabel = f"{factor} effect on {t.coef} (natural log)"
    return _Words(
        noun=f"{factor} level",
        xlabel=f"{factor} level",
        ylabel=ylabel,
        points=("fixed effect + " if slope else "") + "conditional mode ± 1.96 cond. SD",
        band=("fixed effect " if slope else "") + r"$\pm 1.96\,\hat\sigma$ (model spread)",
    )


def _level_values(obs: pd.DataFrame, d: Levels, column: str, t: _Gene) -> pd.Series:
    """The value of ``obs[column]`` of each level of the shown factor; it must be constant within each level."""
    if column not in obs.columns:
        msg = f"color_by column {column!r} not in adata.obs; available columns: {list(obs.columns)}."
        raise MissingKeyError(msg, param="color_by")
    factor, levels = t.shown.group, list(t.shown.levels)
    lev = pd.Series(np.asarray(levels, dtype=object)[d.cell_level], index=obs.index)
    n_per = obs[column].groupby(lev, observed=True).nunique(dropna=False)
    varying = n_per[n_per > 1]
    if len(varying):
        msg = (
            f"color_by column {column!r} must be constant within each {factor}, but varies within "
            f"{len(varying)} {factor} level(s) (e.g. {list(varying.index[:3])}); choose a {factor}-level column."
        )
        raise InvalidValueError(msg, param="color_by")
    first = obs[column].groupby(lev, observed=True).first()
    return first.reindex(levels)


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


def _level_order(adata: AnnData, t: _Gene, d: Levels, color_by: str | None) -> tuple[list[int], list[_Group]]:
    """Levels left to right (by category of ``color_by``, then by plotted value) and the groups to draw."""
    values, levels = t.values, t.shown.levels
    m = len(levels)
    if color_by is None:
        order = sorted(range(m), key=lambda i: (values[i], levels[i]))
        return order, [(None, order, "#333333")]
    lev = _level_values(d.obs, d, color_by, t)
    all_cats, pal = _palette(adata, color_by, lev)
    lev_s = lev.astype(str).to_numpy()
    cats = [c for c in all_cats if (lev_s == c).any()]
    rank = {c: i for i, c in enumerate(cats)}
    order = sorted(range(m), key=lambda i: (rank[lev_s[i]], values[i], levels[i]))
    return order, [(c, [i for i in order if lev_s[i] == c], pal[c]) for c in cats]


def _draw_reference(ax: Axes, t: _Gene, words: _Words) -> None:
    """The model band around the fixed effect, its line, and the line at 0 when the fixed effect is not 0."""
    if t.variance > 0:
        s = 1.96 * np.sqrt(t.variance)
        ax.axhspan(t.center - s, t.center + s, color="0.9", zorder=0, label=words.band)
    ax.axhline(t.center, color="0.5", linewidth=0.8, zorder=1, gid="fixed_effect")
    if t.center != 0.0:
        ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":", zorder=1, gid="zero")


def _draw_levels(ax: Axes, t: _Gene, d: Levels, order: list[int], groups: list[_Group], color_by: str | None) -> None:
    """The model band, and per level the plotted value with its bar and the raw value."""
    words = _words(t)
    values = t.values
    pos = np.empty(len(values))
    pos[order] = np.arange(len(values))
    _draw_reference(ax, t, words)
    raw_label = d.raw_label
    for i, (c, idx, color) in enumerate(groups):
        idx = np.asarray(idx, dtype=int)
        lab = "" if c is None else f" ({color_by} = {c})"
        ax.errorbar(
            pos[idx],
            values[idx],
            yerr=1.96 * d.cond_sd[idx],
            fmt="o",
            color=color,
            markersize=6,
            capsize=2,
            linewidth=1,
            zorder=3,
            label=f"{words.points}{lab}",
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
            label=raw_label if last and raw_label else None,
        )


def _draw_text(ax: Axes, t: _Gene, d: Levels, order: list[int]) -> None:
    """Ticks, axis labels, title, and the legend under the axes; a note on the levels without
    counts (no raw value) is the legend's title, not an entry that would widen it."""
    words = _words(t)
    levels = t.shown.levels
    m = len(levels)
    ax.set_xticks(np.arange(m))
    ax.set_xticklabels([levels[i] for i in order], rotation=90 if m > 8 else 0, fontsize=8)
    ax.set_xlim(-0.6, m - 0.4)
    ax.set_xlabel(words.xlabel)
    ax.set_ylabel(words.ylabel)
    disp = "Poisson" if np.isinf(t.effects.theta) else f"theta = {t.effects.theta:.3g}"
    what = "sigma2" if not t.general else f"var({t.coef}|{t.shown.group})"
    _wrapped_title(ax, [f"{t.label}: {what} = {t.variance:.3g}", disp, f"status {t.status}"])
    n_nocount = int((~np.isfinite(d.raw)).sum())
    note = f"{n_nocount} {words.noun}(s) without counts: no raw value" if n_nocount and d.raw_label else None
    legend_outside(ax, where="below", title=note, title_fontsize=7)


def _wrapped_title(ax: Axes, parts: list[str], fontsize: float = 9) -> None:
    """The title ``", ".join(parts)``, a new line started before a part that would make a line wider
    than the axes (a title wider than the axes reaches over the y label)."""
    renderer = ax.figure.canvas.get_renderer()
    width = ax.get_window_extent(renderer).width
    lines = [parts[0]]
    for part in parts[1:]:
        ax.set_title(f"{lines[-1]}, {part}", fontsize=fontsize)
        if ax.title.get_window_extent(renderer).width <= width:
            lines[-1] += f", {part}"
        else:
            lines.append(part)
    ax.set_title("\n".join(lines), fontsize=fontsize)


@plot_doc
def donor_effects(
    adata: AnnData,
    gene: str,
    *,
    group: str | None = None,
    key: str = "scglmm",
    coef: str | None = None,
    factor: str | None = None,
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

    **Other random-effect structures** (random slopes, nested and crossed terms): ``coef`` and
    ``factor`` choose one random coefficient of one grouping factor, read from
    ``adata.varm[f'{key}_modes']`` (column ``f'{factor}[{level}]:{coef}'``) and
    ``adata.varm[f'{key}_varcomp']``; the default is the first coefficient of the first term (its
    intercept if it has one), the plot above. Each level of ``factor`` is one point:

    - a random intercept: its mode, as above;
    - a random slope of a fixed effect, e.g. ``coef='condition[T.stim]'`` in
      ``(1 + condition | donor)``: **each donor's own response**, the fixed effect plus the donor's
      mode, :math:`\hat\beta_c + \hat b_{ic}` (natural log, like the stored coefficients; the y
      axis says so), with the band :math:`\hat\beta_c \pm 1.96\,\hat\sigma_c` around a line at
      :math:`\hat\beta_c` and a dotted line at 0. A random coefficient without a fixed effect of
      the same name (e.g. ``condition[stim]`` of ``(0 + condition | donor)``) is shown as its mode.

    The bars are the conditional SD of the mode from the curvature of all modes of all terms
    together, :math:`(Z^\top W Z + G^{-1})^{-1}` (crossed and nested terms share cells), given the
    estimated parameters. The raw value of a level is the ratio above, its prediction including the
    conditional modes of the other terms (a crossed or nested term's raw values then compare with
    its modes), over the cells where the term's other columns are 0 for an intercept; for a 0/1
    column :math:`c` (a level of a factor) it is :math:`\hat\beta_c` plus the ratio where
    :math:`c = 1` minus the ratio where :math:`c = 0` (both of the level's cells), the level's
    observed response; a numeric slope has no raw value.

    The design is rebuilt from ``adata.uns[key]['params']`` and ``adata.obs``, the offset taken
    from ``adata.uns[key]['log_offset']`` (or rebuilt from its recorded source; pass
    ``size_factors`` or ``offset`` again if neither is possible). For a fit with ``groupby``,
    ``group`` chooses the group, and only its cells are used.

    The modes are those the fit stored: :func:`scglmm.tl.fit` stores them by default without
    ``groupby``, and with ``groupby`` only with ``store_modes=True``; without them this raises a
    :class:`KeyError` that says so.

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
    coef
        The random coefficient to show: ``'Intercept'`` or a random slope's column, e.g.
        ``'condition[T.stim]'``; ``None``: the first coefficient of the first term of ``factor``.
        The names are those of ``uns[key]['params']['random_effects']``.
    factor
        The grouping factor to show, e.g. ``'donor'``, ``'donor:sample'`` (nested) or ``'batch'``
        (crossed); ``None``: the first term's, or the first that has ``coef``.
    color_by
        An ``adata.obs`` column constant within each level of the shown factor (e.g. a condition
        that varies between donors) to colour the levels by; colours come from
        ``adata.uns[f'{color_by}_colors']`` when scanpy stored them there.
    size_factors, offset
        As in :func:`scglmm.tl.fit`; only needed when the fit's offset was an array. Size factors
        are normalised as the fit's were (its ``norm_method`` and samples).
    gene_symbols
        ``adata.var`` column in which to look ``gene`` up.
    {figure_axes}
    """
    t = _stored_gene(adata, gene, group, key, gene_symbols, (coef, factor))
    d = _rebuild(adata, t, size_factors, offset)
    order, groups = _level_order(adata, t, d, color_by)

    def draw(ax: Axes) -> None:
        _draw_levels(ax, t, d, order, groups, color_by)
        _draw_text(ax, t, d, order)

    return render(draw, ax=ax, figsize=figsize, show=show, save=save)
