"""Likelihood-ratio tests of :func:`scglmm.tl.test`: the reduced model, its refit and its reference distribution.

The reduced model drops fixed-effect columns (named, or by ``reduced_formula``) and may drop random
effects: its random effects are compared with the fitted ones (:func:`random_change`), nested or refused,
and what is dropped decides the reference distribution (:meth:`RandomChange.reference`). The reduced model
is refitted on the run's cells by :func:`scglmm.fit_genes` (:func:`refit_loglik`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import _inputs
from .._core._api import fit_genes
from .._core._errors import InputError, InvalidValueError, MissingKeyError
from .._core._inference import lrt_f_pvalues, lrt_pvalues, mixture_name
from .._core._status import FILTERED
from .._formula import ParsedFormula, build_design, build_re_terms, parse_fit_formula
from .._layout import contrast_name, fit_params, stored_log_offset, varm_key
from .._logging import progress_bar

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

    from .._core._re import RETerm

__all__ = ["RandomChange", "compare_terms", "lrt_one", "random_change", "refit_loglik", "run_cells"]


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
        terms = tuple(build_re_terms(parsed.specs, obs))
    except InputError as err:
        raise type(err)(str(err), param="reduced_formula") from None
    shown = " + ".join(str(t) for t in parsed.specs)
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
    Y, X: np.ndarray, coef_names: list[str], change: RandomChange, log_off: np.ndarray,
    *, n_agq: int, n_jobs: int, progress: bool | None, separation: str = "prior",
) -> np.ndarray:  # fmt: skip
    """Log-likelihood per gene (columns of ``Y``) of the reduced model ``X`` + ``change`` (:func:`scglmm.fit_genes`,
    which fits one ``(1 | g)`` with the compiled kernels and ``n_agq``, any other structure by the Laplace
    approximation)."""
    with progress_bar(total=int(Y.shape[1]), enabled=progress, desc="scglmm lrt refit") as bar:
        res = fit_genes(
            Y, X, change.terms, log_off, n_agq=n_agq, n_jobs=n_jobs, coef_names=coef_names, check=False,
            progress=bar.update if bar is not None else None, separation=separation,
        )  # fmt: skip
    return np.asarray(res.loglik, dtype=float)


@dataclass(frozen=True)
class _Reduced:
    """The null model of a likelihood-ratio test."""

    matrix: np.ndarray
    columns: list[str]
    dropped: list[str]
    description: str
    random: RandomChange


def lrt_one(
    adata: AnnData, sub: str, label: str, contrast, reduced_formula: str | None, n_jobs: int | None, progress
) -> tuple[dict[str, np.ndarray], dict, str]:
    """The likelihood-ratio test of one run: refit the reduced model on the run's cells; the columns of its
    table (see :func:`scglmm.tl.test`), its settings and its name."""
    params = fit_params(adata, sub)
    mask = run_cells(adata, sub, label, params)
    reduced = _reduced_model(params, adata.obs.loc[mask], sub, contrast, reduced_formula)
    df_lr = len(params["design_columns"]) - len(reduced.columns)
    dfs, weights = reduced.random.reference(df_lr)
    t0 = time.perf_counter()
    ll_reduced = _refit(adata, sub, params, mask, reduced, n_jobs, progress)
    ll_full = adata.varm[varm_key(sub, "fit")]["loglik"].to_numpy(dtype=float)
    stat, p = lrt_pvalues(ll_full, ll_reduced, dfs if weights else dfs[0], weights)
    between = _slope_df(params, reduced)
    if between is not None:  # a random slope's effect: F on the slope's between-level df
        p = lrt_f_pvalues(stat, df_lr, between)
    est, se = np.full(adata.n_vars, np.nan), np.full(adata.n_vars, np.nan)
    if df_lr == 1 and not reduced.random.changed:
        est = adata.varm[varm_key(sub, "coef")][reduced.dropped[0]].to_numpy(dtype=float)
        se = adata.varm[varm_key(sub, "se")][reduced.dropped[0]].to_numpy(dtype=float)
    table = dict(
        estimate=est, se=se, se_test=np.full(adata.n_vars, np.nan), stat=stat,
        df=np.full(adata.n_vars, float(dfs[0]) if weights is None and between is None else np.nan), p_value=p,
        loglik_full=ll_full, loglik_reduced=ll_reduced, **_dropped_variance(adata, sub, reduced.random),
    )  # fmt: skip
    info = {
        "method": "lrt",
        "contrast": "" if contrast is None else str(contrast),
        "dropped_columns": reduced.dropped,
        "reduced_formula": reduced.description,
        "reduced_columns": list(reduced.columns),
        "df": int(dfs[0]) if weights is None else float("nan"),
        "reference": _reference_name(dfs, weights, between),
        **({"slope_df": float(between)} if between is not None else {}),
        **_random_info(reduced.random, dfs, weights),
        "seconds": float(time.perf_counter() - t0),
    }
    change = reduced.random
    dropped = [*reduced.dropped, *(change.dropped_variances or change.dropped_correlations)]
    named = reduced_formula is None or contrast is None
    name = "lrt_" + ("_".join(dropped) if named else contrast_name(str(contrast)))
    return table, info, contrast_name(name)


def _slope_df(params: Mapping, reduced: _Reduced) -> float | None:
    """The between-level df of the dropped fixed effects when they have a random slope (kept in both models):
    the smallest of their ``slope_df``; None otherwise (the chi-square reference)."""
    slope_df = params.get("slope_df") or {}
    slopes = [c for c in reduced.dropped if c in slope_df]
    if not slopes or reduced.random.changed:
        return None
    return float(min(float(slope_df[c]) for c in slopes))


def _reference_name(dfs: list[int], weights: list[float] | None, between: float | None) -> str:
    """The reference distribution of an LRT, in words."""
    if between is not None:
        return f"F({dfs[0]}, {between:g}) of LR / {dfs[0]}"
    return f"chi-square({dfs[0]})" if weights is None else mixture_name(dfs, weights)


def _random_info(change: RandomChange, dfs: list[int], weights: list[float] | None) -> dict:
    """What an LRT that changes the random effects adds to ``uns[k]['contrasts'][name]``."""
    if not change.changed:
        return {}
    out = {
        "dropped_variances": list(change.dropped_variances),
        "dropped_correlations": list(change.dropped_correlations),
    }
    if weights is not None:
        out |= {"mixture_df": [int(d) for d in dfs], "mixture_weights": [float(w) for w in weights]}
    return out


def _dropped_variance(adata: AnnData, sub: str, change: RandomChange) -> dict[str, np.ndarray]:
    """The fitted value of the variance an LRT drops (column ``variance``), from ``varm[f'{sub}_varcomp']``."""
    table = adata.varm.get(varm_key(sub, "varcomp"))
    if not change.dropped_variances or table is None or change.dropped_variances[0] not in table.columns:
        return {}
    return {"variance": table[change.dropped_variances[0]].to_numpy(dtype=float)}


def run_cells(adata: AnnData, sub: str, label: str, params: Mapping) -> np.ndarray:
    """The cells of a run (its group's, or all), checked against the fit."""
    mask = np.ones(adata.n_obs, dtype=bool)
    if label != "":
        mask = (adata.obs[str(params["groupby"])].astype(str) == label).to_numpy()
    if int(mask.sum()) != int(params["n_cells"]):
        msg = (
            f"the cells of {sub!r} changed since the fit ({int(mask.sum())} now, {params['n_cells']} fitted); "
            "the likelihood-ratio test needs the fitted cells: refit first."
        )
        raise InvalidValueError(msg, param="adata")
    return mask


def _reduced_model(params: Mapping, obs: pd.DataFrame, sub: str, contrast, reduced_formula: str | None) -> _Reduced:
    """The null model: ``reduced_formula`` (nested in the fit's) or the fit without the contrast's columns."""
    cols = [str(c) for c in params["design_columns"]]
    fitted = parse_fit_formula(str(params["formula"]))
    shown = " + ".join(str(t) for t in fitted.specs)
    full = build_design(str(params["fixed_formula"]), obs)
    if full.columns != cols:
        msg = f"the design of {sub!r} changed since the fit ({full.columns} now, {cols} fitted); refit first."
        raise InvalidValueError(msg, param="adata")
    if reduced_formula is None:
        dropped = _drop_columns(contrast, cols)
        keep = [i for i, c in enumerate(cols) if c not in dropped]
        description = f"{params['fixed_formula']} without {dropped} + {shown}"
        matrix, columns, parsed = full.matrix[:, keep], [cols[i] for i in keep], fitted
    else:
        formula = reduced_formula if "|" in reduced_formula else f"{reduced_formula.rstrip()} + {shown}"
        try:
            parsed = parse_fit_formula(formula)
        except InputError as err:
            raise type(err)(str(err), param="reduced_formula") from None
        matrix, columns, dropped = _reduced_fixed(parsed, obs, cols)
        description = parsed.formula
    change = random_change(tuple(build_re_terms(fitted.specs, obs)), parsed, obs, shown_full=shown)
    if len(columns) >= len(cols) and not change.changed:
        msg = f"the reduced model drops no column of {cols} and keeps the random effects {shown}; nothing to test."
        raise InvalidValueError(msg, param="reduced_formula")
    return _Reduced(matrix, columns, dropped, description, change)


def _reduced_fixed(
    parsed: ParsedFormula, obs: pd.DataFrame, cols: list[str]
) -> tuple[np.ndarray, list[str], list[str]]:
    """The fixed design of ``reduced_formula``, its columns and the fitted columns it drops."""
    try:
        red = build_design(parsed.fixed, obs)
    except InputError as err:
        raise type(err)(str(err), param="reduced_formula") from None
    extra = [c for c in red.columns if c not in cols]
    if extra:
        msg = f"reduced_formula is not nested in the fitted model: column(s) {extra} are not in {cols}."
        raise InvalidValueError(msg, param="reduced_formula")
    return red.matrix, list(red.columns), [c for c in cols if c not in red.columns]


def _drop_columns(contrast, cols: list[str]) -> list[str]:
    """The columns an LRT without ``reduced_formula`` drops: named columns, or all of a variable's."""
    if isinstance(contrast, str):
        items = [contrast]
    elif isinstance(contrast, Sequence) and all(isinstance(c, str) for c in contrast):
        items = list(contrast)
    else:
        msg = (
            "for method='lrt' without reduced_formula, contrast names the column(s) to drop: a design column, "
            f"a variable (all its columns) or a list of columns; got {contrast!r}. Or pass reduced_formula."
        )
        raise InvalidValueError(msg, param="contrast")
    drop: list[str] = []
    for it in items:
        if it in cols:
            drop.append(it)
            continue
        matches = [c for c in cols if c.startswith(f"{it}[")]
        if not matches:
            msg = f"{it!r} is neither a design column nor a variable of the design; columns: {cols}."
            raise MissingKeyError(msg, param="contrast")
        drop += matches
    if "Intercept" in drop and len(drop) == len(cols):
        msg = "the reduced model would have no fixed effect at all."
        raise InvalidValueError(msg, param="contrast")
    return list(dict.fromkeys(drop))


def _refit(
    adata: AnnData, sub: str, params: Mapping, mask: np.ndarray, reduced: _Reduced, n_jobs: int | None, progress
) -> np.ndarray:
    """Log-likelihood of the reduced model per gene (NaN for the genes the fit filtered out)."""
    status = adata.varm[varm_key(sub, "fit")]["status_code"].to_numpy(dtype=np.int64)
    idx = np.flatnonzero((status & FILTERED) == 0)
    layer = params["layer"]
    Y, _ = _inputs.counts(adata, None if layer in (None, "X") else str(layer))
    ll = refit_loglik(
        Y[mask][:, idx], reduced.matrix, reduced.columns, reduced.random, stored_log_offset(adata, sub)[mask],
        n_agq=int(params["n_agq"]),
        separation=str(params["separation"]),
        n_jobs=int(params["n_jobs"] if n_jobs is None else n_jobs), progress=progress,
    )  # fmt: skip
    out = np.full(adata.n_vars, np.nan)
    out[idx] = ll
    return out
