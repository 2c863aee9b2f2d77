"""Wald tests: of each design column after a fit, and of contrasts in :func:`scglmm.tl.test`.

A donor-level effect is tested by :func:`scglmm._core._inference.wald_pvalues` under the fit's
calibration. A fixed effect with its own random slope (:func:`slope_effects`, however the term codes
it) is tested on the levels in which the slope varies (:func:`scglmm._core._inference.slope_wald_pvalues`,
``"eb"`` and ``"t"``), in :func:`wald_tests` for a coefficient and in :func:`slope_contrast_test` for a
contrast that weights such effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .._core._errors import InvalidValueError
from .._core._inference import (
    SlopeEffect,
    donor_level_design,
    level_design,
    random_slopes,
    slope_wald_pvalues,
    wald_pvalues,
)
from .._formula import build_design, build_re_terms, parse_fit_formula
from ._run import RE_CALIBRATIONS

if TYPE_CHECKING:
    import pandas as pd

    from .._core._re import RETerm
    from ._run import Run

__all__ = [
    "SLOPE_T", "LevelTest", "TermSlope", "WaldTests", "check_calibration", "level_test", "slope_contrast_columns",
    "slope_contrast_test", "slope_effects", "slope_variance", "wald_tests",
]  # fmt: skip

#: Calibrations under which a fixed effect with its own random slope is tested on its levels.
SLOPE_T = ("eb", "t")


@dataclass(frozen=True)
class WaldTests:
    """The calibrated Wald test of each design column of a run, for every gene."""

    pval: np.ndarray
    stat: np.ndarray
    df: dict[str, float]
    """Degrees of freedom per column: ``inf`` for the normal reference, NaN when they differ by gene."""
    df_per_gene: dict[str, np.ndarray]
    """The columns whose degrees of freedom differ by gene (the Satterthwaite calibrations)."""
    eb_prior: dict[str, np.ndarray]
    donor_mask: np.ndarray
    donor_design: np.ndarray
    level_terms: dict[str, str]
    """The columns tested on the levels of a random-intercept term (:func:`level_test`) -> its grouping factor."""


@dataclass(frozen=True)
class LevelTest:
    """The inputs of :func:`scglmm._core._inference.wald_pvalues` for one contrast: the random-intercept
    term on whose levels it is tested (``group``, None: none, the normal reference) and that term's variance."""

    group: str | None
    sigma2: np.ndarray
    mask: np.ndarray
    design: np.ndarray
    cells: np.ndarray
    absorbed: int = 0


def level_test(terms: tuple[RETerm, ...], X: np.ndarray, varcomp: np.ndarray, names: list[str], c) -> LevelTest:
    """Where the contrast ``c`` of the fixed effects gets its information (:func:`level_design`): the
    random-intercept term (``var(Intercept|g)`` in ``names``; the first term if none has one) with the fewest
    levels within which every column ``c`` weights is constant. With one term: its donor-level design."""
    candidates = [t for t in terms if f"var(Intercept|{t.group})" in names] or [terms[0]]
    lev = level_design(X, [t.codes for t in candidates], c)
    term = candidates[0] if lev is None else candidates[lev.term]
    name = f"var(Intercept|{term.group})"
    sigma2 = varcomp[:, names.index(name)] if name in names else np.full(varcomp.shape[0], np.nan)
    if lev is None:  # a within-level contrast: any design without it gives the normal reference
        mask, design = donor_level_design(X, term.codes)
        return LevelTest(None, sigma2, mask, design, np.bincount(term.codes, minlength=design.shape[0]))
    return LevelTest(term.group, sigma2, lev.mask, lev.design, lev.cells, lev.absorbed)


def _level_tests(run: Run, calibration: str) -> WaldTests:
    """The Wald test of each design column of ``run``, calibrated on the levels of the term it is constant
    within (:func:`level_test`; donor-level effects for ``(1 | donor)``), see :func:`scglmm.tl.fit`."""
    fit = run.fit
    G, p = fit.coef.shape
    donor_mask, donor_design = donor_level_design(run.design.matrix, run.donor_codes)
    pval, stat = np.full((G, p), np.nan), np.full((G, p), np.nan)
    df: dict[str, float] = {}
    df_per_gene: dict[str, np.ndarray] = {}
    eb_prior: dict[str, np.ndarray] = {}
    levels: dict[str, str] = {}
    for j, col in enumerate(run.design.columns):
        lt = level_test(run.terms, run.design.matrix, fit.varcomp, fit.varcomp_names, np.eye(p)[j])
        out = wald_pvalues(
            fit.coef, fit.cov, np.eye(p)[j], sigma2=lt.sigma2, donor_mask=lt.mask, donor_design=lt.design,
            calibration=calibration, donor_cells=lt.cells, absorbed=lt.absorbed,
        )  # fmt: skip
        pval[:, j], stat[:, j] = out["p_value"], out["stat"]
        if np.ndim(out["df"]):  # Satterthwaite: one df per gene
            df[col] = float("nan")
            df_per_gene[col] = np.asarray(out["df"], dtype=float)
        else:
            df[col] = float(out["df"])
        if "eb_prior" in out:
            eb_prior[col] = np.asarray(out["eb_prior"], dtype=float)
        if lt.group is not None and out["donor_level"]:
            levels[col] = lt.group
    return WaldTests(pval, stat, df, df_per_gene, eb_prior, donor_mask, np.asarray(donor_design, dtype=float), levels)


