"""Cell-type composition across samples and donors: a binomial GLMM per cell type (issue 21).

:func:`composition` pools the cells of an AnnData into samples (cells per sample and type), fits each
type's counts among its sample's cells (or among the cells of a reference set of types) with the
binomial family of the general engine (:mod:`scglmm._core._family`), tests every fixed effect by Wald
(on the normal and on a t with the between-level df) and by a likelihood ratio (chi-square and F), and
stores everything in ``adata.uns[key_added]`` (plain arrays, so it survives ``write_h5ad``).
:func:`composition_table` is the same on a table of counts (samples x types), without AnnData.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from .. import _inputs
from .._core._api import fit_genes
from .._core._errors import InvalidTypeError, InvalidValueError, MissingKeyError
from .._core._inference import level_design
from .._formula import FixedDesign, build_design, build_re_terms, parse_fit_formula, required_variables
from .._logging import info, warn

if TYPE_CHECKING:
    from anndata import AnnData

    from .._core._results import GenesFit

__all__ = ["COMPOSITION_TESTS", "DEFAULT_COMPOSITION_TEST", "composition", "composition_table"]

#: The tests stored for every coefficient: Wald on the normal (``"z"``) and on a t with the between-level
#: df (``"t"``), likelihood ratio on chi-square(1) (``"lrt"``), as ``LR`` on F(1, df) (``"lrt_f"``) and
#: turned into the F of the normal model of the levels' values, ``df (exp(LR / n) - 1)`` on F(1, df)
#: with ``n`` the levels (``"lrt_fn"``).
COMPOSITION_TESTS = ("z", "t", "lrt", "lrt_f", "lrt_fn")
#: The default test (``benchmarks/composition_calibration.py``, 10 types, 400 data sets per scenario:
#: ``lrt_fn`` keeps 0.044-0.050 at p < 0.05 unpaired 5 and 6 and paired 6 and 10 donors, with the power
#: of the logit t-test or more (paired 6: 0.891 vs 0.884); ``lrt_f`` is conservative in paired designs
#: (0.024 at 6 donors, power 0.834), the Wald t reaches 0.062-0.069, z 0.099-0.134, the chi-square LRT
#: 0.073-0.088).
DEFAULT_COMPOSITION_TEST = "lrt_fn"


def composition(
    adata: AnnData,
    groupby: str,
    formula: str,
    *,
    sample_key: str | None = None,
    reference: str | Sequence[str] | None = None,
    test: str = DEFAULT_COMPOSITION_TEST,
    key_added: str = "scglmm_composition",
    copy: bool = False,
) -> AnnData | None:
    """Test every cell type's share of its sample's cells with a binomial GLMM across donors.

    For cell type ``k`` and sample ``s`` with ``y_sk`` of ``n_s`` cells, ``y_sk ~ Binomial(n_s, p_sk)``,
    ``logit p_sk = x_s' beta_k + z_s' b_k`` with the random effects of ``formula`` (as
    :func:`scglmm.tl.fit`: ``(1 | donor)``, ``(1 | donor/sample)``, slopes), fitted by the exact Laplace
    approximation; one fit per type. Coefficients are log odds ratios.

    Parameters
    ----------
    adata
        One row per cell.
    groupby
        The ``obs`` column of cell types (categorical or strings, no missing labels).
    formula
        Fixed effects and random effects, e.g. ``"~ condition + (1 | donor)"``. When donors have several
        samples (a donor in both conditions, or replicates), add a sample-level term,
        ``"~ condition + (1 | donor) + (1 | donor:sample)"``: it absorbs the overdispersion between
        samples beyond the donor effect, without which the tests are anti-conservative
        (``docs/composition.md``). Every variable must be constant within a sample.
    sample_key
        The ``obs`` column of samples: the cells pooled into one binomial row. Default: the distinct
        combinations of the formula's variables (each donor x condition, for the formula above).
    reference
        None: each type against all other cells of its sample. A type or a list of types: each other
        type against the reference set (``n_s`` = the sample's cells of the type and of the set), the
        remedy of the compositional caveat when the set is known not to change; the reference types are
        not tested.
    test
        The test reported as ``p_value`` by :func:`scglmm.get.composition`: ``"lrt_fn"`` (default, chosen
        from a calibration study: the likelihood ratio ``LR`` against the model without the coefficient,
        turned into the F statistic it is in the normal linear model of the ``n`` donors' values,
        ``df (exp(LR / n) - 1)``, on F(1, df) with the between-level df, donors less the rank of the
        donor-level design), ``"lrt_f"`` (``LR`` itself on F(1, df); conservative in paired designs),
        ``"t"`` (Wald on a t with those df), ``"z"`` (Wald on the normal) or ``"lrt"`` (LR on
        chi-square(1)). All are stored.
    key_added
        Key in ``adata.uns``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    None (or the copy) and writes ``adata.uns[key_added]``: ``params``, ``types`` (tested),
    ``coef_names``, ``varcomp_names``, ``coef``, ``se`` (types x coefficients), ``varcomp``, ``loglik``,
    ``status``, ``df`` (per coefficient), ``wald_stat``, ``lrt_stat``, ``p_z``, ``p_t``, ``p_lrt``,
    ``p_lrt_f``, ``p_lrt_fn`` (types x coefficients), ``counts`` (samples x all types), ``all_types``, ``samples``
    and ``sample_obs`` (the samples' variables, as strings). Read it with :func:`scglmm.get.composition`.
    """
    adata = adata.copy() if copy else adata
    key = _inputs.key_added(key_added)
    _check_test(test)
    counts, sobs = sample_counts(adata.obs, groupby, formula, sample_key)
    warn_no_sample_term(counts, _model(sobs, formula).terms)
    out = composition_table(counts, sobs, formula, reference=reference)
    out["params"] = {
        **out["params"],
        "groupby": groupby,
        "sample_key": sample_key or "",
        "test": test,
    }
    adata.uns[key] = out
    info(f"scglmm composition: {len(out['types'])} cell types in {counts.shape[0]} samples, stored in .uns[{key!r}]")
    return adata if copy else None


def _check_test(test: object) -> None:
    if test not in COMPOSITION_TESTS:
        msg = f"test={test!r}: must be one of {list(COMPOSITION_TESTS)}."
        raise InvalidValueError(msg, param="test")


def sample_counts(
    obs: pd.DataFrame, groupby: str, formula: str, sample_key: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells per sample and type (samples x types) and the samples' variables, from one row per cell."""
    types = _cell_types(obs, groupby)
    variables = _formula_variables(formula, obs)
    if sample_key is not None:
        if sample_key not in obs.columns:
            msg = f"sample_key={sample_key!r} is not a column of adata.obs; available: {list(obs.columns)}."
            raise MissingKeyError(msg, param="sample_key")
        variables = [v for v in variables if v != sample_key] + [sample_key]
    for v in variables:
        if obs[v].isna().any():
            msg = f"obs column {v!r} has {int(obs[v].isna().sum())} missing value(s); fill them or subset the cells."
            raise InvalidValueError(msg, param="adata")
    key = obs[sample_key].astype(str) if sample_key else _combination(obs, variables)
    _check_sample_level(obs, key, variables, sample_key)
    counts = pd.crosstab(key, types).astype(np.int64)
    sobs = obs[variables].groupby(key.to_numpy(), observed=True).first().loc[counts.index]
    for v in variables:  # keep categorical levels (the reference level of a factor) as in obs
        if isinstance(obs[v].dtype, pd.CategoricalDtype):
            sobs[v] = pd.Categorical(sobs[v], categories=obs[v].cat.categories)
    return counts, sobs


def _cell_types(obs: pd.DataFrame, groupby: str) -> pd.Series:
    """The cell-type labels, checked: an obs column, categorical or strings, no missing label."""
    if groupby not in obs.columns:
        msg = f"groupby={groupby!r} is not a column of adata.obs; available: {list(obs.columns)}."
        raise MissingKeyError(msg, param="groupby")
    col = obs[groupby]
    if not (isinstance(col.dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(col)
            or pd.api.types.is_string_dtype(col)):  # fmt: skip
        msg = (
            f"groupby={groupby!r} must hold cell-type labels (categorical or strings), got dtype {col.dtype}; "
            f"convert it, e.g. adata.obs[{groupby!r}] = adata.obs[{groupby!r}].astype(str).astype('category')."
        )
        raise InvalidTypeError(msg, param="groupby")
    if col.isna().any():
        msg = f"groupby={groupby!r}: {int(col.isna().sum())} cell(s) without a label; label or remove them first."
        raise InvalidValueError(msg, param="groupby")
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.remove_unused_categories().rename("cell_type")
    return col.astype(str).astype("category").rename("cell_type")


def _formula_variables(formula: str, obs: pd.DataFrame) -> list[str]:
    """The obs columns of the formula's fixed part and of its grouping factors."""
    parsed = parse_fit_formula(formula)
    names = list(required_variables(parsed.fixed))
    for spec in parsed.specs:
        names += [g for g in spec.group if g not in names]
        names += [v for v in required_variables(f"~ {spec.lhs}") if v not in names]
    missing = [v for v in names if v not in obs.columns]
    if missing:
        msg = f"column(s) {missing} of the formula are not in adata.obs; available: {list(obs.columns)}."
        raise MissingKeyError(msg, param="formula")
    return names


def _combination(obs: pd.DataFrame, variables: list[str]) -> pd.Series:
    """A label per distinct combination of ``variables`` (the default samples)."""
    if not variables:
        return pd.Series("all", index=obs.index)
    parts = [obs[v].astype(str) for v in variables]
    out = parts[0]
    for p in parts[1:]:
        out = out + "|" + p
    return out


def _check_sample_level(obs: pd.DataFrame, key: pd.Series, variables: list[str], sample_key: str | None) -> None:
    """Refuse a formula variable that varies within a sample (or, without ``sample_key``, from cell to cell)."""
    n_samples = key.nunique()
    if sample_key is None and n_samples > max(2, obs.shape[0] // 2):
        msg = (
            f"the formula's variables {variables} take {n_samples} combinations in {obs.shape[0]} cells: a "
            "variable varies from cell to cell. Composition models need sample-level variables; pass sample_key."
        )
        raise InvalidValueError(msg, param="formula")
    if sample_key is None:
        return
    varying = [v for v in variables if v != sample_key and (obs.groupby(key.to_numpy())[v].nunique() > 1).any()]
    if varying:
        msg = (
            f"column(s) {varying} vary within the samples of sample_key={sample_key!r}; a composition model needs "
            "sample-level variables (one value per sample)."
        )
        raise InvalidValueError(msg, param="formula")


@dataclass(frozen=True)
class _Model:
    """The sample-level model of a composition: design, terms and the between-level df per column."""

    design: FixedDesign
    terms: tuple
    df: np.ndarray
    levels: np.ndarray


def _model(sobs: pd.DataFrame, formula: str) -> _Model:
    parsed = parse_fit_formula(formula)
    design = build_design(parsed.fixed, sobs)
    terms = tuple(build_re_terms(parsed.specs, sobs))
    codes = [t.codes for t in terms if t.scalar_intercept]
    return _Model(design, terms, *_between_df(design.matrix, codes))


def _between_df(X: np.ndarray, codes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the df of the t reference: levels less the rank of the level design of the random
    intercept on whose levels the column is constant (:func:`level_design`); infinite if there is none;
    and the number of those levels less the effects of the coarser terms they nest in (donors, for samples
    in donors: the units the ML variance is estimated from; NaN if none)."""
    df = np.full(X.shape[1], np.inf)
    levels = np.full(X.shape[1], np.nan)
    for j in range(X.shape[1]):
        c = np.zeros(X.shape[1])
        c[j] = 1.0
        lv = level_design(X, codes, c) if codes else None
        if lv is not None:
            Xd = lv.design[:, lv.mask]
            df[j] = max(Xd.shape[0] - np.linalg.matrix_rank(Xd), 1)
            levels[j] = Xd.shape[0] - lv.absorbed
    return df, levels


def composition_table(
    counts: pd.DataFrame, sample_obs: pd.DataFrame, formula: str, *, reference: str | Sequence[str] | None = None
) -> dict:
    """The fits and tests of :func:`composition` from cells per sample and type (samples x types) and the
    samples' variables (one row per sample, same index); returns what :func:`composition` stores."""
    model = _model(sample_obs, formula)
    y, trials, tested = _responses(counts, reference)
    X, names = model.design.matrix, model.design.columns
    fit = fit_genes(y, X, model.terms, family="binomial", trials=trials, coef_names=names, check=False)
    stat_w = fit.coef / fit.se
    lr = _lrt(y, trials, X, model.terms, fit)
    df = model.df
    with np.errstate(invalid="ignore"):
        p_lrt_f = stats.f.sf(lr, 1, df[None, :])
        # the LR as the F statistic it is in the normal linear model of the n levels' values
        # (LR = n log(1 + F / df)): F = df (exp(LR / n) - 1) on F(1, df)
        p_lrt_fn = stats.f.sf(df[None, :] * np.expm1(lr / model.levels[None, :]), 1, df[None, :])
    return {
        "params": {
            "formula": formula,
            "reference": [] if reference is None else list(np.atleast_1d(reference).astype(str)),
            "factor_columns": [c for c in names if c in model.design.factor_levels],
            "factor_variables": [model.design.factor_levels[c][0] for c in names if c in model.design.factor_levels],
        },
        "types": np.asarray(tested, dtype=str),
        "coef_names": np.asarray(names, dtype=str),
        "varcomp_names": np.asarray(fit.varcomp_names, dtype=str),
        "coef": fit.coef, "se": fit.se, "varcomp": fit.varcomp, "loglik": fit.loglik,
        "status": np.asarray(fit.status_str, dtype=str), "df": df,
        "wald_stat": stat_w, "lrt_stat": lr,
        "p_z": 2.0 * stats.norm.sf(np.abs(stat_w)), "p_t": 2.0 * stats.t.sf(np.abs(stat_w), df[None, :]),
        "p_lrt": stats.chi2.sf(lr, 1), "p_lrt_f": p_lrt_f, "p_lrt_fn": p_lrt_fn,
        "counts": counts.to_numpy(dtype=np.int64), "all_types": np.asarray(counts.columns, dtype=str),
        "samples": np.asarray(counts.index, dtype=str), "sample_obs": sample_obs.astype(str).reset_index(drop=True),
    }  # fmt: skip


def _responses(counts: pd.DataFrame, reference: str | Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Successes (samples x tested types), their trials and the tested types."""
    Y = counts.to_numpy(dtype=np.float64)
    types = [str(c) for c in counts.columns]
    if reference is None:
        return Y, Y.sum(axis=1), types
    ref = [str(r) for r in np.atleast_1d(reference)]
    unknown = [r for r in ref if r not in types]
    if unknown or len(ref) >= len(types):
        msg = f"reference={reference!r}: name one or more (not all) of the cell types {types}."
        raise InvalidValueError(msg, param="reference")
    is_ref = np.isin(types, ref)
    base = Y[:, is_ref].sum(axis=1, keepdims=True)
    return Y[:, ~is_ref], Y[:, ~is_ref] + base, [t for t, r in zip(types, is_ref, strict=True) if not r]


def _lrt(y: np.ndarray, trials: np.ndarray, X: np.ndarray, terms: tuple, fit: GenesFit) -> np.ndarray:
    """Likelihood-ratio statistics (types x coefficients) of each coefficient against the model without
    its column (NaN for the intercept and where either fit failed)."""
    out = np.full(fit.coef.shape, np.nan)
    for j, name in enumerate(fit.coef_names):
        if name == "Intercept" or X.shape[1] == 1:
            continue
        keep = np.arange(X.shape[1]) != j
        red = fit_genes(y, X[:, keep], terms, family="binomial", trials=trials, check=False)
        with np.errstate(invalid="ignore"):
            out[:, j] = np.maximum(2.0 * (fit.loglik - red.loglik), 0.0)
    return out


def warn_no_sample_term(counts: pd.DataFrame, terms: tuple) -> None:
    """Warn when some level of every term holds several samples (no observation-level term)."""
    if all(t.m < counts.shape[0] for t in terms):
        warn(
            "several samples share a level of every random effect: add a sample-level term (e.g. "
            "'(1 | donor:sample)') to absorb the overdispersion between samples (docs/composition.md)."
        )
