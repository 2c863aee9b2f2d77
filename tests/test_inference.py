"""Contrasts, Wald tests from the stored covariance, likelihood-ratio tests, calibration maths."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import scglmm
from scglmm._core._inference import (
    EB_MIN_GENES,
    bh_adjust,
    contrast_vector,
    donor_level_design,
    eb_donor_information,
    lrt_pvalues,
    wald_pvalues,
)

FORMULA = "~ treatment + covariate + (1 | donor)"


def _data(levels=("A", "B", "C")) -> ad.AnnData:
    a = scglmm.datasets.simulate(n_donors=9, cells_per_donor=30, n_genes=16, seed=11)
    donors = a.obs["donor"].astype(str)
    order = sorted(donors.unique())
    lev = {d: "ABC"[i % 3] for i, d in enumerate(order)}
    a.obs["treatment"] = pd.Categorical(donors.map(lev), categories=list(levels))
    return a


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    a = _data()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False)
    return a


@pytest.fixture(scope="module")
def releveled() -> ad.AnnData:
    a = _data(levels=("B", "A", "C"))
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False)
    return a


def _usable(*dfs: pd.DataFrame) -> np.ndarray:
    ok = np.ones(len(dfs[0]), dtype=bool)
    for d in dfs:
        ok &= d["status"].isin(["ok", "sigma2_boundary"]).to_numpy() & np.isfinite(d["log_fc"].to_numpy())
    return ok


@pytest.mark.parametrize("spec", [("treatment", "C", "B"), "treatment[T.C] - treatment[T.B]", [0, -1, 1, 0]])
def test_contrast_equals_releveled_coefficient(fitted, releveled, spec):
    name = scglmm.tl.test(fitted, spec)
    con = scglmm.get.results(fitted, contrast=name)
    ref = scglmm.get.results(releveled, "treatment[T.C]")
    ok = _usable(con, ref)
    assert ok.sum() >= 10
    # the same model, parameterised differently and refitted: equal to optimiser precision
    np.testing.assert_allclose(con.log_fc[ok], ref.log_fc[ok], atol=2e-4 * ref.se[ok].max())
    np.testing.assert_allclose(con.se[ok], ref.se[ok], rtol=2e-3)
    np.testing.assert_allclose(con.p_value[ok], ref.p_value[ok], rtol=5e-3, atol=1e-4)
    # a contrast with the reference level equals the stored coefficient exactly
    name_b = scglmm.tl.test(fitted, ("treatment", "B", "A"))
    res_b = scglmm.get.results(fitted, contrast=name_b)
    coef_b = scglmm.get.results(fitted, "treatment[T.B]")
    np.testing.assert_allclose(res_b.log_fc, coef_b.log_fc, rtol=0, atol=0)
    np.testing.assert_allclose(res_b.p_value, coef_b.p_value, rtol=1e-12)


@pytest.mark.parametrize("calibration", ["z", "t", "t_reml"])
def test_wald_from_stored_cov_equals_refit_pvalues(calibration):
    a = _data()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False, calibration=calibration)
    name = scglmm.tl.test(a, "treatment[T.C]")
    res = scglmm.get.results(a, contrast=name)
    coef = scglmm.get.results(a, "treatment[T.C]")
    np.testing.assert_allclose(res.p_value, coef.p_value, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(res.stat, coef.stat, rtol=1e-12, equal_nan=True)
    # the z statistic is beta / se exactly; t uses 9 donors - 3 donor-level columns = 6 df
    if calibration == "z":
        np.testing.assert_allclose(res.stat, res.log_fc / res.se, rtol=1e-12)
        assert np.isinf(res.df).all()
    else:
        assert (res.df[np.isfinite(res.p_value)] == 6).all()
        expect = 2 * stats.t.sf(np.abs(res.stat), 6)
        np.testing.assert_allclose(res.p_value, expect, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("calibration", ["satterthwaite", "satterthwaite_floor"])
def test_satterthwaite_runs_through_fit_and_test(calibration, tmp_path):
    """Satterthwaite df differ by gene: the fit stores NaN in params['df'] and the df of each gene."""
    a = _data()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False, calibration=calibration)
    params = a.uns["scglmm"]["params"]
    assert params["calibration"] == calibration
    assert np.isnan(params["df"]["treatment[T.C]"])  # donor-level: one df per gene
    assert np.isinf(params["df"]["covariate"])  # within donors: the normal reference
    gene_df = params["df_per_gene"]["treatment[T.C]"]
    assert gene_df.shape == (a.n_vars,)
    name = scglmm.tl.test(a, "treatment[T.C]")
    res = scglmm.get.results(a, contrast=name)
    coef = scglmm.get.results(a, "treatment[T.C]")
    ok = np.isfinite(res.p_value)
    assert ok.sum() >= 12
    assert (res.df[ok] >= 6).all()  # from m - r = 6 when the donor variance dominates, up to the normal
    np.testing.assert_allclose(res.df[ok], gene_df[ok], rtol=1e-12)
    np.testing.assert_allclose(res.p_value, coef.p_value, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(res.p_value[ok], 2 * stats.t.sf(np.abs(res.stat[ok]), res.df[ok]), rtol=1e-10)
    assert np.isnan(coef.attrs["df"])
    a.write_h5ad(tmp_path / "s.h5ad")
    b = ad.read_h5ad(tmp_path / "s.h5ad")
    pd.testing.assert_frame_equal(scglmm.get.results(b, "treatment[T.C]"), coef)


def test_lrt_equals_twice_loglik_difference(fitted):
    a = fitted.copy()
    name = scglmm.tl.test(a, "treatment", method="lrt")
    assert name == "lrt_treatment[T.B]_treatment[T.C]"
    res = a.varm[f"scglmm_contrast_{name}"]
    # the reduced model fitted on its own with the same settings
    b = _data()
    scglmm.tl.fit(b, "~ covariate + (1 | donor)", size_factors="libsize", n_jobs=1, progress=False, key_added="red")
    ll_full = a.varm["scglmm_fit"]["loglik"].to_numpy()
    ll_red = b.varm["red_fit"]["loglik"].to_numpy()
    ok = np.isfinite(ll_full) & np.isfinite(ll_red)
    assert ok.sum() >= 12
    np.testing.assert_allclose(res["loglik_reduced"][ok], ll_red[ok], rtol=0, atol=1e-9)
    np.testing.assert_allclose(res["stat"][ok], np.maximum(2 * (ll_full[ok] - ll_red[ok]), 0), atol=1e-8)
    np.testing.assert_allclose(res["p_value"][ok], stats.chi2.sf(res["stat"][ok], 2), rtol=1e-12)
    assert (res["df"][ok] == 2).all()
    # the same with an explicit reduced formula (donor term added automatically)
    name2 = scglmm.tl.test(a, "treatment", method="lrt", reduced_formula="~ covariate", key_added="lrt2")
    np.testing.assert_allclose(a.varm[f"scglmm_contrast_{name2}"]["stat"], res["stat"], rtol=1e-12, equal_nan=True)
    assert a.uns["scglmm"]["contrasts"]["lrt2"]["df"] == 2


def test_lrt_one_column_matches_wald_roughly(fitted):
    a = fitted.copy()
    name = scglmm.tl.test(a, "covariate", method="lrt")
    lrt = scglmm.get.results(a, contrast=name)
    wald = scglmm.get.results(a, "covariate")
    ok = _usable(lrt, wald) & np.isfinite(lrt.stat)
    # LR and Wald z^2 agree to first order for a well-estimated cell-level coefficient
    assert np.corrcoef(lrt.stat[ok], (wald.log_fc / wald.se)[ok] ** 2)[0, 1] > 0.95


def test_results_roundtrip_h5ad(fitted, tmp_path):
    a = fitted.copy()
    name = scglmm.tl.test(a, ("treatment", "C", "B"))
    a.write_h5ad(tmp_path / "x.h5ad")
    b = ad.read_h5ad(tmp_path / "x.h5ad")
    pd.testing.assert_frame_equal(scglmm.get.results(b, contrast=name), scglmm.get.results(a, contrast=name))
    # the contrast can also be named as it was passed
    pd.testing.assert_frame_equal(
        scglmm.get.results(b, contrast=("treatment", "C", "B")), scglmm.get.results(a, contrast=name)
    )
    np.testing.assert_array_equal(b.uns["scglmm"]["contrasts"][name]["vector"], [0, -1, 1, 0])


def test_test_errors(fitted):
    with pytest.raises(KeyError, match="level 'D'"):
        scglmm.tl.test(fitted, ("treatment", "D", "A"))
    with pytest.raises(ValueError, match="one weight per design column"):
        scglmm.tl.test(fitted, [1, 0])
    with pytest.raises(ValueError, match="method must be"):
        scglmm.tl.test(fitted, "covariate", method="score")
    with pytest.raises(ValueError, match="not nested"):
        scglmm.tl.test(fitted, "x", method="lrt", reduced_formula="~ condition")
    with pytest.raises(KeyError, match="no tested contrast"):
        scglmm.get.results(fitted, contrast="nothing_here")
    with pytest.raises(KeyError, match="no scglmm results"):
        scglmm.tl.test(fitted, "covariate", key="other")


# ------------------------------------------------------------------------------------------------
# pure-array machinery
# ------------------------------------------------------------------------------------------------
COLS = ["Intercept", "g[T.b]", "g[T.c]", "x", "lvl[T.IFN-b]"]


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("x", [0, 0, 0, 1, 0]),
        ("g[T.c] - g[T.b]", [0, -1, 1, 0, 0]),
        ("0.5*g[T.b] + 0.5 g[T.c]", [0, 0.5, 0.5, 0, 0]),
        ("-x + 2*Intercept", [2, 0, 0, -1, 0]),
        ("lvl[T.IFN-b]", [0, 0, 0, 0, 1]),
        ("lvl", [0, 0, 0, 0, 1]),
        (("g", "c", "b"), [0, -1, 1, 0, 0]),
        (("g", "a", "c"), [0, 0, -1, 0, 0]),
        ({"x": 2, "g[T.b]": -1}, [0, -1, 0, 2, 0]),
        (np.array([0, 1, 0, 0, 0]), [0, 1, 0, 0, 0]),
    ],
)
def test_contrast_vector_forms(spec, expect):
    vec, name = contrast_vector(spec, COLS, reference_levels={"g": "a"})
    np.testing.assert_array_equal(vec, expect)
    assert isinstance(name, str) and name


def test_contrast_vector_errors():
    with pytest.raises(KeyError, match="several design columns"):
        contrast_vector("g", COLS)
    with pytest.raises(KeyError, match="not a design column"):
        contrast_vector("g[T.b] - y", COLS)
    with pytest.raises(ValueError, match="no non-zero"):
        contrast_vector("x - x", COLS)
    with pytest.raises(ValueError, match="itself"):
        contrast_vector(("g", "b", "b"), COLS)


def test_donor_level_design():
    codes = np.repeat(np.arange(4), 3)
    X = np.column_stack([np.ones(12), (codes >= 2).astype(float), np.arange(12.0)])
    mask, Xb = donor_level_design(X, codes)
    np.testing.assert_array_equal(mask, [True, True, False])
    np.testing.assert_array_equal(Xb[:, 1], [0, 0, 1, 1])


def test_wald_pvalues_by_hand():
    rng = np.random.default_rng(0)
    G, m = 50, 6
    coef = rng.normal(size=(G, 2))
    v = rng.uniform(0.01, 0.1, G)
    s2 = np.where(rng.random(G) < 0.3, 0.0, rng.uniform(0, 0.2, G))
    codes = np.repeat(np.arange(m), 5)
    X = np.column_stack([np.ones(30), (codes >= 3).astype(float)])
    mask, Xb = donor_level_design(X, codes)
    k = np.linalg.inv(Xb.T @ Xb)[1, 1]  # = 1/3 + 1/3
    cov = np.zeros((G, 2, 2))
    cov[:, 1, 1] = (s2 + v) * k
    cov[:, 0, 0] = 1.0
    c = np.array([0.0, 1.0])
    kw = {"sigma2": s2, "donor_mask": mask, "donor_design": Xb}
    z = wald_pvalues(coef, cov, c, calibration="z", **kw)
    np.testing.assert_allclose(z["p_value"], 2 * stats.norm.sf(np.abs(coef[:, 1] / np.sqrt(cov[:, 1, 1]))))
    t = wald_pvalues(coef, cov, c, calibration="t", **kw)
    assert t["df"] == 4 and t["donor_level"]
    np.testing.assert_allclose(t["p_value"], 2 * stats.t.sf(np.abs(z["stat"]), 4))
    r = wald_pvalues(coef, cov, c, calibration="t_reml", **kw)
    np.testing.assert_allclose(r["se_test"] ** 2, (s2 * 6 / 4 + v) * k, rtol=1e-12)
    f = wald_pvalues(coef, cov, c, calibration="t_floor", sigma2_floor=0.1, **kw)
    np.testing.assert_allclose(f["se_test"] ** 2, (np.maximum(s2 * 6 / 4, 0.1) + v) * k, rtol=1e-12)
    s = wald_pvalues(coef, cov, c, calibration="satterthwaite", **kw)
    a_ = s2 * 6 / 4 * k
    expect_df = np.where(a_ > 0, 4 * ((a_ + v * k) / np.where(a_ > 0, a_, 1)) ** 2, np.inf)
    np.testing.assert_allclose(s["df"], expect_df, rtol=1e-12)
    assert (s["df"] >= 4).all()
    # a cell-level contrast keeps the normal reference whatever the calibration
    Xc = np.column_stack([np.ones(30), np.arange(30.0)])
    mask_c, Xb_c = donor_level_design(Xc, codes)
    w = wald_pvalues(coef, cov, c, sigma2=s2, donor_mask=mask_c, donor_design=Xb_c, calibration="t_reml")
    assert np.isinf(w["df"]) and not w["donor_level"]
    np.testing.assert_allclose(w["p_value"], z["p_value"])


def _normal_means(rng, G, n1, n2, sigma2, w):
    """Donor means of G genes, n1 vs n2 donors, no effect; what the GLMM fit returns for them."""
    m = n1 + n2
    Xb = np.column_stack([np.ones(m), np.r_[np.zeros(n1), np.ones(n2)]])
    ymeans = rng.normal(size=(G, m)) * np.sqrt(sigma2 + w)[:, None]
    beta = np.linalg.lstsq(Xb, ymeans.T, rcond=None)[0].T
    rss = ((ymeans - beta @ Xb.T) ** 2).sum(axis=1)
    s2_ml = np.maximum(rss / m - w, 0.0)  # ML donor variance with known within-donor variance
    k = np.linalg.inv(Xb.T @ Xb)[1, 1]
    cov = np.zeros((G, 2, 2))
    cov[:, 0, 0] = 1.0
    cov[:, 1, 1] = k * (s2_ml + w)
    codes = np.repeat(np.arange(m), 4)
    mask, Xb_cells = donor_level_design(Xb[codes], codes)
    return beta, cov, s2_ml, mask, Xb_cells, k


@pytest.mark.parametrize(("n1", "n2"), [(3, 3), (5, 5), (4, 8)])
def test_eb_calibration_is_exact_in_the_normal_means_model(n1, n2):
    # Donor variances: 30 % zero, the rest uniform; within-donor variances vary 30-fold across
    # genes. In this model the "eb" p-value is exact once the prior is learnt, while "t" is
    # conservative at the boundary and "z" is anti-conservative.
    rng = np.random.default_rng(n1 * 100 + n2)
    G = 6000
    sigma2 = np.where(rng.random(G) < 0.3, 0.0, rng.uniform(0.0, 0.1, G))
    w = np.exp(rng.uniform(np.log(0.005), np.log(0.15), G))
    coef, cov, s2, mask, Xb, k = _normal_means(rng, G, n1, n2, sigma2, w)
    c = np.array([0.0, 1.0])
    kw = {"sigma2": s2, "donor_mask": mask, "donor_design": Xb}
    eb = wald_pvalues(coef, cov, c, calibration="eb", **kw)
    z = wald_pvalues(coef, cov, c, calibration="z", **kw)
    assert eb["donor_level"] and np.isinf(eb["df"])
    se = np.sqrt(0.05 * 0.95 / G)  # 0.0028
    assert abs(np.mean(eb["p_value"] < 0.05) - 0.05) < 3.5 * se
    assert abs(np.mean(eb["p_value"] < 0.01) - 0.01) < 3.5 * np.sqrt(0.01 * 0.99 / G)
    assert np.mean(z["p_value"] < 0.05) > 0.065
    # the stored statistic is the normal quantile of the p-value, and se_test matches it
    np.testing.assert_allclose(2 * stats.norm.sf(np.abs(eb["stat"])), eb["p_value"], rtol=1e-9)
    np.testing.assert_allclose(np.abs(coef[:, 1] / eb["se_test"]), np.abs(eb["stat"]), rtol=1e-9)
    # the learnt prior has the true share of zero donor variances and mean donor variance
    prior, grid = eb["eb_prior"], eb["eb_grid"]
    assert prior.sum() == pytest.approx(1.0)
    assert abs(prior @ grid - sigma2.mean()) < 0.005
    assert abs(prior[grid < 1e-3].sum() - np.mean(sigma2 < 1e-3)) < 0.08
    # posterior means shrink the ML estimates towards the prior: closer to the truth on average
    assert np.mean((eb["sigma2_post"] - sigma2) ** 2) < 0.5 * np.mean((s2 * (n1 + n2) / (n1 + n2 - 2) - sigma2) ** 2)


#: Cells per donor of the Kang 2018 ctrl CD14 monocytes (4 vs 4 donors).
KANG_CELLS = np.array([175.0, 641.0, 286.0, 98.0, 171.0, 328.0, 323.0, 193.0])


def _unequal_normal_means(rng, G, cells, sigma2, alpha):
    """Donor means with within-donor variance alpha / n_j, and their ML fit (sigma2 on a fine grid)."""
    m = cells.size
    Xb = np.column_stack([np.ones(m), np.r_[np.zeros(m // 2), np.ones(m - m // 2)]])
    within = alpha[:, None] / cells[None, :]
    y = rng.normal(size=(G, m)) * np.sqrt(sigma2[:, None] + within)

    def gls(s2):
        d = 1.0 / (np.asarray(s2)[..., None] + within)
        info = np.einsum("jp,gj,jq->gpq", Xb, d, Xb)
        beta = np.linalg.solve(info, np.einsum("jp,gj,gj->gp", Xb, d, y)[..., None])[..., 0]
        r = y - beta @ Xb.T
        return beta, np.linalg.inv(info), 0.5 * (np.log(d).sum(1) - (r**2 * d).sum(1))

    best, s2 = np.full(G, -np.inf), np.zeros(G)
    for g in np.r_[0.0, np.logspace(-5, 0.5, 150)]:
        ll = gls(np.full(G, g))[2]
        s2 = np.where(ll > best, g, s2)
        best = np.maximum(ll, best)
    beta, cov, _ = gls(s2)
    codes = np.repeat(np.arange(m), 3)
    mask, Xb_cells = donor_level_design(Xb[codes], codes)
    return beta, cov, s2, mask, Xb_cells


def test_eb_with_donor_cells_is_calibrated_with_unequal_donors():
    # Kang's 98 to 641 cells per donor: donors are not equally informative, fewer than 8 count.
    # Without the cells per donor "eb" is anti-conservative (0.061 here); with them it is exact.
    rng = np.random.default_rng(7)
    G = 6000
    sigma2 = np.where(rng.random(G) < 0.3, 0.0, rng.uniform(0.0, 0.1, G))
    alpha = np.exp(rng.uniform(np.log(0.005), np.log(0.15), G)) * KANG_CELLS.mean()
    coef, cov, s2, mask, Xb = _unequal_normal_means(rng, G, KANG_CELLS, sigma2, alpha)
    c = np.array([0.0, 1.0])
    kw = {"sigma2": s2, "donor_mask": mask, "donor_design": Xb, "calibration": "eb"}
    with_cells = wald_pvalues(coef, cov, c, donor_cells=KANG_CELLS, **kw)["p_value"]
    without = wald_pvalues(coef, cov, c, **kw)["p_value"]
    se = np.sqrt(0.05 * 0.95 / G)
    assert abs(np.mean(with_cells < 0.05) - 0.05) < 3.5 * se
    assert abs(np.mean(with_cells < 0.01) - 0.01) < 3.5 * np.sqrt(0.01 * 0.99 / G)
    assert np.mean(without < 0.05) > 0.057
    # equal cells per donor change nothing
    same = wald_pvalues(coef, cov, c, donor_cells=np.full(8, 50.0), **kw)["p_value"]
    np.testing.assert_array_equal(same, without)


def test_eb_donor_information_by_hand():
    # one gene, 2 + 2 donors with 10, 40 | 20, 20 cells, sigma2 0.1, alpha 2: within-donor variances
    # 0.2, 0.05 | 0.1, 0.1; the group means weight donors by 1 / 0.3 and 1 / 0.15
    cells = np.array([10.0, 40.0, 20.0, 20.0])
    Xb = np.column_stack([np.ones(4), [0.0, 0.0, 1.0, 1.0]])
    c = np.array([0.0, 1.0])
    var = 1 / (1 / 0.3 + 1 / 0.15) + 0.2 / 2  # group 1: 0.1; group 2: two donors of variance 0.2
    a = np.array([-1 / 3, -2 / 3, 0.5, 0.5])
    k_g, m_g = eb_donor_information(np.array([var]), np.array([0.1]), c, Xb, cells)
    assert k_g[0] == pytest.approx(np.sum(a**2), rel=1e-9)  # 1.0556 against k = 1/2 + 1/2
    assert m_g[0] == pytest.approx(4 / np.sum(a**2), rel=1e-9)  # 3.79 donors
    # a gene without a usable variance keeps k and m
    k_g, m_g = eb_donor_information(np.array([np.nan]), np.array([0.1]), c, Xb, cells)
    assert (k_g[0], m_g[0]) == (pytest.approx(1.0), pytest.approx(4.0))
    codes = np.repeat(np.arange(4), 2)
    mask, Xb_cells = donor_level_design(Xb[codes], codes)
    with pytest.raises(ValueError, match=r"donor_cells needs one number of cells per donor \(4\); got shape \(3,\)"):
        wald_pvalues(np.zeros((1, 2)), np.eye(2)[None], c, sigma2=np.zeros(1), donor_mask=mask,
                     donor_design=Xb_cells, donor_cells=cells[:3])  # fmt: skip


def test_eb_falls_back_to_t_with_few_genes_and_keeps_nan_rows():
    rng = np.random.default_rng(5)
    G = 200
    coef, cov, s2, mask, Xb, k = _normal_means(rng, G, 3, 3, np.full(G, 0.05), np.full(G, 0.02))
    c = np.array([0.0, 1.0])
    kw = {"donor_mask": mask, "donor_design": Xb}
    few = wald_pvalues(coef[: EB_MIN_GENES - 1], cov[: EB_MIN_GENES - 1], c, sigma2=s2[: EB_MIN_GENES - 1],
                       calibration="eb", **kw)  # fmt: skip
    t = wald_pvalues(coef[: EB_MIN_GENES - 1], cov[: EB_MIN_GENES - 1], c, sigma2=s2[: EB_MIN_GENES - 1],
                     calibration="t", **kw)  # fmt: skip
    assert few["df"] == 4
    np.testing.assert_array_equal(few["p_value"], t["p_value"])
    coef[7] = np.nan
    eb = wald_pvalues(coef, cov, c, sigma2=s2, calibration="eb", **kw)
    assert np.isnan(eb["p_value"][7]) and np.isfinite(np.delete(eb["p_value"], 7)).all()
    rest = np.delete(eb["p_value"], 7)
    assert ((rest > 0) & (rest <= 1)).all()
    # with one shared donor variance, the learnt prior concentrates near it
    assert abs(eb["eb_prior"] @ eb["eb_grid"] - 0.05) < 0.02


def test_bh_and_lrt_helpers():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(bh_adjust(p), [0.04, np.nan, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    stat, pv = lrt_pvalues(np.array([-10.0, -5.0, np.nan]), np.array([-12.0, -5.0 + 1e-9, -1.0]), 1)
    np.testing.assert_allclose(stat[:2], [4.0, 0.0])
    np.testing.assert_allclose(pv[:2], [stats.chi2.sf(4.0, 1), 1.0])
    assert np.isnan(stat[2]) and np.isnan(pv[2])


def test_default_calibration_with_few_genes_is_between_donor_t(fitted):
    # the default "eb" needs EB_MIN_GENES genes; this fit has 16, so it falls back to "t"
    p = fitted.uns["scglmm"]["params"]
    assert p["calibration"] == "eb" and fitted.n_vars < EB_MIN_GENES
    # 9 donors, donor-level columns Intercept + 2 treatment levels: 6 df; covariate is cell-level
    assert dict(p["df"]) == {"Intercept": 6.0, "treatment[T.B]": 6.0, "treatment[T.C]": 6.0, "covariate": np.inf}
    assert list(p["donor_level_columns"]) == ["Intercept", "treatment[T.B]", "treatment[T.C]"]
    res = scglmm.get.results(fitted, "treatment[T.B]")
    np.testing.assert_allclose(res.p_value, 2 * stats.t.sf(np.abs(res.log_fc / res.se), 6), rtol=1e-10)
    cov = scglmm.get.results(fitted, "covariate")
    np.testing.assert_allclose(cov.p_value, 2 * stats.norm.sf(np.abs(cov.log_fc / cov.se)), rtol=1e-10)


# ------------------------------------------------------------------------------------------------
# issue 14: log10 p-values and expression next to each fold change
# ------------------------------------------------------------------------------------------------
def _manual_expression(a: ad.AnnData, cells: np.ndarray, center: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean of count / size factor and the fraction of cells with a count, over ``cells``; the size factors
    are the fit's (the library sizes times their samples' normalisation factors)."""
    Y = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    sf = np.exp(a.uns["scglmm"]["log_offset"] - center)
    return (Y[cells] / sf[cells, None]).mean(axis=0), (Y[cells] > 0).mean(axis=0)