def wald_tests(run: Run, calibration: str) -> WaldTests:
    """The calibrated Wald test of each design column of ``run`` (see :func:`scglmm.tl.fit`).

    Every column is tested by :func:`scglmm._core._inference.wald_pvalues` (donor-level effects
    calibrated); then, under ``"eb"`` and ``"t"``, each fixed effect with a random slope
    (:func:`slope_effects`) is tested by :func:`scglmm._core._inference.slope_wald_pvalues` on the levels
    in which the slope varies: with ``"t"`` on t with the effect's ``df``, with ``"eb"`` (the default) on
    the empirical-Bayes prior of the slope variance ``w' Sigma w`` across genes (``eb_prior`` stored per
    column)."""
    tests = _level_tests(run, calibration)
    if not run.general or calibration not in SLOPE_T:
        return tests
    cols = list(run.design.columns)
    pval, stat, df = tests.pval.copy(), tests.stat.copy(), dict(tests.df)
    eb_prior, levels = dict(tests.eb_prior), dict(tests.level_terms)
    for col, ts in slope_effects(run.terms, run.design.matrix, cols).items():
        j, eff = cols.index(col), ts.effect
        tau2 = slope_variance(run.fit.varcomp, run.fit.varcomp_names, ts.term, eff.weights)
        out = slope_wald_pvalues(
            run.fit.coef[:, j], run.fit.se[:, j] ** 2, tau2, n_levels=eff.n_levels, df=eff.df,
            calibration=calibration, k=eff.k(),
        )  # fmt: skip
        stat[:, j], pval[:, j], df[col] = out["stat"], out["p_value"], float(out["df"])
        eb_prior.pop(col, None)
        levels.pop(col, None)
        if "eb_prior" in out:
            eb_prior[col] = np.asarray(out["eb_prior"], dtype=float)
    return replace(tests, pval=pval, stat=stat, df=df, eb_prior=eb_prior, level_terms=levels)


@dataclass(frozen=True)
class TermSlope:
    """A fixed effect tested on the per-level slopes of one term (see :func:`slope_effects`)."""

    term: RETerm
    effect: SlopeEffect


def slope_effects(terms: tuple[RETerm, ...], X: np.ndarray, columns: list[str]) -> dict[str, TermSlope]:
    """For each design column that one of ``terms`` gives a random slope (however the term codes it, see
    :func:`scglmm._core._inference.random_slopes`), or that interacts with such a slope and a level-wide
    factor, the term whose grouping factor has the fewest levels."""
    out: dict[str, TermSlope] = {}
    for t in terms:
        for j, eff in random_slopes(X, t.Z, t.codes).items():
            c = columns[j]
            if c not in out or t.m < out[c].term.m:
                out[c] = TermSlope(t, eff)
    return out


def slope_variance(varcomp: np.ndarray, names: list[str], term: RETerm, w: np.ndarray) -> np.ndarray:
    """``w' Sigma w`` per gene: the variance of ``w' b_l``, ``Sigma`` the covariance of ``term``'s random
    coefficients from the variances and correlations ``varcomp`` (G, columns ``names``)."""
    var = [np.maximum(varcomp[:, names.index(f"var({c}|{term.group})")], 0.0) for c in term.coef_names]
    sd = [np.sqrt(v) for v in var]
    out = np.zeros(varcomp.shape[0])
    for i, a in enumerate(term.coef_names):
        if w[i] != 0:
            out += w[i] ** 2 * var[i]
        for k in range(i + 1, term.q):
            col = f"cor({a},{term.coef_names[k]}|{term.group})"
            if w[i] != 0 and w[k] != 0 and col in names:  # none in a diagonal (||) term
                out += 2.0 * w[i] * w[k] * varcomp[:, names.index(col)] * sd[i] * sd[k]
    return out


