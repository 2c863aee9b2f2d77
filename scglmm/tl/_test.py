# ruff: noqa: PT028  (the public function is named `test`; it is not a pytest test)
"""Tests after a fit: Wald tests of linear contrasts (no refit) and likelihood-ratio tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _inputs
from .._core._inference import bh_adjust, contrast_vector, wald_pvalues
from .._formula import build_design, build_re_terms, parse_fit_formula
from .._layout import (
    coef_cov,
    contrast_key,
    contrast_name,
    fit_params,
    run_keys,
    varm_key,
    write_contrast,
)
from .._logging import logger
from ._lrt import lrt_one, run_cells
from ._wald import LevelTest, check_calibration, level_test, slope_contrast_columns, slope_contrast_test

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
    ``LR = 2 (l_full - l_reduced)`` to a chi-square with as many degrees of freedom ``d`` as fixed-effect
    columns were dropped; when the dropped columns have a random slope kept in both models (``condition``
    under ``(1 + condition | donor)``), their information is the spread between the slope's levels and
    ``LR / d`` is referred to ``F(d, slope_df)`` instead (the df of the Wald test's ``"t"``; the chi-square
    is anti-conservative with few donors). The Wald test under ``"eb"`` is the more powerful of the two.
    A ``reduced_formula`` may also drop random effects (a variance component):
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
        - two levels of a factor, first minus second: ``("treatment", "B", "A")`` or, as PyDESeq2
          writes it, ``["treatment", "B", "A"]`` (either may be the reference level);
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
            columns, info, name = lrt_one(adata, sub, label, contrast, reduced_formula, n_jobs, progress)
            table = _table(adata, **columns)
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
    check_calibration(params, cal, sub)
    lt = _level_test(adata, sub, label, params, vec)
    out = wald_pvalues(
        adata.varm[varm_key(sub, "coef")][cols].to_numpy(dtype=float),
        coef_cov(adata, sub),
        vec,
        sigma2=lt.sigma2,
        donor_mask=lt.mask,
        donor_design=lt.design,
        calibration=cal,
        donor_cells=lt.cells,
        absorbed=lt.absorbed,
    )
    slopes = slope_contrast_columns(params, vec, cal)
    if slopes:  # a random slope's fixed effect: tested on the slope's levels, as its coefficient in tl.fit
        out |= slope_contrast_test(
            params, adata.obs.loc[run_cells(adata, sub, label, params)], adata.varm[varm_key(sub, "varcomp")],
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


def _level_test(adata: AnnData, sub: str, label: str, params: Mapping, vec: np.ndarray) -> LevelTest:
    """The term whose levels the contrast ``vec`` is tested on (:func:`._wald.level_test`): from the stored
    donor-level design for ``(1 | donor)``, from the run's cells for other structures."""
    if "random_structure" not in params:
        donor_level = set(params["donor_level_columns"])
        cols = [str(c) for c in params["design_columns"]]
        return LevelTest(
            group=str(params["donor_key"]),
            sigma2=adata.varm[varm_key(sub, "fit")]["sigma2"].to_numpy(dtype=float),
            mask=np.array([c in donor_level for c in cols]),
            design=np.asarray(params["donor_design"], dtype=float),
            cells=np.asarray(params["donor_cells"], dtype=float),
        )
    obs = adata.obs.loc[run_cells(adata, sub, label, params)]
    X = build_design(str(params["fixed_formula"]), obs).matrix
    terms = tuple(build_re_terms(parse_fit_formula(str(params["formula"])).specs, obs))
    varcomp = adata.varm[varm_key(sub, "varcomp")]
    return level_test(terms, X, varcomp.to_numpy(dtype=float), [str(c) for c in varcomp.columns], vec)


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