def test_results_expression_per_compared_level(fitted, tmp_path):
    a = fitted.copy()
    center = float(np.mean(a.uns["scglmm"]["log_offset"]))
    res = scglmm.get.results(a, "treatment[T.B]")
    for level in ("A", "B"):
        mean, pct = _manual_expression(a, (a.obs["treatment"] == level).to_numpy(), center)
        np.testing.assert_allclose(res[f"mean_{level}"], mean, rtol=1e-12)
        np.testing.assert_allclose(res[f"pct_{level}"], pct, rtol=1e-12)
    assert "mean_C" not in res.columns
    np.testing.assert_allclose(res["base_mean"], _manual_expression(a, np.ones(a.n_obs, bool), center)[0], rtol=1e-12)
    # a contrast between two levels shows those two; a numeric covariate only base_mean
    name = scglmm.tl.test(a, ("treatment", "C", "B"))
    con = scglmm.get.results(a, contrast=name)
    assert [c for c in con.columns if c.startswith(("mean_", "pct_"))] == ["mean_C", "mean_B", "pct_C", "pct_B"]
    np.testing.assert_allclose(con["mean_B"], res["mean_B"])
    cov = scglmm.get.results(a, "covariate")
    assert "base_mean" in cov.columns and not any(c.startswith(("mean_", "pct_")) for c in cov.columns)
    # stored at fit time: the counts are not needed afterwards, also after a round trip through h5ad
    path = tmp_path / "e.h5ad"
    a.write_h5ad(path)
    back = ad.read_h5ad(path)
    back.X = None
    pd.testing.assert_frame_equal(scglmm.get.results(back, "treatment[T.B]"), res)
    assert back.uns["scglmm"]["params"]["expression_levels"]["treatment"].tolist() == ["A", "B", "C"]


