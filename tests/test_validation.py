"""Every bad input is refused before any work, with a message naming the problem and what to do.

The cases below are also the source of ``docs/errors.md``: running this file as a script
(``python tests/test_validation.py``) rewrites that table from the messages the library really
raises, and ``test_error_table_is_current`` fails when the table and the messages drift apart.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scglmm
from scglmm._core._errors import InputError, InvalidValueError

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


# ------------------------------------------------------------------------------------------------
# data and the "AnnData unchanged" check
# ------------------------------------------------------------------------------------------------
def make_adata() -> ad.AnnData:
    """4 donors (2 ctrl, 2 stim) x 15 cells x 40 genes, raw counts in X and layers['counts']."""
    a = scglmm.datasets.simulate(n_donors=4, cells_per_donor=15, n_genes=40, mean_range=(0.5, 10.0), seed=3)
    a.layers["counts"] = a.X.copy()
    a.obs["sf"] = (a.obs["libsize"] / a.obs["libsize"].median()).astype(float)
    return a


def snapshot(a: ad.AnnData) -> dict[str, Any]:
    """Everything a failed call could have touched, copied."""
    X = a.X.toarray() if sparse.issparse(a.X) else np.array(a.X, copy=True)
    return {
        "shape": a.shape,
        "X": X,
        "obs": a.obs.copy(),
        "var": a.var.copy(),
        "keys": {
            "obs": list(a.obs.columns),
            "var": list(a.var.columns),
            "varm": sorted(a.varm.keys()),
            "obsm": sorted(a.obsm.keys()),
            "uns": sorted(a.uns.keys()),
            "layers": sorted(a.layers.keys()),
        },
    }


def assert_unchanged(a: ad.AnnData, before: dict[str, Any]) -> None:
    after = snapshot(a)
    assert after["shape"] == before["shape"]
    assert after["keys"] == before["keys"]
    np.testing.assert_array_equal(after["X"], before["X"])
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    pd.testing.assert_frame_equal(after["var"], before["var"])


# ------------------------------------------------------------------------------------------------
# the cases: tl.fit
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    what: str
    """The bad input, as the docs table names it."""
    exc: type[Exception]
    match: str
    """A regex the message must match (what the user needs to read)."""
    formula: Any = "~ condition + (1 | donor)"
    mutate: Callable[[ad.AnnData], None] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def _set_dense(a: ad.AnnData, value: float) -> None:
    X = a.X.toarray().astype(np.float64)
    X[0, 0] = value
    a.X = X


def _set_obs(col: str, value: Any, *, as_object: bool = False, row: int = 3) -> Callable[[ad.AnnData], None]:
    def f(a: ad.AnnData) -> None:
        if as_object:
            a.obs[col] = a.obs[col].astype(object)
        a.obs.loc[a.obs_names[row], col] = value

    return f


def _put_obs(col: str, value: Any) -> Callable[[ad.AnnData], None]:
    def f(a: ad.AnnData) -> None:
        a.obs[col] = value(a) if callable(value) else value

    return f


def _zero_cell(a: ad.AnnData) -> None:
    X = a.X.toarray()
    X[2, :] = 0
    a.X = X


FIT_CASES: list[Case] = [
    # formula syntax
    Case("formula_not_str", "formula is not a string", TypeError, r"formula must be a string.*got int", formula=3),
    Case(
        "formula_no_tilde", "formula without `~`", ValueError, r"must start with '~'", formula="condition + (1|donor)"
    ),
    Case(
        "formula_lhs",
        "formula with a left-hand side",
        ValueError,
        r"has a left-hand side; leave it out.*'~ condition \+ \(1\|donor\)'",
        formula="y ~ condition + (1|donor)",
    ),
    Case(
        "formula_unbalanced",
        "unbalanced parentheses",
        ValueError,
        r"unbalanced parentheses \(1 '\(' but 0 '\)'\)",
        formula="~ condition + (1|donor",
    ),
    Case(
        "formula_bad_operator",
        "malformed fixed part (`+ *`)",
        ValueError,
        r"could not parse the fixed part.*'~ condition \+ \*'.*Join terms with '\+'",
        formula="~ condition + * (1|donor)",
    ),
    Case(
        "formula_no_ansi",
        "malformed fixed part: message is plain text",
        ValueError,
        r"^[^\x1b]*$",
        formula="~ condition +* covariate + (1|donor)",
    ),
    Case(
        "formula_no_random",
        "no random-effect term",
        ValueError,
        r"no random-effect term; add a donor random intercept",
        formula="~ condition",
    ),
    Case(
        "formula_bare_bar",
        "random intercept without parentheses `1 | donor`",
        ValueError,
        r"no random-effect term: the random intercept needs its parentheses; "
        r"did you mean '~ condition \+ \(1 \| donor\)'\?",
        formula="~ condition + 1 | donor",
    ),
    Case(
        "formula_slash_bar",
        "`/` instead of `|` in `(1 / donor)`",
        ValueError,
        r"no random-effect term: a random intercept is written with a bar"
        r".*did you mean '~ condition \+ \(1 \| donor\)'",
        formula="~ condition + (1 / donor)",
    ),
    # unsupported random effects (random slopes, nesting, interactions, several terms and '||' are fitted)
    Case(
        "re_group_sum",
        "grouping factor that is not an obs column, `a:b` or `a/b`: `(1 | donor + sample)`",
        ValueError,
        r"grouping factor 'donor \+ sample'.*not supported: use an obs column, an interaction.*'a:b'.*'a/b'",
        formula="~ condition + (1 | donor + sample)",
    ),
    Case(
        "re_slope_expression",
        "expression before the bar `(1 + condition*covariate | donor)`",
        ValueError,
        r"'condition\*covariate' is not supported before the '\|'; use obs columns joined by '\+'",
        formula="~ condition + (1 + condition*covariate | donor)",
    ),
    Case(
        "re_duplicate",
        "the same random-effect term twice",
        ValueError,
        r"the random-effect term \(1 \| donor\) appears twice; keep one",
        formula="~ condition + (1 | donor) + (1 | donor)",
    ),
    Case(
        "re_no_intercept",
        "empty random term `( | donor)`",
        ValueError,
        r"has no coefficient before the '\|'; write a random intercept '\(1 \| donor\)'",
        formula="~ condition + ( | donor)",
    ),
    Case(
        "re_slope_agq",
        "`n_agq > 1` with a random slope",
        ValueError,
        r"n_agq=3: adaptive Gauss-Hermite quadrature needs a single random intercept.*Laplace.*use n_agq=1",
        formula="~ covariate + (1 + covariate | donor)",
        kwargs={"n_agq": 3},
    ),
    Case(
        "re_slope_calibration",
        "a calibration of the donor intercept only with a random slope",
        ValueError,
        r"calibration='satterthwaite' models a single donor random intercept.*use one of \['eb', 't', 'z'\]",
        formula="~ covariate + (1 + covariate | donor)",
        kwargs={"calibration": "satterthwaite"},
    ),
    Case(
        "re_group_missing",
        "grouping column of a general structure not in obs",
        KeyError,
        r"grouping column\(s\) \['batch'\] of the random-effect term \(1 \| donor:batch\) are not in adata.obs",
        formula="~ condition + (1 | donor/batch)",
    ),
    Case(
        "re_zero_only",
        "random term without a coefficient `(0 | donor)`",
        ValueError,
        r"random-effect term '\(0 \| donor\)' has no coefficient before the '\|'",
        formula="~ condition + (0 | donor)",
    ),
    Case(
        "re_bar_outside",
        "a `|` outside a `( ... | group)` term",
        ValueError,
        r"a '\|' outside a '\( ... \| group\)' term is not valid",
        formula="~ condition | donor + (1 | donor)",
    ),
    Case(
        "re_parentheses_inside",
        "a function call inside a random-effect term `(1 + log(covariate) | donor)`",
        ValueError,
        r"the random-effect term '\(1 \+ log\(covariate\) \| donor\)' has parentheses inside.*adata.obs",
        formula="~ condition + (1 + log(covariate) | donor)",
    ),
    Case(
        "re_coefficient_twice",
        "one grouping factor's intercept in two terms `(1 + covariate | donor) + (1 | donor)`",
        ValueError,
        r"both give 'donor' a random intercept, which would have two variances.*keep it in one term",
        formula="~ covariate + (1 + covariate | donor) + (1 | donor)",
    ),
    Case(
        "re_group_column_twice",
        "a grouping column named twice `(1 | donor/donor)`",
        ValueError,
        r"grouping factor 'donor/donor'.*names an obs column twice",
        formula="~ condition + (1 | donor/donor)",
    ),
    Case(
        "re_group_one_level",
        "a grouping factor with one level in the cells (crossed `(1 | batch)`)",
        ValueError,
        r"grouping factor 'batch' of the random-effect term \(1 \| batch\) has a single level.*Remove the term",
        formula="~ condition + (1 | donor) + (1 | batch)",
        mutate=_put_obs("batch", "b1"),
    ),
    Case(
        "re_nested_agq",
        "`n_agq > 1` with nested terms",
        ValueError,
        r"n_agq=5: adaptive Gauss-Hermite.*\(1 \| donor\) \+ \(1 \| donor:sample\).*Laplace.*use n_agq=1",
        formula="~ condition + (1 | donor/sample)",
        kwargs={"n_agq": 5},
    ),
    Case(
        "re_crossed_calibration",
        "a calibration of the donor intercept only with crossed terms",
        ValueError,
        r"calibration='satterthwaite' models a single donor random intercept.*\(1 \| batch\).*\['eb', 't', 'z'\]",
        formula="~ condition + (1 | donor) + (1 | batch)",
        mutate=_put_obs("batch", lambda a: np.array(["b1", "b2"])[np.arange(a.n_obs) % 2]),
        kwargs={"calibration": "satterthwaite"},
    ),
    # columns
    Case(
        "unknown_fixed",
        "unknown fixed-effect column",
        KeyError,
        r"\['conditon'\] of the formula are not in adata.obs.*available columns: \['donor', 'condition'",
        formula="~ conditon + (1 | donor)",
    ),
    Case(
        "unknown_group",
        "unknown donor column",
        KeyError,
        r"donor column 'donr' of '\(1 \| donr\)' is not in adata.obs; available columns",
        formula="~ condition + (1 | donr)",
    ),
    Case(
        "single_level",
        "a factor with one level in the cells",
        ValueError,
        r"obs column 'condition' has a single value \('ctrl'\).*remove 'condition' from the formula",
        mutate=_put_obs("condition", "ctrl"),
    ),
    Case(
        "missing_layer",
        "missing layer",
        KeyError,
        r"layer 'raw' not found; available layers: \['counts'\]",
        kwargs={"layer": "raw"},
    ),
    # counts
    Case(
        "counts_negative",
        "negative counts",
        ValueError,
        r"adata.X: found 1 negative value\(s\) \(e.g. -1.0\).*layer='counts'",
        mutate=lambda a: _set_dense(a, -1.0),
    ),
    Case(
        "counts_non_integer",
        "non-integer counts (normalised data)",
        ValueError,
        r"adata.X: found 1 non-integer value\(s\) \(e.g. 0.5\).*not normalised or log-transformed",
        mutate=lambda a: _set_dense(a, 0.5),
    ),
    Case(
        "counts_nan",
        "NaN counts",
        ValueError,
        r"adata.X: found 1 NaN and 0 infinite value\(s\)",
        mutate=lambda a: _set_dense(a, np.nan),
    ),
    Case(
        "counts_inf",
        "infinite counts",
        ValueError,
        r"adata.X: found 0 NaN and 1 infinite value\(s\)",
        mutate=lambda a: _set_dense(a, np.inf),
    ),
    Case(
        "counts_in_layer",
        "non-integer counts in a layer",
        ValueError,
        r"adata.layers\['lognorm'\]: found \d+ non-integer",
        mutate=lambda a: a.layers.__setitem__("lognorm", a.X.log1p()),
        kwargs={"layer": "lognorm"},
    ),
    Case(
        "counts_object",
        "counts of a non-numeric dtype",
        TypeError,
        r"adata.X must be numeric, got dtype object",
        mutate=lambda a: setattr(a, "X", a.X.toarray().astype(object)),
    ),
    # covariates and donors
    Case(
        "covariate_nan",
        "NaN in a numeric covariate",
        ValueError,
        r"obs column 'covariate' has 1 missing value\(s\).*fill them or subset",
        formula="~ condition + covariate + (1 | donor)",
        mutate=_set_obs("covariate", np.nan),
    ),
    Case(
        "covariate_inf",
        "infinite covariate",
        ValueError,
        r"obs column 'covariate' has 1 infinite value\(s\)",
        formula="~ condition + covariate + (1 | donor)",
        mutate=_set_obs("covariate", np.inf),
    ),
    Case(
        "factor_nan",
        "missing value in a factor",
        ValueError,
        r"obs column 'condition' has 1 missing value\(s\)",
        mutate=_set_obs("condition", None, as_object=True),
    ),
    Case(
        "donor_nan",
        "missing donor",
        ValueError,
        r"donor column 'donor' has 1 missing value\(s\); every cell needs a donor",
        mutate=_set_obs("donor", None, as_object=True),
    ),
    Case(
        "donor_empty",
        "an empty donor label",
        ValueError,
        r"donor column 'donor' has 15 empty label\(s\) ''; every cell needs a donor name",
        mutate=_put_obs("donor", lambda a: a.obs["donor"].astype(str).replace({"D01": ""})),
    ),
    Case(
        "one_donor",
        "fewer than two donors",
        ValueError,
        r"donor column 'donor' has 1 distinct value\(s\) \['D1'\]; a donor variance needs at least 2",
        formula="~ covariate + (1 | donor)",
        mutate=_put_obs("donor", "D1"),
    ),
    Case(
        "rank_deficient_copy",
        "rank-deficient design (a factor twice)",
        ValueError,
        r"rank deficient \(2 of 3 columns estimable\): column\(s\) \['cond2\[T.stim\]'\]",
        formula="~ condition + cond2 + (1 | donor)",
        mutate=_put_obs("cond2", lambda a: a.obs["condition"].copy()),
    ),
    Case(
        "rank_deficient_constant",
        "rank-deficient design (constant covariate)",
        ValueError,
        r"rank deficient.*column\(s\) \['const'\] are linear combinations",
        formula="~ condition + const + (1 | donor)",
        mutate=_put_obs("const", 2.0),
    ),
    # size factors and offsets
    Case(
        "sf_missing_column",
        "size-factor column not in obs",
        KeyError,
        r"size_factors column 'sizef' not in adata.obs",
        kwargs={"size_factors": "sizef"},
    ),
    Case(
        "sf_zero",
        "a zero size factor",
        ValueError,
        r"size_factors must be positive and finite.*found 1 zero in adata.obs\['sf'\] \(e.g. cells \['cell000000'\]\)",
        mutate=_set_obs("sf", 0.0, row=0),
        kwargs={"size_factors": "sf"},
    ),
    Case(
        "sf_negative",
        "a negative size factor (log-scale values passed as size factors)",
        ValueError,
        r"found 1 negative.*already on the log scale, pass it as offset=",
        mutate=_set_obs("sf", -0.3, row=0),
        kwargs={"size_factors": "sf"},
    ),
    Case(
        "sf_nan",
        "a missing size factor",
        ValueError,
        r"found 1 missing \(NaN\)",
        mutate=_set_obs("sf", np.nan, row=0),
        kwargs={"size_factors": "sf"},
    ),
    Case(
        "sf_inf",
        "an infinite size factor",
        ValueError,
        r"found 1 infinite",
        mutate=_set_obs("sf", np.inf, row=0),
        kwargs={"size_factors": "sf"},
    ),
    Case(
        "sf_not_numeric",
        "a size-factor column of strings",
        TypeError,
        r"size_factors column 'sf' must be numeric",
        mutate=_put_obs("sf", "x"),
        kwargs={"size_factors": "sf"},
    ),
    Case(
        "sf_shape",
        "a size-factor array of the wrong length",
        ValueError,
        r"size_factors must have one value per cell \(60\); got shape \(3,\)",
        kwargs={"size_factors": np.ones(3)},
    ),
    Case(
        "sf_and_offset",
        "both size_factors and offset",
        ValueError,
        r"pass either size_factors.*or offset.*not both",
        kwargs={"size_factors": "sf", "offset": "sf"},
    ),
    Case(
        "offset_nan",
        "a NaN log offset",
        ValueError,
        r"offset contains (1 )?NaN or infinite value",
        kwargs={"offset": np.r_[np.nan, np.zeros(59)]},
    ),
    Case(
        "zero_total_cells",
        "cells with zero total counts and the default size factors",
        ValueError,
        r"1 cell\(s\) have zero total counts \(e.g. \['cell000002'\]\).*filter_cells.*or pass size_factors=",
        mutate=_zero_cell,
    ),
    Case(
        "norm_method_unknown",
        "an unknown normalisation (edgeR's upper-case name)",
        ValueError,
        r"norm_method must be one of \('tmm', 'tmm_mode', 'ratio', 'none'\); got 'TMM'",
        kwargs={"norm_method": "TMM"},
    ),
    Case(
        "sample_key_missing",
        "a sample column not in obs",
        KeyError,
        r"sample_key 'lane' is not a column of adata.obs; available columns: \[",
        kwargs={"sample_key": "lane"},
    ),
    Case(
        "sample_key_nan",
        "a missing sample label",
        ValueError,
        r"sample_key column 'sample' has 1 missing value\(s\); every cell needs a sample",
        mutate=_set_obs("sample", np.nan),
        kwargs={"sample_key": "sample"},
    ),
    # settings
    Case(
        "key_added_empty",
        "empty key_added",
        ValueError,
        r"key_added must be a non-empty string",
        kwargs={"key_added": ""},
    ),
    Case(
        "store_modes_str",
        "store_modes not a bool",
        TypeError,
        r"store_modes must be True, False or None \(the default\); got 'yes'",
        kwargs={"store_modes": "yes"},
    ),
    Case("n_agq_zero", "n_agq = 0", ValueError, r"n_agq must be a positive integer", kwargs={"n_agq": 0}),
    Case("n_jobs_zero", "n_jobs = 0", ValueError, r"n_jobs must be a non-zero integer", kwargs={"n_jobs": 0}),
    Case(
        "block_size_zero",
        "block_size = 0",
        ValueError,
        r"block_size must be a positive integer",
        kwargs={"block_size": 0},
    ),
    Case(
        "empty_adata",
        "an AnnData with no genes",
        ValueError,
        r"adata has 60 cells x 0 genes; nothing to fit",
        mutate=lambda a: a._inplace_subset_var(np.zeros(a.n_vars, dtype=bool)),
    ),
]


def _run_fit_case(case: Case) -> tuple[ad.AnnData, dict[str, Any], BaseException | None]:
    a = make_adata()
    if case.mutate is not None:
        case.mutate(a)
    # an earlier run's results must survive any failure of a later one
    a.uns["earlier"] = {"note": "kept"}
    before = snapshot(a)
    err = None
    try:
        scglmm.tl.fit(a, case.formula, **case.kwargs)
    except Exception as e:
        err = e
    return a, before, err


def _builtin(err: BaseException) -> type[BaseException]:
    """The built-in type of an error: scglmm's input errors (one family, carrying the offending
    parameter's name) subclass exactly one of ValueError, KeyError, TypeError."""
    if isinstance(err, InputError):
        (base,) = [t for t in (ValueError, KeyError, TypeError) if isinstance(err, t)]
        return base
    return type(err)