# ------------------------------------------------------------------------------------------------
# Wald contrasts (scglmm.tl.test)
# ------------------------------------------------------------------------------------------------
def check_calibration(params: Mapping, calibration: str, sub: str) -> None:
    """Refuse a calibration that models a single donor intercept on a fit with another structure."""
    if "random_structure" in params and calibration not in RE_CALIBRATIONS:
        msg = (
            f"calibration={calibration!r} models a single donor random intercept; the fit under {sub!r} has the "
            f"random effects {params['random_structure']}: use one of {list(RE_CALIBRATIONS)}."
        )
        raise InvalidValueError(msg, param="calibration")


def slope_contrast_columns(params: Mapping, vec: np.ndarray, calibration: str) -> list[str]:
    """The columns that ``vec`` weights and that have a random slope (:func:`slope_effects`), when
    ``calibration`` tests such effects on the levels of the slope's grouping factor (``"eb"``, ``"t"``); else
    none."""
    slopes = params.get("slope_columns") or {}
    if calibration not in SLOPE_T or not slopes:
        return []
    cols = [str(c) for c in params["design_columns"]]
    return [c for c, w in zip(cols, vec, strict=True) if w != 0 and c in slopes]


def slope_contrast_test(
    params: Mapping, obs: pd.DataFrame, varcomp: pd.DataFrame, vec: np.ndarray, est: np.ndarray, var: np.ndarray,
    *, columns: list[str], calibration: str,
) -> dict:  # fmt: skip
    """The Wald test of a contrast that weights the fixed effects ``columns``, which have a random slope,
    by :func:`scglmm._core._inference.slope_wald_pvalues`, as :func:`wald_tests` tests one of them.

    The df are the smallest of ``columns`` (:func:`slope_effects` on the run's cells ``obs``). With
    ``"eb"`` and all of ``columns`` in one slope family (a slope and its interactions with level-wide factors)
    the slope variance is the family's ``w' Sigma w`` and ``k = c' (H' H)^-1 c``; with all of them slopes of
    one term, the contrast's per-level slope ``(sum_j c_j w_j)' b_l`` has the variance ``v' Sigma v``,
    ``v = sum_j c_j w_j``, and ``k = 1 / levels``; otherwise (different terms or families) it is tested as
    under ``"t"``.

    Returns
    -------
    dict with ``stat``, ``p_value``, ``df``, ``se_test`` (``|estimate / stat|``) and ``slope_df``.
    """
    design = build_design(str(params["fixed_formula"]), obs)
    terms = build_re_terms(parse_fit_formula(str(params["formula"])).specs, obs)
    cols = list(design.columns)
    found = slope_effects(tuple(terms), design.matrix, cols)
    effects = {c: found[c] for c in columns}
    df = min(ts.effect.df for ts in effects.values())
    c = {col: float(vec[cols.index(col)]) for col in columns}
    tau2, k, n_levels = _contrast_slope(varcomp, effects, c, calibration)
    if tau2 is None:
        calibration, tau2 = "t", np.zeros_like(est)
    out = slope_wald_pvalues(est, var, tau2, n_levels=n_levels, df=df, calibration=calibration, k=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        se_test = np.abs(est / out["stat"])
    return {"stat": out["stat"], "p_value": out["p_value"], "df": out["df"], "se_test": se_test, "slope_df": df}


def _contrast_slope(
    varcomp: pd.DataFrame, effects: dict[str, TermSlope], c: dict[str, float], calibration: str
) -> tuple[np.ndarray | None, float | None, int]:
    """Slope variance per gene, ``k`` and levels of the contrast ``c`` (column -> weight) under ``"eb"``;
    ``(None, None, levels)`` when it has none (not ``"eb"``, or columns of different terms or families)."""
    first = next(iter(effects.values()))
    term, n_levels = first.term, min(ts.effect.n_levels for ts in effects.values())
    names, values = list(varcomp.columns), varcomp.to_numpy(dtype=float)
    if calibration != "eb" or any(ts.term is not term for ts in effects.values()):
        return None, None, n_levels
    eff = first.effect
    if all(ts.effect.base == eff.base for ts in effects.values()):  # one slope and its interactions
        h = np.zeros(eff.H.shape[1])
        for col, ts in effects.items():
            h[ts.effect.h_index] += c[col]
        return slope_variance(values, names, term, eff.weights), eff.k(h), eff.n_levels
    if all(ts.effect.H.shape[1] == 1 for ts in effects.values()):  # several slopes, no interactions
        v = sum(c[col] * ts.effect.weights for col, ts in effects.items())
        return slope_variance(values, names, term, np.asarray(v)), 1.0 / n_levels, n_levels
    return None, None, n_levels