@pytest.mark.filterwarnings("ignore:.*have no estimate:UserWarning")
def test_results_expression_by_group():
    a = _data()
    a.obs["half"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2 == 0, "x", "y"))
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", groupby="half", n_jobs=1, progress=False)
    in_y = (a.obs["half"] == "y").to_numpy()
    center = float(np.mean(a.uns["scglmm"]["log_offset"][in_y]))  # the group's cells, as fitted alone
    res = scglmm.get.results(a, "treatment[T.C]", group="y")
    cells = ((a.obs["half"] == "y") & (a.obs["treatment"] == "C")).to_numpy()
    mean, pct = _manual_expression(a, cells, center)
    np.testing.assert_allclose(res["mean_C"], mean, rtol=1e-12)
    np.testing.assert_allclose(res["pct_C"], pct, rtol=1e-12)


@pytest.mark.parametrize("calibration", ["z", "t", "satterthwaite", "eb"])
def test_log10_p_value_matches_p_value(calibration):
    a = _data()
    scglmm.tl.fit(a, FORMULA, size_factors="libsize", n_jobs=1, progress=False, calibration=calibration)
    for coef in ("treatment[T.B]", "covariate"):
        res = scglmm.get.results(a, coef)
        ok = res["p_value"] > 0
        assert ok.sum() >= 10
        np.testing.assert_allclose(res.loc[ok, "log10_p_value"], np.log10(res.loc[ok, "p_value"]), rtol=1e-7)
        assert res.loc[res["p_value"].isna(), "log10_p_value"].isna().all()
    name = scglmm.tl.test(a, "treatment", method="lrt", progress=False)
    lrt = scglmm.get.results(a, contrast=name)
    ok = lrt["p_value"] > 0
    np.testing.assert_allclose(lrt.loc[ok, "log10_p_value"], np.log10(lrt.loc[ok, "p_value"]), rtol=1e-7)