def _text(err: BaseException) -> str:
    return err.args[0] if isinstance(err, KeyError) and err.args else str(err)


@pytest.mark.parametrize("case", FIT_CASES, ids=[c.id for c in FIT_CASES])
def test_fit_rejects_bad_input(case: Case) -> None:
    a, before, err = _run_fit_case(case)
    assert err is not None, f"{case.id}: tl.fit accepted {case.what}"
    assert _builtin(err) is case.exc, f"{case.id}: {type(err).__name__}: {err}"
    assert re.search(case.match, _text(err)), _text(err)
    assert_unchanged(a, before)


# ------------------------------------------------------------------------------------------------
# the cases: array API
# ------------------------------------------------------------------------------------------------
def _arrays(n: int = 40, m: int = 4) -> dict[str, Any]:
    rng = np.random.default_rng(5)
    groups = np.repeat([f"D{i}" for i in range(m)], n // m)
    X = np.column_stack([np.ones(n), (np.arange(n) % 2).astype(float)])
    Y = rng.poisson(2.0, size=(n, 6)).astype(np.float64)
    return {"Y": Y, "X": X, "groups": groups, "offset": np.zeros(n)}


def _sparse_with_fraction(Y: np.ndarray) -> sparse.csr_matrix:
    Y = Y.copy()
    Y[0, 0] = 1.5
    return sparse.csr_matrix(Y)


@dataclass
class ArrayCase:
    id: str
    what: str
    exc: type[Exception]
    match: str
    call: Callable[[dict[str, Any]], Any]


ARRAY_CASES: list[ArrayCase] = [
    ArrayCase(
        "Y_1d",
        "`fit_genes` with a 1-d Y",
        ValueError,
        r"Y must be a 2-d cells x genes matrix; got 1.*scglmm.fit_gene",
        lambda d: scglmm.fit_genes(d["Y"][:, 0], d["X"], d["groups"]),
    ),
    ArrayCase(
        "Y_transposed",
        "`fit_genes` with Y genes x cells",
        ValueError,
        r"X must be a \(n_cells, n_coef\) design.*\(6 cells\); got shape \(40, 2\).*transpose",
        lambda d: scglmm.fit_genes(d["Y"].T, d["X"], d["groups"]),
    ),
    ArrayCase(
        "X_rows",
        "`fit_gene` with X of the wrong number of rows",
        ValueError,
        r"one row per cell of the counts \(40 cells\); got shape \(39, 2\)",
        lambda d: scglmm.fit_gene(d["Y"][:, 0], d["X"][:-1], d["groups"]),
    ),
    ArrayCase(
        "y_matrix",
        "`fit_gene` with a matrix instead of a vector",
        ValueError,
        r"y must be a vector of counts \(one per cell\); got shape \(40, 6\)",
        lambda d: scglmm.fit_gene(d["Y"], d["X"], d["groups"]),
    ),
    ArrayCase(
        "groups_length",
        "groups of the wrong length",
        ValueError,
        r"groups must have one donor label per cell \(40\); got shape \(39,\)",
        lambda d: scglmm.fit_genes(d["Y"], d["X"], d["groups"][:-1]),
    ),
    ArrayCase(
        "offset_length",
        "offset of the wrong length",
        ValueError,
        r"offset must have one value per cell \(40\); got shape \(39,\)",
        lambda d: scglmm.fit_genes(d["Y"], d["X"], d["groups"], d["offset"][:-1]),
    ),
    ArrayCase(
        "offset_inf",
        "offset with -inf (log of a zero size factor)",
        ValueError,
        r"offset \(log scale\) contains NaN or infinite values",
        lambda d: scglmm.fit_genes(d["Y"], d["X"], d["groups"], np.r_[-np.inf, d["offset"][1:]]),
    ),
    ArrayCase(
        "coef_names_length",
        "coef_names of the wrong length",
        ValueError,
        r"coef_names has 3 names for 2 design columns",
        lambda d: scglmm.fit_genes(d["Y"], d["X"], d["groups"], coef_names=["a", "b", "c"]),
    ),
    ArrayCase(
        "X_nan",
        "NaN in X",
        ValueError,
        r"X \(the design matrix\) contains NaN or infinite values",
        lambda d: scglmm.fit_genes(d["Y"], np.where(np.arange(40)[:, None] == 0, np.nan, d["X"]), d["groups"]),
    ),
    ArrayCase(
        "X_rank",
        "rank-deficient X (names the columns)",
        ValueError,
        r"rank deficient \(2 of 3 columns estimable\): column\(s\) \['stim2'\]",
        lambda d: scglmm.fit_genes(
            d["Y"], np.column_stack([d["X"], d["X"][:, 1]]), d["groups"], coef_names=["Intercept", "stim", "stim2"]
        ),
    ),
    ArrayCase(
        "groups_nan",
        "a missing donor label",
        ValueError,
        r"groups contains missing values",
        lambda d: scglmm.fit_genes(d["Y"], d["X"], np.r_[[None], d["groups"][1:]].astype(object)),
    ),
    ArrayCase(
        "one_group",
        "one donor",
        ValueError,
        r"at least two donors are needed.*got 1 \(\['D0'\]\)",
        lambda d: scglmm.fit_genes(d["Y"], d["X"], np.full(40, "D0")),
    ),
    ArrayCase(
        "Y_negative",
        "negative counts",
        ValueError,
        r"counts: found 6 negative value\(s\) \(e.g. -2.0\)",
        lambda d: scglmm.fit_genes(np.where(np.arange(40)[:, None] == 0, -2.0, d["Y"]), d["X"], d["groups"]),
    ),
    ArrayCase(
        "Y_sparse_fraction",
        "non-integer sparse counts",
        ValueError,
        r"counts: found 1 non-integer value\(s\) \(e.g. 1.5\)",
        lambda d: scglmm.fit_genes(_sparse_with_fraction(d["Y"]), d["X"], d["groups"]),
    ),
    ArrayCase(
        "n_agq",
        "`n_agq` not a positive integer",
        ValueError,
        r"n_agq must be a positive integer",
        lambda d: scglmm.fit_genes(d["Y"], d["X"], d["groups"], n_agq=0),
    ),
]


def _run_array_case(case: ArrayCase) -> BaseException | None:
    d = _arrays()
    try:
        case.call(d)
    except Exception as e:
        return e
    return None


@pytest.mark.parametrize("case", ARRAY_CASES, ids=[c.id for c in ARRAY_CASES])
def test_array_api_rejects_bad_input(case: ArrayCase) -> None:
    err = _run_array_case(case)
    assert err is not None, f"{case.id}: accepted {case.what}"
    assert _builtin(err) is case.exc, f"{case.id}: {type(err).__name__}: {err}"
    assert re.search(case.match, _text(err)), _text(err)


# ------------------------------------------------------------------------------------------------
# the cases: pl.donor_effects of a fit with a general random-effect structure
# ------------------------------------------------------------------------------------------------
PLOT_FORMULA = "~ condition + covariate + (1 + covariate | donor) + (1 | batch)"


@cache
def _plot_fit() -> ad.AnnData:
    """The table's data, first 6 genes (G00000 without counts), batches b1/b2 alternating over the cells,
    fitted with :data:`PLOT_FORMULA`."""
    a = make_adata()[:, :6].copy()
    a.obs["batch"] = np.array(["b1", "b2"])[np.arange(a.n_obs) % 2]
    X = a.X.toarray()
    X[:, 0] = 0
    a.X = sparse.csr_matrix(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # G00000 is filtered
        scglmm.tl.fit(a, PLOT_FORMULA, size_factors="sf", progress=False)
    return a


def _refit_without_modes(a: ad.AnnData) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # G00000 is filtered
        scglmm.tl.fit(a, PLOT_FORMULA, size_factors="sf", store_modes=False, progress=False)


@dataclass
class PlotCase:
    id: str
    what: str
    exc: type[Exception]
    match: str
    kwargs: dict[str, Any]
    mutate: Callable[[ad.AnnData], None] | None = None


PLOT_CASES: list[PlotCase] = [
    PlotCase(
        "plot_unknown_factor",
        "a factor that is not a grouping factor of the fit",
        KeyError,
        r"factor 'sample' is not a grouping factor.*grouping factors: \['donor', 'batch'\]",
        {"gene": "G00002", "factor": "sample"},
    ),
    PlotCase(
        "plot_coef_not_random",
        "a coefficient without a random effect",
        KeyError,
        r"coef 'condition\[T.stim\]' has no random effect.*"
        r"\['Intercept\|donor', 'covariate\|donor', 'Intercept\|batch'\]",
        {"gene": "G00002", "coef": "condition[T.stim]"},
    ),
    PlotCase(
        "plot_coef_other_factor",
        "a random slope of another grouping factor",
        KeyError,
        r"coef 'covariate' has no random effect by 'batch'",
        {"gene": "G00002", "coef": "covariate", "factor": "batch"},
    ),
    PlotCase(
        "plot_colour_varies",
        "`color_by` a column that varies within the levels",
        ValueError,
        r"color_by column 'covariate' must be constant within each donor, but varies within 4 donor level\(s\)",
        {"gene": "G00002", "color_by": "covariate"},
    ),
    PlotCase(
        "plot_no_estimate",
        "a gene without an estimate",
        ValueError,
        r"gene 'G00000' has no estimate \(status 'filtered'\)",
        {"gene": "G00000", "coef": "covariate"},
    ),
    PlotCase(
        "plot_no_modes",
        "a fit that did not store the modes (`store_modes=False`, the default with `groupby`)",
        KeyError,
        r"the fit under 'scglmm' did not store the conditional modes.*store_modes=True.*--store-modes",
        {"gene": "G00002"},
        mutate=_refit_without_modes,
    ),
    PlotCase(
        "plot_level_not_fitted",
        "obs relabelled after the fit (a donor the fit did not see)",
        ValueError,
        r"cells of donor level\(s\) \['D99'\] were not in the fit; plot the AnnData that was fitted",
        {"gene": "G00002"},
        mutate=_put_obs("donor", lambda a: a.obs["donor"].astype(str).replace({"D01": "D99"})),
    ),
]


def _run_plot_case(case: PlotCase) -> tuple[ad.AnnData, dict[str, Any], BaseException | None]:
    import matplotlib.pyplot as plt

    a = _plot_fit().copy()
    if case.mutate is not None:
        case.mutate(a)
    before = snapshot(a)
    err = None
    try:
        scglmm.pl.donor_effects(a, show=False, **case.kwargs)
    except Exception as e:
        err = e
    plt.close("all")
    return a, before, err


@pytest.mark.parametrize("case", PLOT_CASES, ids=[c.id for c in PLOT_CASES])
def test_plot_rejects_bad_input(case: PlotCase) -> None:
    a, before, err = _run_plot_case(case)
    assert err is not None, f"{case.id}: pl.donor_effects accepted {case.what}"
    assert _builtin(err) is case.exc, f"{case.id}: {type(err).__name__}: {err}"
    assert re.search(case.match, _text(err)), _text(err)
    assert_unchanged(a, before)


def test_plot_cases_differ_from_a_valid_call() -> None:
    """The same fit plots without error when the bad argument is left out (the cases test what they say)."""
    import matplotlib.pyplot as plt

    a = _plot_fit()
    for kwargs in ({"factor": "batch"}, {"coef": "covariate"}, {"coef": "covariate", "factor": "donor"}):
        ax = scglmm.pl.donor_effects(a, "G00002", show=False, **kwargs)
        assert len(ax.get_xticklabels()) == (2 if kwargs.get("factor") == "batch" else 4)
    plt.close("all")


# ------------------------------------------------------------------------------------------------
# the docs table
# ------------------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_error_table() -> str:
    lines = [
        "# What you see when an input is wrong",
        "",
        "Every check runs before any gene is fitted, and a failed call leaves the AnnData exactly as it",
        "was. The messages below are the library's real output, collected by running each case of",
        "`tests/test_validation.py` (which also asserts every row); regenerate with",
        "`python tests/test_validation.py`. Data: 4 donors (2 `ctrl`, 2 `stim`) x 15 cells x 40 genes,",
        "formula `~ condition + (1 | donor)` unless the row says otherwise.",
        "",
        "## `scglmm.tl.fit`",
        "",
        "| Bad input | Call | Exception | Message |",
        "|---|---|---|---|",
    ]
    for case in FIT_CASES:
        _, _, err = _run_fit_case(case)
        assert err is not None
        call = f"formula={case.formula!r}" + "".join(
            f", {k}={v!r}" if isinstance(v, str | int) else f", {k}=<array>" for k, v in case.kwargs.items()
        )
        lines.append(
            f"| {_md_cell(case.what)} | `{_md_cell(call)}` | `{_builtin(err).__name__}` | {_md_cell(_text(err))} |"
        )
    lines += [
        "",
        "## Array API: `scglmm.fit_gene`, `scglmm.fit_genes`",
        "",
        "Data: 40 cells, 4 donors, `X` = intercept + a 0/1 column, `Y` 40 x 6 Poisson counts.",
        "",
        "| Bad input | Exception | Message |",
        "|---|---|---|",
    ]
    for case in ARRAY_CASES:
        err = _run_array_case(case)
        assert err is not None
        lines.append(f"| {_md_cell(case.what)} | `{_builtin(err).__name__}` | {_md_cell(_text(err))} |")
    lines += [
        "",
        "## `scglmm.pl.donor_effects` with a general random-effect structure",
        "",
        "Data: the 4 donors above, genes `G00000`-`G00005` (`G00000` without counts), obs `batch` alternating",
        f"`b1`, `b2` over the cells, fitted with `{PLOT_FORMULA}`.",
        "",
        "| Bad input | Call | Exception | Message |",
        "|---|---|---|---|",
    ]
    for case in PLOT_CASES:
        _, _, err = _run_plot_case(case)
        assert err is not None
        call = ", ".join(f"{k}={v!r}" for k, v in case.kwargs.items())
        lines.append(
            f"| {_md_cell(case.what)} | `{_md_cell(call)}` | `{_builtin(err).__name__}` | {_md_cell(_text(err))} |"
        )
    lines += [
        "",
        "## Genes that cannot be estimated are not errors",
        "",
        "A gene that is all zero, separated (absent in one condition), or otherwise not estimable never",
        "stops a run: it keeps its row with NaN estimates and a status in",
        "`adata.varm[f'{key}_fit']['status']`, and the run ends with one warning counting genes by",
        "status (see `tests/test_robustness.py`).",
        "",
    ]
    return "\n".join(lines)


def test_error_table_is_current() -> None:
    assert DOC.exists(), "docs/errors.md missing: run `python tests/test_validation.py`"
    assert DOC.read_text() == render_error_table(), "docs/errors.md is stale: run `python tests/test_validation.py`"


def test_every_case_documented_once() -> None:
    ids = [c.id for c in FIT_CASES] + [c.id for c in ARRAY_CASES] + [c.id for c in PLOT_CASES]
    assert len(ids) == len(set(ids))
    text = DOC.read_text()
    for c in FIT_CASES + ARRAY_CASES + PLOT_CASES:
        assert f"| {_md_cell(c.what)} |" in text, c.id


def test_validation_happens_before_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad setting found late in the argument list still stops the call before any kernel runs."""
    from scglmm._core.kernels import _block as _kernels

    calls = []
    monkeypatch.setattr(_kernels, "fit_block_csc", lambda *a, **k: calls.append(1))
    a = make_adata()
    for kwargs in ({"block_size": 0}, {"n_jobs": 0}, {"n_agq": -1}):
        with pytest.raises(ValueError, match="must be a"):
            scglmm.tl.fit(a, "~ condition + (1 | donor)", **kwargs)
    assert calls == []


def test_counts_check_never_densifies_sparse() -> None:
    """A big, very sparse matrix with one bad value is refused by looking at its stored values only."""
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 200_000, 4_000), rng.integers(0, 2_000, 4_000)
    data = np.ones(4_000)
    data[0] = 2.5
    Y = sparse.csr_matrix((data, (rows, cols)), shape=(200_000, 2_000))  # 400 million cells x genes
    with pytest.raises(ValueError, match=r"counts: found 1 non-integer"):
        scglmm._core._checks.check_counts(Y)


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_error_table())
    print(f"wrote {DOC}")


def test_normalised_x_with_counts_in_raw_says_how_to_pass_them() -> None:
    import scanpy as sc

    a = scglmm.datasets.simulate(n_donors=4, cells_per_donor=20, n_genes=6, seed=5)
    a.raw = a.copy()
    sc.pp.normalize_total(a)
    with pytest.raises(InvalidValueError, match="non-integer") as info:
        scglmm.tl.fit(a, "~ condition + (1 | donor)", progress=False)
    assert "adata.raw holds integer counts" in str(info.value) and "layer='counts'" in str(info.value)
    assert info.value.param == "layer"
    a.layers["counts"] = a.raw[:, a.var_names].X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a gene of this tiny set without an estimate
        scglmm.tl.fit(a, "~ condition + (1 | donor)", layer="counts", progress=False, min_cells=None, min_donors=None)
    assert a.uns["scglmm"]["params"]["layer"] == "counts"
