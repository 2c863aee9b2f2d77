"""scglmm.tl.test on fits with random slopes and other structures: the random-slope reference of Wald
contrasts, likelihood-ratio tests refitted with the general engine, and tests of variance components.

Data: ``scglmm.datasets.simulate(paired=True)``, 8 donors each in ``ctrl`` and ``stim``, with or without
a donor-specific condition effect (``slope_sd``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import special, stats

import scglmm
from scglmm._core._api import fit_general_engine, fit_genes
from scglmm._core._errors import InputError
from scglmm._core._inference import chibar_sf, eb_donor_variance, lrt_pvalues, mixture_name
from scglmm._core._re import RETerm
from scglmm._formula import build_design, build_re_terms, parse_re_formula
from scglmm.cli import cli
from scglmm.get._log10p import log10_mixture_sf
from scglmm.tl._lrt import compare_terms
from scglmm.tl._wald import slope_variance

STIM = "condition[T.stim]"
SLOPE = "~ condition + (1 + condition | donor)"
WALD = "~ condition + covariate + (1 + condition | donor)"


@cache
def data(slope_sd: float, n_genes: int = 60, seed: int = 2, mean_range: tuple = (0.02, 10.0)) -> ad.AnnData:
    return scglmm.datasets.simulate(
        n_donors=8, cells_per_donor=50, n_genes=n_genes, paired=True, slope_sd=slope_sd, seed=seed,
        mean_range=mean_range,
    )  # fmt: skip


@cache
def _fitted(formula: str, slope_sd: float = 0.0, calibration: str = "eb", **kw) -> ad.AnnData:
    a = data(slope_sd, **kw).copy()
    scglmm.tl.fit(a, formula, size_factors="libsize", calibration=calibration, progress=False)
    return a


def fitted(formula: str, slope_sd: float = 0.0, calibration: str = "eb", **kw) -> ad.AnnData:
    """A fresh copy of a cached fit (tl.test writes into it)."""
    return _fitted(formula, slope_sd, calibration, **kw).copy()


def engine(a: ad.AnnData, formula: str) -> scglmm.GenesFit:
    """:func:`scglmm.fit_genes` on the arrays of ``a`` with ``formula`` (the fit's log offset)."""
    parsed = parse_re_formula(formula)
    design = build_design(parsed.fixed, a.obs)
    terms = build_re_terms(parsed.terms, a.obs)
    off = np.asarray(a.uns["scglmm"]["log_offset"])
    return fit_genes(a.X, design.matrix, terms, off, coef_names=design.columns)


def contrast(a: ad.AnnData, name: str) -> pd.DataFrame:
    return a.varm[f"scglmm_contrast_{name}"]


# ------------------------------------------------------------------------------------------------
# Wald contrasts: the random-slope reference
# ------------------------------------------------------------------------------------------------
def test_contrast_of_one_slope_coefficient_is_its_test() -> None:
    """With 60 genes the default "eb" tests the slope's effect by the prior of its variance (as tl.fit does);
    a contrast naming one coefficient gets exactly its p-value, under "eb" and under "t"."""
    a = fitted(WALD)
    for spec, col in (("condition", STIM), ({STIM: 1.0}, STIM), ("covariate", "covariate")):
        name = scglmm.tl.test(a, spec, key_added="c")
        res = contrast(a, name)
        np.testing.assert_allclose(res["p_value"], a.varm["scglmm_pval"][col], rtol=1e-12, atol=0)
        np.testing.assert_array_equal(res["df"].to_numpy(), a.uns["scglmm"]["params"]["df"][col])
    assert "slope_df" not in a.uns["scglmm"]["contrasts"]["c"]  # covariate has no random slope
    name = scglmm.tl.test(a, "condition")
    assert a.uns["scglmm"]["contrasts"][name]["slope_df"] == 7.0
    assert list(a.uns["scglmm"]["contrasts"][name]["slope_columns"]) == [STIM]
    z = (a.varm["scglmm_coef"][STIM] / a.varm["scglmm_se"][STIM]).to_numpy()
    p_t = 2 * stats.t.sf(np.abs(z), 7)
    assert np.nanmax(np.abs(contrast(a, name)["p_value"] - p_t)) > 1e-3  # "eb" is not "t" here
    name = scglmm.tl.test(a, "condition", calibration="t", key_added="t")
    np.testing.assert_allclose(contrast(a, name)["p_value"], p_t, rtol=1e-12)
    assert (contrast(a, name)["df"] == 7).all()


def test_contrast_with_a_slope_column_by_hand() -> None:
    """condition + covariate, with ``est = b_c + b_x`` and ``v = V_cc + V_xx + 2 V_cx``: under "t" t(8 donors - 1)
    on est / sqrt(v); under "eb" the empirical-Bayes test with the slope variance var(condition|donor), 8 levels,
    k = 1/8; under "z" the normal."""
    a = fitted(WALD)
    cols = list(a.uns["scglmm"]["params"]["design_columns"])
    j, k = cols.index(STIM), cols.index("covariate")
    coef = a.varm["scglmm_coef"][cols].to_numpy()
    cov = np.asarray(a.varm["scglmm_cov"]).reshape(a.n_vars, len(cols), len(cols))
    est = coef[:, j] + coef[:, k]
    var = cov[:, j, j] + cov[:, k, k] + 2 * cov[:, j, k]
    ok = np.isfinite(var)
    assert ok.sum() >= 55
    tau2 = a.varm["scglmm_varcomp"][f"var({STIM}|donor)"].to_numpy()
    eb = eb_donor_variance(est[ok], var[ok], tau2[ok], n_donors=8, df=7, k=1 / 8)["p_value"]
    z = est / np.sqrt(var)
    for cal, expected in (("eb", eb), ("t", 2 * stats.t.sf(np.abs(z[ok]), 7)), ("z", 2 * stats.norm.sf(np.abs(z[ok])))):
        name = scglmm.tl.test(a, f"{STIM} + covariate", calibration=cal, key_added=cal)
        res = contrast(a, name)
        np.testing.assert_allclose(res["estimate"][ok], est[ok], rtol=1e-12)
        np.testing.assert_allclose(res["se"][ok], np.sqrt(var[ok]), rtol=1e-10)
        np.testing.assert_allclose(res["p_value"][ok], expected, rtol=1e-9)
        assert (res["df"] == (7 if cal == "t" else np.inf)).all()
        assert ("slope_df" in a.uns["scglmm"]["contrasts"][name]) == (cal != "z")


def test_slope_variance_of_a_contrast() -> None:
    """c' Sigma c from the variances and correlations of one term, by hand; a diagonal term has no covariance."""
    vc = pd.DataFrame({"var(a|g)": [0.4, 0.0], "var(b|g)": [0.9, 0.25], "cor(a,b|g)": [-0.5, 0.3]})
    term = _term("g", ("Intercept", "a", "b"))
    vc["var(Intercept|g)"] = [7.0, 7.0]  # weight 0: no part
    names, values = list(vc.columns), vc.to_numpy()
    got = slope_variance(values, names, term, np.array([0.0, 2.0, -1.0]))
    np.testing.assert_allclose(got, [4 * 0.4 + 0.9 - 2 * 2 * (-0.5) * np.sqrt(0.4 * 0.9), 0.25], rtol=1e-14)
    diag = _term("g", ("a", "b"), diagonal=True)
    dvc = vc.drop(columns="cor(a,b|g)")
    got = slope_variance(dvc.to_numpy(), list(dvc.columns), diag, np.array([1.0, 1.0]))
    np.testing.assert_allclose(got, [1.3, 0.25])


def test_slope_df_recomputed_for_a_z_fit_and_smallest_of_several() -> None:
    """A fit under "z" tested under "t" gets 8 - 1. With the covariate's own slope by sample (16 samples - 1:
    the condition, constant within samples, does not interact with the covariate), a contrast of both slopes
    (different terms) is t on the smaller, 7."""
    a = fitted(WALD, calibration="z", n_genes=30)
    name = scglmm.tl.test(a, "condition", calibration="t")
    z = a.varm["scglmm_coef"][STIM] / a.varm["scglmm_se"][STIM]
    np.testing.assert_allclose(contrast(a, name)["p_value"], 2 * stats.t.sf(np.abs(z), 7), rtol=1e-12)
    b = fitted("~ condition + covariate + (1 + condition | donor) + (0 + covariate | sample)", n_genes=12)
    assert b.uns["scglmm"]["params"]["slope_df"] == {STIM: 7.0, "covariate": 15.0}
    name = scglmm.tl.test(b, "covariate")
    np.testing.assert_allclose(contrast(b, name)["p_value"], b.varm["scglmm_pval"]["covariate"], rtol=1e-12, atol=0)
    name = scglmm.tl.test(b, f"{STIM} - covariate")
    assert b.uns["scglmm"]["contrasts"][name]["slope_df"] == 7.0
    assert (contrast(b, name)["df"] == 7).all()


def test_intercept_only_calibration_refused_on_a_slope_fit() -> None:
    a = fitted(WALD, n_genes=30)
    with pytest.raises(InputError, match=r"calibration='t_reml' models a single donor random intercept") as info:
        scglmm.tl.test(a, "condition", calibration="t_reml")
    assert info.value.param == "calibration"
    assert "contrasts" not in a.uns["scglmm"]


# ------------------------------------------------------------------------------------------------
# likelihood-ratio tests of fixed effects, refitted with the general engine
# ------------------------------------------------------------------------------------------------
def test_fixed_effect_lrt_equals_two_direct_fits() -> None:
    a = fitted(SLOPE)
    name = scglmm.tl.test(a, "condition", method="lrt", progress=False)
    assert name == f"lrt_{STIM}"
    res = contrast(a, name)
    full, reduced = engine(a, SLOPE), engine(a, "~ 1 + (1 + condition | donor)")
    np.testing.assert_allclose(res["loglik_full"], full.loglik, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res["loglik_reduced"], reduced.loglik, rtol=0, atol=1e-9)
    lr = np.maximum(2 * (full.loglik - reduced.loglik), 0)
    np.testing.assert_allclose(res["stat"], lr, rtol=0, atol=1e-8)
    # condition has its own random slope, kept in both models: LR / 1 on F(1, slope df), not chi-square(1)
    slope_df = float(a.uns["scglmm"]["params"]["slope_df"][STIM])
    assert slope_df == a.obs["donor"].nunique() - 1
    np.testing.assert_allclose(res["p_value"], stats.f.sf(lr, 1, slope_df), rtol=1e-7, atol=1e-12)
    assert np.all(res["p_value"][lr > 4] > stats.chi2.sf(lr[lr > 4], 1))
    info = a.uns["scglmm"]["contrasts"][name]
    assert info["reference"] == f"F(1, {slope_df:g}) of LR / 1" and info["df"] == 1 and info["slope_df"] == slope_df
    got = scglmm.get.results(a, contrast=name)
    ok = got["p_value"] > 0
    np.testing.assert_allclose(got.loc[ok, "log10_p_value"], np.log10(got.loc[ok, "p_value"]), rtol=1e-9)
    assert "dropped_variances" not in info
    # the same null model written out: the random effects are added when left out
    name2 = scglmm.tl.test(a, "x", method="lrt", reduced_formula="~ 1", key_added="r", progress=False)
    np.testing.assert_allclose(contrast(a, name2)["stat"], res["stat"], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# likelihood-ratio tests of variance components
# ------------------------------------------------------------------------------------------------
def test_both_engines_give_the_same_loglik_for_one_donor_intercept() -> None:
    a = data(0.0, n_genes=8)
    design = build_design("~ condition", a.obs)
    off = np.log(a.obs["libsize"].to_numpy())
    kernel = fit_genes(a.X, design.matrix, a.obs["donor"].to_numpy(), off, n_jobs=1)
    terms = build_re_terms(parse_re_formula("~ 1 + (1 | donor)").terms, a.obs)
    general = fit_general_engine(a.X, design.matrix, terms, off)
    assert np.isfinite(kernel.loglik).all()
    np.testing.assert_allclose(general.loglik, kernel.loglik, rtol=0, atol=1e-6)


def test_random_slope_lrt_mixture_by_hand() -> None:
    """(1 + condition | donor) against (1 | donor): 0.5 chi2(1) + 0.5 chi2(2); the null model by the kernel."""
    a = fitted(SLOPE)
    name = scglmm.tl.test(a, reduced_formula="~ condition + (1 | donor)", method="lrt", progress=False)
    assert name == f"lrt_var({STIM}|donor)"
    info = a.uns["scglmm"]["contrasts"][name]
    assert info["reference"] == "0.5 chi2(1) + 0.5 chi2(2)"
    assert list(info["mixture_df"]) == [1, 2] and list(info["mixture_weights"]) == [0.5, 0.5]
    assert list(info["dropped_variances"]) == [f"var({STIM}|donor)"]
    assert list(info["dropped_correlations"]) == [f"cor(Intercept,{STIM}|donor)"]
    res = contrast(a, name)
    design = build_design("~ condition", a.obs)
    off = np.asarray(a.uns["scglmm"]["log_offset"])
    kernel = fit_genes(a.X, design.matrix, a.obs["donor"].to_numpy(), off, n_jobs=1)
    np.testing.assert_allclose(res["loglik_reduced"], kernel.loglik, rtol=0, atol=1e-9)
    lr_raw = 2 * (res["loglik_full"] - res["loglik_reduced"]).to_numpy()
    assert lr_raw.min() >= -1e-6
    lr = np.maximum(lr_raw, 0)
    np.testing.assert_allclose(res["stat"], lr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["p_value"], 0.5 * stats.chi2.sf(lr, 1) + 0.5 * stats.chi2.sf(lr, 2), rtol=1e-12)
    assert np.isnan(res["df"]).all() and np.isnan(res["estimate"]).all()
    np.testing.assert_array_equal(res["variance"], a.varm["scglmm_varcomp"][f"var({STIM}|donor)"])
    got = scglmm.get.results(a, contrast=name)
    ok = got["p_value"] > 0
    np.testing.assert_allclose(got.loc[ok, "log10_p_value"], np.log10(got.loc[ok, "p_value"]), rtol=1e-9, atol=1e-12)


def test_independent_slope_without_slope_variance_about_half_zero() -> None:
    """No donor-specific response: (1 + condition || donor) against (1 | donor) gives LR >= 0, about half of
    them 0 (the variance estimated at the boundary), p-values from 0.5 chi2(0) + 0.5 chi2(1)."""
    a = fitted("~ condition + (1 + condition || donor)")
    name = scglmm.tl.test(a, reduced_formula="~ condition + (1 | donor)", method="lrt", progress=False)
    info = a.uns["scglmm"]["contrasts"][name]
    assert info["reference"] == "0.5 chi2(0) + 0.5 chi2(1)"
    assert list(info["dropped_correlations"]) == []
    res = contrast(a, name)
    lr_raw = 2 * (res["loglik_full"] - res["loglik_reduced"]).to_numpy()
    assert np.isfinite(lr_raw).all()
    assert lr_raw.min() >= -1e-6
    at0 = lr_raw < 1e-6
    assert 0.35 <= at0.mean() <= 0.8, at0.mean()
    lr = res["stat"].to_numpy()
    expected = np.where(lr > 0, 0.5 * stats.chi2.sf(lr, 1), 1.0)
    np.testing.assert_allclose(res["p_value"], expected, rtol=1e-12)
    # the variance of the genes at LR ~ 0 is 0 in the full fit
    assert (res["variance"][at0] < 1e-6).all()


def test_strong_slope_variance_is_found() -> None:
    a = fitted(SLOPE, slope_sd=1.0, seed=3, mean_range=(0.5, 10.0))
    name = scglmm.tl.test(a, reduced_formula="~ condition + (1 | donor)", method="lrt", progress=False)
    p = contrast(a, name)["p_value"].to_numpy()
    assert np.isfinite(p).all()
    assert (p < 0.01).mean() >= 0.9, (p < 0.01).mean()


def test_whole_term_and_correlation_only() -> None:
    """Dropping (1 | sample) is one independent variance; | to || drops only a correlation (chi2(1)); both
    reduced models here are general structures, fitted by the general engine."""
    a = fitted("~ condition + (1 | donor) + (1 | sample)", n_genes=20)
    name = scglmm.tl.test(a, reduced_formula="~ condition + (1 | donor)", method="lrt", progress=False)
    assert name == "lrt_var(Intercept|sample)"
    assert a.uns["scglmm"]["contrasts"][name]["reference"] == "0.5 chi2(0) + 0.5 chi2(1)"
    b = fitted(SLOPE)
    red = "~ condition + (1 + condition || donor)"
    name = scglmm.tl.test(b, reduced_formula=red, method="lrt", progress=False)
    info = b.uns["scglmm"]["contrasts"][name]
    assert name == f"lrt_cor(Intercept,{STIM}|donor)"
    assert info["reference"] == "chi-square(1)" and info["df"] == 1 and "mixture_df" not in info
    res = contrast(b, name)
    np.testing.assert_allclose(res["loglik_reduced"], engine(b, red).loglik, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res["p_value"], stats.chi2.sf(res["stat"], 1), rtol=1e-12)
    # a fixed effect and the slope together: one boundary parameter and two others
    name = scglmm.tl.test(b, "both", reduced_formula="~ 1 + (1 | donor)", method="lrt", progress=False)
    assert b.uns["scglmm"]["contrasts"][name]["reference"] == "0.5 chi2(2) + 0.5 chi2(3)"


def test_not_nested_or_untestable_refused_before_any_work() -> None:
    a = fitted(SLOPE)
    cases = [
        ("~ condition + (1 | sample)", r"not nested.*\['var\(Intercept\|sample\)'\].*\(1 \+ condition \| donor\)"),
        ("~ condition + (1 + condition | donor) + (1 | sample)", r"not nested.*var\(Intercept\|sample\)"),
        ("~ condition + covariate + (1 | donor)", r"not nested.*\['covariate'\]"),
        ("~ condition + (1 + condition | donor)", r"drops no column.*keeps the random effects"),
    ]
    for formula, pattern in cases:
        with pytest.raises(InputError, match=pattern) as info:
            scglmm.tl.test(a, method="lrt", reduced_formula=formula, progress=False)
        assert info.value.param == "reduced_formula"
    b = fitted("~ condition + (1 + condition || donor)")
    with pytest.raises(InputError, match=r"not nested.*\['cor\(Intercept,condition\[T.stim\]\|donor\)'\]"):
        scglmm.tl.test(b, method="lrt", reduced_formula=SLOPE, progress=False)
    with pytest.raises(InputError, match=r"contrast is missing") as info:
        scglmm.tl.test(a)
    assert info.value.param == "contrast"
    assert "contrasts" not in a.uns["scglmm"] and "contrasts" not in b.uns["scglmm"]


def _term(group: str, coefs: tuple[str, ...], diagonal: bool = False) -> RETerm:
    n = 4
    Z, codes = np.ones((n, len(coefs))), np.arange(n) % 2
    return RETerm(group, Z, codes, np.array(["a", "b"], dtype=object), coefs, diagonal)


def test_compare_terms_rules() -> None:
    """What a reduced structure drops, and the refusals (terms built by hand)."""
    full = (_term("g", ("Intercept", "x", "z")), _term("h", ("Intercept",)))

    def drops(*reduced: RETerm) -> tuple:
        return compare_terms(full, reduced, shown_full="F", shown="R")

    assert drops(_term("g", ("Intercept", "z")), _term("h", ("Intercept",))) == (
        ("var(x|g)",),
        ("cor(Intercept,x|g)", "cor(x,z|g)"),
    )
    assert drops(_term("g", ("Intercept", "x", "z"))) == (("var(Intercept|h)",), ())
    assert drops(_term("g", ("Intercept", "x", "z"), True), full[1]) == (
        (),
        ("cor(Intercept,x|g)", "cor(Intercept,z|g)", "cor(x,z|g)"),
    )
    assert drops(_term("g", ("Intercept",)), _term("g", ("x", "z")), full[1]) == (
        (),
        ("cor(Intercept,x|g)", "cor(Intercept,z|g)"),
    )
    with pytest.raises(InputError, match=r"drops 2 variances \['var\(z\|g\)', 'var\(Intercept\|h\)'\] from F"):
        drops(_term("g", ("Intercept", "x")))
    with pytest.raises(InputError, match=r"drops the variance var\(z\|g\) and also .*\['cor\(Intercept,x\|g\)'\]"):
        drops(_term("g", ("Intercept", "x"), True), full[1])
    with pytest.raises(InputError, match=r"not nested.*R have \['var\(w\|g\)', 'cor\(Intercept,w\|g\)', 'cor"):
        drops(_term("g", ("Intercept", "x", "z", "w")), full[1])
    with pytest.raises(InputError, match=r"coefficient 'x' in two terms grouped by 'g'") as info:
        drops(_term("g", ("Intercept", "x")), _term("g", ("x",)))
    assert info.value.param == "reduced_formula"


def test_mixture_helpers_by_hand() -> None:
    x = np.array([0.0, 1e-12, 0.7, 3.0, 25.0, np.nan])
    p = chibar_sf(x, [1, 2], [0.5, 0.5])
    np.testing.assert_allclose(
        p[:5],
        [1.0, 1 - 0.5 * stats.chi2.cdf(1e-12, 1), *(0.5 * stats.chi2.sf(x[2:5], 1) + 0.5 * stats.chi2.sf(x[2:5], 2))],
        rtol=1e-12,
    )
    assert np.isnan(p[5])
    np.testing.assert_allclose(chibar_sf(x[:5], [0, 1], [0.5, 0.5]), [1.0, *(0.5 * stats.chi2.sf(x[1:5], 1))])
    stat, pv = lrt_pvalues(np.array([-10.0, -10.0]), np.array([-10.0 + 1e-9, -12.0]), [0, 1], [0.5, 0.5])
    np.testing.assert_array_equal(stat, [0.0, 4.0])
    np.testing.assert_allclose(pv, [1.0, 0.5 * stats.chi2.sf(4.0, 1)], rtol=1e-14)
    assert mixture_name([1, 2], [0.5, 0.5]) == "0.5 chi2(1) + 0.5 chi2(2)"
    np.testing.assert_allclose(log10_mixture_sf(x[:5], [1, 2], [0.5, 0.5]), np.log10(p[:5]), rtol=1e-9, atol=1e-15)
    far = log10_mixture_sf(np.array([3000.0]), [1, 2], [0.5, 0.5])[0]  # p underflows; its log10 does not
    # closed forms: chi2(2) sf = exp(-x/2), chi2(1) sf = 2 Phi(-sqrt(x))
    exact = np.logaddexp(np.log(2.0) + special.log_ndtr(-np.sqrt(3000.0)), -1500.0) + np.log(0.5)
    assert np.isfinite(far) and abs(far - exact / np.log(10)) < 1e-6 * abs(far)


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def test_cli_passes_random_terms_through(tmp_path: Path) -> None:
    """``scglmm test`` with a reduced formula that drops the random slope (no --contrast), and a Wald test of
    the slope's effect: the same numbers as tl.test."""
    a = fitted(SLOPE)
    a.write_h5ad(tmp_path / "fit.h5ad")
    runner = CliRunner()
    args = ["test", str(tmp_path / "fit.h5ad"), "--method", "lrt", "--reduced-formula", "~ condition + (1 | donor)"]
    result = runner.invoke(cli, [*args, "-o", str(tmp_path / "lrt.h5ad"), "--table", str(tmp_path / "lrt.tsv")])
    assert result.exit_code == 0, result.output
    name = scglmm.tl.test(a, reduced_formula="~ condition + (1 | donor)", method="lrt", progress=False)
    out = ad.read_h5ad(tmp_path / "lrt.h5ad")
    assert out.uns["scglmm"]["contrasts"][name]["reference"] == "0.5 chi2(1) + 0.5 chi2(2)"
    np.testing.assert_allclose(contrast(out, name)["p_value"], contrast(a, name)["p_value"], rtol=1e-12)
    table = pd.read_csv(tmp_path / "lrt.tsv", sep="\t")
    assert len(table) == a.n_vars and (table["contrast"] == name).all()
    got = table.set_index("gene")["p_value"].reindex(a.var_names).to_numpy()
    np.testing.assert_allclose(got, contrast(a, name)["p_value"], rtol=1e-9)
    result = runner.invoke(cli, ["test", str(tmp_path / "fit.h5ad"), "-c", "condition", "-o", str(tmp_path / "w.h5ad")])
    assert result.exit_code == 0, result.output
    w = ad.read_h5ad(tmp_path / "w.h5ad")
    assert w.uns["scglmm"]["contrasts"][STIM]["slope_df"] == 7.0
    np.testing.assert_allclose(contrast(w, STIM)["p_value"], a.varm["scglmm_pval"][STIM], rtol=1e-12, atol=0)
    # not nested: the library's message under the flag's name
    result = runner.invoke(cli, [*args[:-1], "~ condition + (1 | sample)", "-o", str(tmp_path / "x.h5ad")])
    assert result.exit_code == 1
    assert "--reduced-formula: reduced_formula is not nested" in result.output
    assert not (tmp_path / "x.h5ad").exists()