def test_log10_p_value_finite_where_p_underflows(fitted):
    a = fitted.copy()
    gene = a.var_names[0]
    a.varm["scglmm_stat"].loc[gene, "covariate"] = 45.0  # the covariate varies within donors: normal reference
    a.varm["scglmm_pval"].loc[gene, "covariate"] = 0.0
    res = scglmm.get.results(a, "covariate")
    assert res.attrs["df"] == np.inf
    np.testing.assert_allclose(res.loc[gene, "log10_p_value"], np.log10(2) + stats.norm.logsf(45.0) / np.log(10))
    assert np.isfinite(res.loc[gene, "log10_p_value"]) and res.loc[gene, "log10_p_value"] < -440
    assert res["log10_p_value"].idxmin() == gene


def test_log10_helpers_in_the_far_tail():
    from scglmm.get._log10p import log10_chi2_sf, log10_two_sided

    # t: continuous with scipy where scipy is still finite, finite beyond
    for df in (3.0, 8.0, 50.0):
        a = np.array([5.0, 20.0, 37.0])
        np.testing.assert_allclose(log10_two_sided(a, df), np.log10(2 * stats.t.sf(a, df)), rtol=1e-10)
    assert np.isfinite(log10_two_sided([1e200], [4.0])).all()
    # chi-square(1) = z^2: the LRT tail equals the two-sided normal tail
    np.testing.assert_allclose(log10_chi2_sf([1600.0, 4e4], 1), log10_two_sided([40.0, 200.0]), rtol=1e-9)
    np.testing.assert_allclose(log10_chi2_sf([3000.0], 2), [-1500 / np.log(10)], rtol=1e-12)


def test_contrast_as_a_list_reads_as_pydeseq2_writes_it() -> None:
    cols = ["Intercept", "condition[T.stim]", "treatment[T.B]"]
    ref = {"condition": "ctrl", "treatment": "A"}
    as_list = contrast_vector(["condition", "stim", "ctrl"], cols, reference_levels=ref)
    as_tuple = contrast_vector(("condition", "stim", "ctrl"), cols, reference_levels=ref)
    np.testing.assert_array_equal(as_list[0], [0.0, 1.0, 0.0])
    assert as_list[1] == as_tuple[1] == "condition_stim_vs_ctrl"
    np.testing.assert_array_equal(contrast_vector(["condition", "ctrl", "stim"], cols, reference_levels=ref)[0],
                                  [0.0, -1.0, 0.0])  # fmt: skip


@pytest.mark.parametrize("bad", [["condition", "stim"], ["condition", "stim", 1.0], {"condition"}, [None, "x"]])
def test_other_contrast_shapes_get_the_accepted_forms(bad) -> None:
    from scglmm._core._errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="Accepted forms") as info:
        contrast_vector(bad, ["Intercept", "condition[T.stim]"], reference_levels={"condition": "ctrl"})
    assert info.value.param == "contrast"
