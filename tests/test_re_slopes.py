"""Which fixed effects a random-effect term gives a random slope, however the slope is written, and the
df, slope variance and ``k`` of their test (:func:`scglmm._core._inference.random_slopes`,
:func:`scglmm.tl._wald.slope_effects`, :func:`scglmm.tl._wald.slope_variance`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import scglmm
from scglmm._core._inference import EB_MIN_GENES, random_slopes
from scglmm._formula import build_design, build_re_terms, parse_re_formula
from scglmm.tl._wald import slope_effects, slope_variance

REF = Path(__file__).parent / "data" / "reference_re"
STIM = "condition[T.stim]"
INTER = "condition[T.stim]:sex[T.m]"


def cells(levels: int = 3, donors: int = 6, per: int = 4) -> pd.DataFrame:
    """``per`` cells of every donor in every condition level; donors 0..2 are ``f``, the rest ``m``."""
    rows = [
        (f"D{d}", f"c{c}", "f" if d < donors // 2 else "m")
        for d in range(donors)
        for c in range(levels)
        for _ in range(per)
    ]
    return pd.DataFrame(rows, columns=["donor", "condition", "sex"])


def effects(formula: str, obs: pd.DataFrame) -> dict:
    parsed = parse_re_formula(formula)
    design = build_design(parsed.fixed, obs)
    terms = tuple(build_re_terms(parsed.terms, obs))
    return slope_effects(terms, design.matrix, list(design.columns)), terms


def test_name_matched_weights_are_unit_vectors() -> None:
    """``(1 + condition | donor)``: each level column's slope is its own coefficient (today's rule)."""
    found, (term,) = effects("~ condition + (1 + condition | donor)", cells())
    assert sorted(found) == ["condition[T.c1]", "condition[T.c2]"]
    np.testing.assert_array_equal(found["condition[T.c1]"].effect.weights, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(found["condition[T.c2]"].effect.weights, [0.0, 0.0, 1.0])
    assert term.coef_names == ("Intercept", "condition[T.c1]", "condition[T.c2]")
    assert found["condition[T.c1]"].effect.df == 5  # 6 donors - 1
    assert found["condition[T.c1]"].effect.k() == pytest.approx(1 / 6, abs=1e-14)


def test_cell_means_weights_are_differences() -> None:
    """``(0 + condition | donor)``: the slope of ``c1`` over ``c0`` is ``b[c1] - b[c0]``."""
    found, (term,) = effects("~ condition + (0 + condition | donor)", cells())
    assert term.coef_names == ("condition[c0]", "condition[c1]", "condition[c2]")
    np.testing.assert_allclose(found["condition[T.c1]"].effect.weights, [-1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(found["condition[T.c2]"].effect.weights, [-1.0, 0.0, 1.0], atol=1e-12)
    assert found["condition[T.c2]"].effect.df == 5


def test_slope_variance_by_hand() -> None:
    """``w' Sigma w`` for cell-means coding is ``var(c0) + var(c1) - 2 cov(c0, c1)`` (two levels), from the
    stored variances and correlations; a name-matched slope gives its variance unchanged."""
    obs = cells(levels=2)
    found, (term,) = effects("~ condition + (0 + condition | donor)", obs)
    names = term.varcomp_names()
    assert names == ["var(condition[c0]|donor)", "var(condition[c1]|donor)", "cor(condition[c0],condition[c1]|donor)"]
    vc = np.array([[0.5, 0.8, 0.3], [0.2, 0.2, 1.0], [1.0, 0.0, 0.0]])
    want = vc[:, 0] + vc[:, 1] - 2.0 * vc[:, 2] * np.sqrt(vc[:, 0] * vc[:, 1])
    np.testing.assert_allclose(want, [1.3 - 0.6 * np.sqrt(0.4), 0.0, 1.0], atol=1e-15)  # the numbers by hand
    got = slope_variance(vc, names, term, found["condition[T.c1]"].effect.weights)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    found1, (term1,) = effects("~ condition + (1 + condition | donor)", obs)
    got1 = slope_variance(vc, term1.varcomp_names(), term1, found1["condition[T.c1]"].effect.weights)
    np.testing.assert_array_equal(got1, vc[:, 1])


def test_level_wide_covariate_does_not_count_interaction_does() -> None:
    """``+ sex`` (constant within donors) does not enter the donors' differences: 6 - 1 = 5 df, k = 1/6;
    ``condition * sex``: the interaction joins the slope's family (same term, 6 - 2 = 4 df) with
    ``k = 1/3 + 1/3`` (difference of two means of 3 donors' slopes), the main effect ``k = 1/3``."""
    obs = cells(levels=2)
    add, _ = effects("~ condition + sex + (1 + condition | donor)", obs)
    assert list(add) == ["condition[T.c1]"]
    assert add["condition[T.c1]"].effect.df == 5 and add["condition[T.c1]"].effect.k() == pytest.approx(1 / 6)
    both, _ = effects("~ condition * sex + (1 + condition | donor)", obs)
    inter = "condition[T.c1]:sex[T.m]"
    assert sorted(both) == ["condition[T.c1]", inter]
    assert both[inter].effect.base == 1 and both[inter].term is both["condition[T.c1]"].term
    assert both[inter].effect.df == both["condition[T.c1]"].effect.df == 4
    assert both[inter].effect.k() == pytest.approx(2 / 3, abs=1e-12)
    assert both["condition[T.c1]"].effect.k() == pytest.approx(1 / 3, abs=1e-12)
    np.testing.assert_array_equal(both[inter].effect.weights, [0.0, 1.0])


def test_levels_without_the_slope_do_not_count() -> None:
    """A donor seen in one condition only carries no slope information: 5 levels, 4 df."""
    obs = cells(levels=2)
    obs = obs[~((obs["donor"] == "D0") & (obs["condition"] == "c1"))].reset_index(drop=True)
    found, _ = effects("~ condition + (1 + condition | donor)", obs)
    assert found["condition[T.c1]"].effect.n_levels == 5 and found["condition[T.c1]"].effect.df == 4


def test_within_covariate_and_level_constant_columns_are_not_slopes() -> None:
    """A cell-level covariate without a random slope, the intercept and a level-wide column are not slopes;
    a fixed ``~ 0 + condition`` has no within-level contrast column (its columns are level means)."""
    obs = cells(levels=2)
    obs["x"] = np.random.default_rng(0).normal(size=len(obs))
    found, _ = effects("~ condition + x + sex + (1 + condition | donor)", obs)
    assert list(found) == ["condition[T.c1]"]
    none, _ = effects("~ 0 + condition + (1 + condition | donor)", obs)
    assert none == {}


def test_random_slopes_needs_the_same_weights_everywhere() -> None:
    """A column that follows ``Z`` with weights that differ between levels (x = stim in D0, 2 stim in D1)
    has no random slope."""
    codes = np.repeat([0, 1], 4)
    stim = np.tile([0.0, 0.0, 1.0, 1.0], 2)
    Z = np.column_stack([np.ones(8), stim])
    x = stim * np.repeat([1.0, 2.0], 4)
    assert set(random_slopes(np.column_stack([np.ones(8), stim]), Z, codes)) == {1}
    assert random_slopes(np.column_stack([np.ones(8), x]), Z, codes) == {}


# ------------------------------------------------------------------------------------------------
# tl.fit: cell-means and treatment coding of the random slope give the same tests
# ------------------------------------------------------------------------------------------------
@cache
def fitted(lhs: str, calibration: str) -> ad.AnnData:
    # the reference fits' offsets, log(libsize), as in the other tests on these files
    a = ad.read_h5ad(REF / "slope.h5ad")[:, : EB_MIN_GENES + 10].copy()
    scglmm.tl.fit(
        a, f"~ condition + covariate + ({lhs} | donor)", size_factors="libsize", calibration=calibration,
        norm_method="none", min_cells=None, min_donors=None, progress=False,
    )  # fmt: skip
    return a


@pytest.mark.parametrize("calibration", ["eb", "t"])
def test_cell_means_slope_same_tests_as_treatment(calibration: str) -> None:
    one, zero = fitted("1 + condition", calibration), fitted("0 + condition", calibration)
    p1, p0 = one.uns["scglmm"]["params"], zero.uns["scglmm"]["params"]
    assert p0["slope_columns"] == p1["slope_columns"] == {STIM: "donor"}
    assert p0["slope_df"] == p1["slope_df"] == {STIM: 7.0}
    assert list(one.var["scglmm_status"].astype(str)) == list(zero.var["scglmm_status"].astype(str))
    ok = np.isfinite(one.varm["scglmm_coef"][STIM]) & np.isfinite(zero.varm["scglmm_coef"][STIM])
    assert ok.sum() >= EB_MIN_GENES  # all fitted (half at a correlation boundary), so "eb" has its prior
    for what, tol in (("coef", 1e-5), ("se", 1e-5)):
        np.testing.assert_allclose(
            zero.varm[f"scglmm_{what}"][STIM][ok], one.varm[f"scglmm_{what}"][STIM][ok], rtol=0, atol=tol
        )
    # the two fits stop at slightly different points of the same optimum (coef/se ~1e-6 apart)
    np.testing.assert_allclose(zero.varm["scglmm_pval"][STIM][ok], one.varm["scglmm_pval"][STIM][ok], rtol=3e-4)
    if calibration == "t":
        z = zero.varm["scglmm_coef"][STIM] / zero.varm["scglmm_se"][STIM]
        np.testing.assert_allclose(zero.varm["scglmm_pval"][STIM], 2 * stats.t.sf(np.abs(z), 7), rtol=1e-12)
    else:
        np.testing.assert_allclose(p0["eb_prior"][STIM], p1["eb_prior"][STIM], rtol=0, atol=1e-4)


def test_cell_means_contrast_same_as_treatment() -> None:
    """tl.test of the condition on the cell-means-coded fit: the slope's test, as on the treatment-coded fit."""
    one, zero = fitted("1 + condition", "eb").copy(), fitted("0 + condition", "eb").copy()
    n1, n0 = scglmm.tl.test(one, "condition"), scglmm.tl.test(zero, "condition")
    assert zero.uns["scglmm"]["contrasts"][n0]["slope_df"] == 7.0
    r1, r0 = one.varm[f"scglmm_contrast_{n1}"], zero.varm[f"scglmm_contrast_{n0}"]
    ok = np.isfinite(r1["p_value"]).to_numpy()
    assert ok.sum() >= EB_MIN_GENES
    np.testing.assert_allclose(r0["p_value"][ok], r1["p_value"][ok], rtol=3e-4)
    np.testing.assert_allclose(r0["p_value"][ok], zero.varm["scglmm_pval"][STIM][ok], rtol=1e-12)


def test_interaction_contrast_is_tested_on_its_slope_family() -> None:
    """``~ condition * sex``: the male donors' mean response (``stim + stim:sex``) is tested by "eb" on the
    slope variance with ``k = 1/4`` (4 male donors) and 8 - 2 df, the same numbers as the numerics."""
    from scglmm._core._inference import eb_donor_variance

    a = ad.read_h5ad(REF / "slope.h5ad")[:, : EB_MIN_GENES + 10].copy()
    a.obs["sex"] = np.where(a.obs["donor"].astype(str).isin(["D01", "D02", "D03", "D04"]), "f", "m")
    formula = "~ condition * sex + (1 + condition | donor)"
    scglmm.tl.fit(a, formula, size_factors="libsize", min_cells=None, min_donors=None, progress=False)
    name = scglmm.tl.test(a, f"{STIM} + {INTER}")
    info = a.uns["scglmm"]["contrasts"][name]
    assert list(info["slope_columns"]) == [STIM, INTER] and info["slope_df"] == 6.0
    res = a.varm[f"scglmm_contrast_{name}"]
    ok = np.isfinite(res["estimate"]).to_numpy()
    tau2 = a.varm["scglmm_varcomp"][f"var({STIM}|donor)"].to_numpy()[ok]
    est, var = res["estimate"].to_numpy()[ok], res["se"].to_numpy()[ok] ** 2
    ref = eb_donor_variance(est, var, tau2, n_donors=8, df=6, k=0.25)
    np.testing.assert_allclose(res["p_value"].to_numpy()[ok], ref["p_value"], rtol=1e-12)
    off = eb_donor_variance(est, var, tau2, n_donors=8, df=6, k=1 / 8)  # the k of a slope without interaction
    assert np.max(np.abs(np.log(off["p_value"] / ref["p_value"]))) > 1e-3  # k matters here
