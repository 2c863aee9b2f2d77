""":func:`scglmm.tl.test` on random effects beyond one donor intercept, and tests of variance components.

- Wald contrasts that weight a fixed effect with a random slope are tested on the levels of the
  slope's grouping factor (:func:`slope_contrast_test`), as :func:`._re_run.re_wald_tests` tests single
  coefficients.
- A likelihood-ratio test compares the random effects of the reduced model with the fitted ones
  (:func:`random_change`): nested or refused, and what is dropped decides the reference distribution
  (:meth:`RandomChange.reference`).
- The reduced model is refitted by the compiled kernel when its random effects are one ``(1 | g)``, by
  the general engine otherwise (:func:`refit_loglik`); both report the same Laplace log-likelihood.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._core._api import fit_genes
from .._core._errors import InputError, InvalidValueError
from .._core._inference import slope_wald_pvalues
from .._core._re_api import fit_re_genes
from .._formula import ParsedFormula, RETermSpec, build_design, build_re_terms, parse_fit_formula
from .._logging import progress_bar
from ._re_run import RE_CALIBRATIONS, TermSlope, slope_effects, slope_variance

if TYPE_CHECKING:
    import pandas as pd

    from .._core._re import RETerm

__all__ = [
    "SLOPE_T",
    "RandomChange",
    "check_re_calibration",
    "compare_terms",
    "random_change",
    "random_specs",
    "refit_loglik",
    "slope_contrast_columns",
    "slope_contrast_test",
]

#: Calibrations under which a fixed effect with its own random slope is tested on its levels (as in re_wald_tests).
SLOPE_T = ("eb", "t")


# ------------------------------------------------------------------------------------------------
# Wald contrasts: the random-slope reference
# ------------------------------------------------------------------------------------------------
def check_re_calibration(params: Mapping, calibration: str, sub: str) -> None:
    """Refuse a calibration that models a single donor intercept on a fit with another structure."""
    if "random_structure" in params and calibration not in RE_CALIBRATIONS:
        msg = (
            f"calibration={calibration!r} models a single donor random intercept; the fit under {sub!r} has the "
            f"random effects {params['random_structure']}: use one of {list(RE_CALIBRATIONS)}."
        )
        raise InvalidValueError(msg, param="calibration")


def slope_contrast_columns(params: Mapping, vec: np.ndarray, calibration: str) -> list[str]:
    """The columns that ``vec`` weights and that have a random slope (:func:`._re_run.slope_effects`), when
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
    by :func:`scglmm._core._inference.slope_wald_pvalues`, as :func:`._re_run.re_wald_tests` tests one of them.

    The df are the smallest of ``columns`` (:func:`._re_run.slope_effects` on the run's cells ``obs``). With
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
    terms = build_re_terms(random_specs(parse_fit_formula(str(params["formula"]))), obs)
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


# ------------------------------------------------------------------------------------------------
# likelihood-ratio tests: the random effects of the reduced model
# ------------------------------------------------------------------------------------------------
def random_specs(parsed: ParsedFormula) -> tuple[RETermSpec, ...]:
    """The random-effect terms of a formula; ``(1 | donor)`` as one term."""
    return parsed.terms if parsed.general else (RETermSpec(lhs="1", group=(parsed.donor,)),)


@dataclass(frozen=True)
class RandomChange:
    """The random effects of a reduced model and what they drop from the fitted ones."""

    parsed: ParsedFormula
    """The reduced model's formula."""
    terms: tuple[RETerm, ...]
    """Its random-effect terms on the run's cells."""
    dropped_variances: tuple[str, ...] = ()
    """``var(c|g)`` of the dropped variance (one at most)."""
    dropped_correlations: tuple[str, ...] = ()
    """``cor(c1,c2|g)`` of the dropped correlations (with the dropped variance, or alone)."""

    @property
    def changed(self) -> bool:
        """Whether the reduced model's random effects differ from the fitted ones."""
        return bool(self.dropped_variances or self.dropped_correlations)

    def reference(self, df_fixed: int) -> tuple[list[int], list[float] | None]:
        """Degrees of freedom and mixture weights (``None``: one chi-square) of the LR statistic.

        With ``d = df_fixed`` fixed effects dropped: ``chi2(d)`` if the random effects are unchanged;
        ``chi2(d + k)`` if only ``k`` correlations are dropped (they are inside their range under the
        null); ``0.5 chi2(d + k) + 0.5 chi2(d + k + 1)`` if one variance is dropped with its ``k``
        covariances, its null value 0 being on the boundary (Self & Liang 1987; Stram & Lee 1994).
        """
        k = len(self.dropped_correlations)
        if self.dropped_variances:
            return [df_fixed + k, df_fixed + k + 1], [0.5, 0.5]
        return [df_fixed + k], None


def _parameters(terms: tuple[RETerm, ...], which: str, param: str) -> tuple[dict, dict]:
    """The covariance parameters of a structure: ``{(group, coef): "var(coef|group)"}`` and
    ``{(group, frozenset(c1, c2)): "cor(c1,c2|group)"}`` for the coefficients one term correlates."""
    variances: dict[tuple, str] = {}
    covariances: dict[tuple, str] = {}
    for t in terms:
        for i, c in enumerate(t.coef_names):
            if (t.group, c) in variances:
                msg = (
                    f"the {which} random effects have the coefficient {c!r} in two terms grouped by {t.group!r}; "
                    "a likelihood-ratio test of random effects needs each coefficient once per grouping factor."
                )
                raise InvalidValueError(msg, param=param)
            variances[(t.group, c)] = f"var({c}|{t.group})"
            if not t.diagonal:
                for o in t.coef_names[:i]:
                    covariances[(t.group, frozenset((o, c)))] = f"cor({o},{c}|{t.group})"
    return variances, covariances


def random_change(
    full: tuple[RETerm, ...], parsed: ParsedFormula, obs: pd.DataFrame, *, shown_full: str
) -> RandomChange:
    """The random effects of the reduced model ``parsed`` on the cells ``obs``, compared with the fitted
    ones ``full`` by :func:`compare_terms`."""
    try:
        terms = tuple(build_re_terms(random_specs(parsed), obs))
    except InputError as err:
        raise type(err)(str(err), param="reduced_formula") from None
    shown = " + ".join(str(t) for t in random_specs(parsed))
    variances, correlations = compare_terms(full, terms, shown_full=shown_full, shown=shown)
    return RandomChange(parsed, terms, variances, correlations)


def compare_terms(
    full: tuple[RETerm, ...], reduced: tuple[RETerm, ...], *, shown_full: str, shown: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The variance (one at most) and the correlations that ``reduced`` drops from ``full``.

    Raises
    ------
    InvalidValueError
        ``reduced`` is not nested in ``full`` (a variance or a correlation ``full`` does not have), or
        drops more than one variance, or correlations besides those of the dropped variance (no
        reference distribution is implemented for these).
    """
    fv, fc = _parameters(full, "fitted", "key")
    rv, rc = _parameters(reduced, "reduced", "reduced_formula")
    extra = [rv[k] for k in rv if k not in fv] + [rc[k] for k in rc if k not in fc]
    if extra:
        msg = (
            f"reduced_formula is not nested in the fitted model: its random effects {shown} have {extra}, "
            f"which the fitted random effects {shown_full} do not (estimate them in the fit, or drop them here)."
        )
        raise InvalidValueError(msg, param="reduced_formula")
    variances = [k for k in fv if k not in rv]
    correlations = [k for k in fc if k not in rc]
    if len(variances) > 1:
        msg = (
            f"reduced_formula drops {len(variances)} variances {[fv[k] for k in variances]} from {shown_full}; a "
            "likelihood-ratio test of random effects drops one variance (with its correlations) at a time, e.g. "
            "one random slope or one '(1 | group)' term."
        )
        raise InvalidValueError(msg, param="reduced_formula")
    own = [k for k in correlations if variances and k[0] == variances[0][0] and variances[0][1] in k[1]]
    if variances and len(own) != len(correlations):
        others = [fc[k] for k in correlations if k not in own]
        msg = (
            f"reduced_formula drops the variance {fv[variances[0]]} and also the correlation(s) {others}; test "
            "one at a time: keep the other coefficients' correlations (same '|' term), or drop only correlations."
        )
        raise InvalidValueError(msg, param="reduced_formula")
    return tuple(fv[k] for k in variances), tuple(fc[k] for k in correlations)


def refit_loglik(
    Y, X: np.ndarray, coef_names: list[str], change: RandomChange, obs: pd.DataFrame, log_off: np.ndarray,
    *, n_agq: int, n_jobs: int, progress: bool | None, block_size: int = 64,
) -> np.ndarray:  # fmt: skip
    """Log-likelihood per gene (columns of ``Y``) of the reduced model ``X`` + ``change``: the compiled kernel
    for one ``(1 | g)`` (with ``n_agq``), else :func:`fit_re_genes` (Laplace), ``block_size`` genes a call."""
    G = int(Y.shape[1])
    with progress_bar(total=G, enabled=progress, desc="scglmm lrt refit") as bar:
        if not change.parsed.general:
            res = fit_genes(
                Y, X, obs[change.parsed.donor].astype(str).to_numpy(), log_off, n_agq=n_agq, n_jobs=n_jobs,
                coef_names=coef_names, check=False, progress=bar.update if bar is not None else None,
            )  # fmt: skip
            return np.asarray(res.loglik, dtype=float)
        out = np.empty(G)
        for g0 in range(0, G, block_size):
            g1 = min(g0 + block_size, G)
            res = fit_re_genes(Y[:, g0:g1], X, change.terms, log_off, coef_names=coef_names, check=False)
            out[g0:g1] = res.loglik
            if bar is not None:
                bar.update(g1 - g0)
        return out
