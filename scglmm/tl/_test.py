# ruff: noqa: PT028  (the public function is named `test`; it is not a pytest test)
"""Tests after a fit: Wald tests of linear contrasts (no refit) and likelihood-ratio tests."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _inputs
from .._core._errors import InputError, InvalidValueError, MissingKeyError
from .._core._inference import bh_adjust, contrast_vector, lrt_pvalues, mixture_name, wald_pvalues
from .._core._status import FILTERED
from .._formula import ParsedFormula, build_design, build_re_terms, parse_fit_formula
from .._layout import (
    coef_cov,
    contrast_key,
    contrast_name,
    fit_params,
    run_keys,
    stored_log_offset,
    varm_key,
    write_contrast,
)
from .._logging import logger
from ._re_test import (
    RandomChange,
    check_re_calibration,
    random_change,
    random_specs,
    refit_loglik,
    slope_contrast_columns,
    slope_contrast_test,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import ArrayLike

__all__ = ["test"]


def test(
    adata: AnnData,
    contrast: str | Sequence | Mapping[str, float] | ArrayLike | None = None,
    *,
    key: str = "scglmm",
    method: Literal["wald", "lrt"] = "wald",
    reduced_formula: str | None = None,
    key_added: str | None = None,
    calibration: str | None = None,
    group: str | Sequence[str] | None = None,
    n_jobs: int | None = None,
    progress: bool | None = None,
) -> str:
    """Test a linear contrast of the fixed effects of a fit, or a variance component, for every gene.

    ``method="wald"`` uses the stored coefficients and covariance (no refit): the estimate
    ``c' beta``, its standard error ``sqrt(c' V c)`` and a two-sided p-value whose reference
    distribution follows ``calibration`` (see :func:`scglmm.tl.fit`). On a fit with random slopes,
    under ``"eb"`` and ``"t"`` a contrast that weights a fixed effect with a random slope is
    tested on the levels of the slope's grouping factor, as the coefficient itself in
    :func:`scglmm.tl.fit`: ``"t"`` refers it to t with the slope's degrees of freedom (the smallest
    if it weights several), ``"eb"`` to the empirical-Bayes prior of the contrast's slope variance
    across genes (``v' Sigma v`` with ``v`` the contrast of the slopes' weights on the random
    coefficients; as ``"t"`` when the weighted slopes belong to different terms, or with fewer than
    50 genes).

    ``method="lrt"`` refits the reduced model with identical settings (cells, genes, offset, layer,
    ``n_agq``; random effects as fitted unless ``reduced_formula`` changes them) and refers
    ``LR = 2 (l_full - l_reduced)`` to a chi-square with as many degrees of freedom as fixed-effect
    columns were dropped. A ``reduced_formula`` may also drop random effects (a variance component):
    one variance with its ``k`` covariances (a random slope of ``(1 + condition | donor)``, with
    ``k = 1``; a ``(1 | batch)`` term, ``k = 0``), whose null value 0 sits on the boundary, so
    ``LR`` is referred to the mixture ``0.5 chi2(d + k) + 0.5 chi2(d + k + 1)`` (``d`` the dropped
    fixed-effect columns, ``chi2(0)`` the point mass at 0; Self & Liang 1987, Stram & Lee 1994), or
    correlations only (``|`` to ``||``), referred to ``chi2(d + k)`` for ``k`` correlations. Other
    changes (two variances at once, random effects the fit does not have) are refused. The reduced
    model is fitted by the compiled kernel when its random effects are one ``(1 | g)``, else by the
    general engine; both give the same Laplace log-likelihood. Benjamini-Hochberg adjusts over the
    genes with a p-value.

    Parameters
    ----------
    adata
        An AnnData on which :func:`scglmm.tl.fit` has run.
    contrast
        What to test. For ``"wald"``:

        - a design column or a variable with one column: ``"condition[T.stim]"``, ``"condition"``;
        - two levels of a factor, first minus second: ``("treatment", "B", "A")`` (either may be
          the reference level);
        - an expression of design columns: ``"treatment[T.B] - treatment[T.A]"``, with optional
          numeric weights (``"0.5*x[T.a] + 0.5*x[T.b]"``);
        - a mapping ``{column: weight}`` or a numeric vector with one weight per design column.

        For ``"lrt"``: a label for the test and, without ``reduced_formula``, the column(s) to
        drop (a column, a variable name, which drops all of its columns, or a list of columns).
        May be left out for an LRT with ``reduced_formula`` (the name lists what is dropped).
    key
        The ``key_added`` of the fit.
    method
        ``"wald"`` or ``"lrt"``.
    reduced_formula
        For ``"lrt"``: the null model's formula, nested in the fitted one, e.g. ``"~ 1"`` or
        ``"~ 1 + (1 | donor)"`` (the fitted random effects are added if it has none), or
        ``"~ condition + (1 | donor)"`` on a fit with ``(1 + condition | donor)`` to test the random
        slope.
    key_added
        Name of the stored results; default: derived from the contrast (``condition[T.stim]``,
        ``treatment_B_vs_A``, ``treatment[T.B]-treatment[T.A]``, ``lrt_condition``,
        ``lrt_var(condition[T.stim]|donor)``).
    calibration
        Reference distribution of Wald tests (see :func:`scglmm.tl.fit` and docs/calibration.md),
        one of ``"eb"``, ``"z"``, ``"t"``, ``"t_reml"``, ``"t_floor"``,
        ``"satterthwaite"``, ``"satterthwaite_floor"``; ``None`` uses the fit's. ``"eb"`` estimates
        its prior from the genes tested here (with ``group``, from each group's genes).
    group
        With a ``groupby`` fit: the group(s) to test; ``None`` tests every fitted group.
    n_jobs
        Threads for the refit of ``"lrt"``; ``None`` uses the fit's.
    progress
        Progress bar for the refit; ``None``, ``True``, ``False`` as in :func:`scglmm.tl.fit`.

    Returns
    -------
    The name of the stored results (for :func:`scglmm.get.results` with ``contrast=``). Writes,
    for each fitted key ``k`` (the fit's key, or each group's key ``f'{key}:{group}'``):

    `adata.varm[f'{k}_contrast_{name}']` : :class:`pandas.DataFrame`
        Per gene: ``estimate`` (natural log; for an LRT the estimate of a single dropped column,
        else NaN), ``log2_fc``, ``se`` (model), ``se_test`` (used in the statistic), ``stat``
        (Wald statistic, or the LR statistic), ``df`` (NaN for a mixture reference), ``p_value``,
        ``adj_p_value``; an LRT adds ``loglik_full`` and ``loglik_reduced``, and one that drops a
        variance its fitted value ``variance``.
    `adata.uns[k]['contrasts'][name]` : `dict`
        The test's settings: method, contrast vector, design columns, calibration, reference
        distribution (``reference``, e.g. ``"chi-square(1)"`` or ``"0.5 chi2(1) + 0.5 chi2(2)"``),
        reduced formula; a Wald test on a random slope's effect ``slope_columns`` and ``slope_df``;
        an LRT of random effects ``dropped_variances``, ``dropped_correlations`` and, for a
        mixture, ``mixture_df`` and ``mixture_weights``.
    """
    method = _inputs.test_method(method, reduced_formula, contrast)
    calibration = _inputs.calibration(calibration, or_none=True)
    outputs: dict[str, tuple[pd.DataFrame, dict]] = {}
    name = ""
    for label, sub in run_keys(adata, key, group).items():
        if method == "wald":
            table, info, name = _wald_one(adata, sub, label, contrast, calibration)
        else:
            table, info, name = _lrt_one(adata, sub, label, contrast, reduced_formula, n_jobs, progress)
        outputs[sub] = (table, info)
    if key_added:
        name = contrast_name(key_added)
    for sub, (table, info) in outputs.items():  # write only after every group succeeded
        write_contrast(adata, sub, name, table, info)
    logger.info("added varm %s", [contrast_key(s, name) for s in outputs])
    return name


def _wald_one(
    adata: AnnData, sub: str, label: str, contrast, calibration: str | None
) -> tuple[pd.DataFrame, dict, str]:
    """The Wald test of ``contrast`` on one run, from its stored coefficients and covariance."""
    params = fit_params(adata, sub)
    cols = [str(c) for c in params["design_columns"]]
    vec, name = contrast_vector(contrast, cols, reference_levels=params["reference_levels"])
    cal = calibration or str(params["calibration"])
    check_re_calibration(params, cal, sub)
    donor_level = set(params["donor_level_columns"])
    out = wald_pvalues(
        adata.varm[varm_key(sub, "coef")][cols].to_numpy(dtype=float),
        coef_cov(adata, sub),
        vec,
        sigma2=adata.varm[varm_key(sub, "fit")]["sigma2"].to_numpy(dtype=float),
        donor_mask=np.array([c in donor_level for c in cols]),
        donor_design=np.asarray(params["donor_design"], dtype=float),
        calibration=cal,
        donor_cells=np.asarray(params["donor_cells"], dtype=float),
    )
    slopes = slope_contrast_columns(params, vec, cal)
    if slopes:  # a random slope's fixed effect: tested on the slope's levels, as its coefficient in tl.fit
        out |= slope_contrast_test(
            params, adata.obs.loc[_run_cells(adata, sub, label, params)], adata.varm[varm_key(sub, "varcomp")],
            vec, out["estimate"], out["se"] ** 2, columns=slopes, calibration=cal,
        )  # fmt: skip
    table = _table(
        adata, estimate=out["estimate"], se=out["se"], se_test=out["se_test"], stat=out["stat"],
        df=np.broadcast_to(np.asarray(out["df"], dtype=float), out["stat"].shape), p_value=out["p_value"],
    )  # fmt: skip
    info = {
        "method": "wald",
        "contrast": str(contrast) if not isinstance(contrast, np.ndarray) else str(contrast.tolist()),
        "vector": np.asarray(vec, dtype=float),
        "design_columns": cols,
        "calibration": cal,
        "donor_level": bool(out["donor_level"]),
        "scale": "natural log (log2_fc = estimate / ln 2)",
        **({"slope_columns": slopes, "slope_df": float(out["slope_df"])} if slopes else {}),
    }
    return table, info, contrast_name(name)


def _table(
    adata: AnnData,
    *,
    estimate: np.ndarray,
    se: np.ndarray,
    se_test: np.ndarray,
    stat: np.ndarray,
    df: np.ndarray,
    p_value: np.ndarray,
    **extra: np.ndarray,
) -> pd.DataFrame:
    """The per-gene table of a test (``varm[f"{sub}_contrast_{name}"]``)."""
    columns = {
        "estimate": estimate,
        "log2_fc": estimate / np.log(2.0),
        "se": se,
        "se_test": se_test,
        "stat": stat,
        "df": df,
        "p_value": p_value,
        "adj_p_value": bh_adjust(p_value),
        **extra,
    }
    return pd.DataFrame(columns, index=adata.var_names.copy())


# ------------------------------------------------------------------------------------------------
# likelihood-ratio tests
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reduced:
    """The null model of a likelihood-ratio test."""

    matrix: np.ndarray
    columns: list[str]
    dropped: list[str]
    description: str
    random: RandomChange


def _lrt_one(
    adata: AnnData, sub: str, label: str, contrast, reduced_formula: str | None, n_jobs: int | None, progress
) -> tuple[pd.DataFrame, dict, str]:
    """The likelihood-ratio test of one run: refit the reduced model on the run's cells."""
    params = fit_params(adata, sub)
    mask = _run_cells(adata, sub, label, params)
    reduced = _reduced_model(params, adata.obs.loc[mask], sub, contrast, reduced_formula)
    df_lr = len(params["design_columns"]) - len(reduced.columns)
    dfs, weights = reduced.random.reference(df_lr)
    t0 = time.perf_counter()
    ll_reduced = _refit(adata, sub, params, mask, reduced, n_jobs, progress)
    ll_full = adata.varm[varm_key(sub, "fit")]["loglik"].to_numpy(dtype=float)
    stat, p = lrt_pvalues(ll_full, ll_reduced, dfs if weights else dfs[0], weights)
    est, se = np.full(adata.n_vars, np.nan), np.full(adata.n_vars, np.nan)
    if df_lr == 1 and not reduced.random.changed:
        est = adata.varm[varm_key(sub, "coef")][reduced.dropped[0]].to_numpy(dtype=float)
        se = adata.varm[varm_key(sub, "se")][reduced.dropped[0]].to_numpy(dtype=float)
    table = _table(
        adata, estimate=est, se=se, se_test=np.full(adata.n_vars, np.nan), stat=stat,
        df=np.full(adata.n_vars, float(dfs[0]) if weights is None else np.nan), p_value=p,
        loglik_full=ll_full, loglik_reduced=ll_reduced, **_dropped_variance(adata, sub, reduced.random),
    )  # fmt: skip
    info = {
        "method": "lrt",
        "contrast": "" if contrast is None else str(contrast),
        "dropped_columns": reduced.dropped,
        "reduced_formula": reduced.description,
        "reduced_columns": list(reduced.columns),
        "df": int(dfs[0]) if weights is None else float("nan"),
        "reference": f"chi-square({dfs[0]})" if weights is None else mixture_name(dfs, weights),
        **_random_info(reduced.random, dfs, weights),
        "seconds": float(time.perf_counter() - t0),
    }
    change = reduced.random
    dropped = [*reduced.dropped, *(change.dropped_variances or change.dropped_correlations)]
    named = reduced_formula is None or contrast is None
    name = "lrt_" + ("_".join(dropped) if named else contrast_name(str(contrast)))
    return table, info, contrast_name(name)


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


def _run_cells(adata: AnnData, sub: str, label: str, params: Mapping) -> np.ndarray:
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
    shown = " + ".join(str(t) for t in random_specs(fitted))
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
    change = random_change(tuple(build_re_terms(random_specs(fitted), obs)), parsed, obs, shown_full=shown)
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
        Y[mask][:, idx], reduced.matrix, reduced.columns, reduced.random, adata.obs.loc[mask],
        stored_log_offset(adata, sub)[mask], n_agq=int(params["n_agq"]),
        n_jobs=int(params["n_jobs"] if n_jobs is None else n_jobs), progress=progress,
    )  # fmt: skip
    out = np.full(adata.n_vars, np.nan)
    out[idx] = ll
    return out
