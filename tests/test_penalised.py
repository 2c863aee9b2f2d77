"""Genes switched on (or off) by the condition, and nearly so, get finite flagged estimates (issue 19, items 1-2).

The maximum-likelihood effect of a gene without counts on one side is infinite; such genes, and those
whose fit runs to an extreme, are refitted with weak normal priors (:mod:`scglmm._core._penalised`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scglmm
from scglmm._core import _penalised
from scglmm._core._re import _Problem, laplace_at, prepare_re
from scglmm._core._status import PARTIAL_SEPARATION, PENALISED, SEPARATION

NAMES = ["Intercept", "stim"]


def _paired(seed: int = 1, n_genes: int = 4, m: int = 8, per: int = 40):
    """``m`` donors x 2 conditions x ``per`` cells; gene 0 has no control counts, gene 1 one, gene 2 no
    stimulated counts, gene 3 is ordinary."""
    rng = np.random.default_rng(seed)
    donor = np.repeat([f"D{i}" for i in range(m)], 2 * per)
    cond = np.tile(np.repeat([0.0, 1.0], per), m)
    off = np.log(rng.uniform(1000, 3000, donor.size))
    b = rng.normal(0, 0.4, m)[pd.factorize(donor)[0]]
    mu = np.exp(np.log(2e-3) + off + b)
    Y = rng.negative_binomial(4, 4 / (4 + mu[:, None] * np.ones((1, n_genes)))).astype(float)
    Y[cond == 0, 0] = 0
    Y[cond == 0, 1] = 0
    Y[np.flatnonzero(cond == 0)[5], 1] = 1
    Y[cond == 1, 2] = 0
    X = np.column_stack([np.ones(donor.size), cond])
    return Y, X, donor, cond, off


def _slope_terms(donor, cond):
    obs = pd.DataFrame({"donor": donor, "condition": np.where(cond == 1, "stim", "ctrl")})
    return scglmm.random_terms("(1 + condition | donor)", obs)


@pytest.fixture(scope="module")
def data():
    return _paired()


@pytest.fixture(scope="module", params=["intercept", "slope"])
def fit(request, data):
    Y, X, donor, cond, off = data
    groups = donor if request.param == "intercept" else _slope_terms(donor, cond)
    return scglmm.fit_genes(Y, X, groups, off, coef_names=NAMES)


def test_switched_on_and_off_genes_get_finite_flagged_effects(fit):
    for g, sign in ((0, 1.0), (1, 1.0), (2, -1.0)):
        assert fit.status[g] & PENALISED and not fit.status[g] & (SEPARATION | PARTIAL_SEPARATION)
        assert np.all(np.isfinite(fit.coef[g])) and np.all(np.isfinite(fit.se[g]))
        # a large effect of the right sign, bounded: the prior keeps it within a few of its sds
        assert 3.0 < sign * fit.coef[g, 1] < 4 * _penalised.BETA_SD
    assert fit.status[3] & PENALISED == 0
    # the random-effect variances stay bounded (the zeros are not soaked up)
    var = fit.varcomp[:, [i for i, n in enumerate(fit.varcomp_names) if n.startswith("var(")]]
    assert np.all(var[:3] < _penalised.NEAR_VAR)


def test_switched_on_gene_is_significant_and_p_value_finite(fit):
    z = fit.coef[0, 1] / fit.se[0, 1]
    assert 3.0 < z < 12.0
    assert np.isfinite(fit.loglik[:3]).all()


def test_ordinary_genes_are_untouched(data):
    Y, X, donor, cond, off = data
    alone = scglmm.fit_genes(Y[:, 3:], X, donor, off, coef_names=NAMES)
    full = scglmm.fit_genes(Y, X, donor, off, coef_names=NAMES)
    np.testing.assert_array_equal(full.coef[3], alone.coef[0])
    np.testing.assert_array_equal(full.modes[3], alone.modes[0])


@pytest.mark.parametrize("kind", ["csr", "csc"])
def test_sparse_inputs_give_the_same_numbers(data, kind):
    Y, X, donor, cond, off = data
    dense = scglmm.fit_genes(Y, X, donor, off, coef_names=NAMES)
    mat = sparse.csr_matrix(Y) if kind == "csr" else sparse.csc_matrix(Y)
    other = scglmm.fit_genes(mat, X, donor, off, coef_names=NAMES, n_jobs=2, block_size=1)
    np.testing.assert_array_equal(other.status, dense.status)
    np.testing.assert_allclose(other.coef, dense.coef, rtol=1e-10)
    np.testing.assert_allclose(other.modes, dense.modes, rtol=1e-10, atol=1e-12)


def test_penalised_gradient_matches_finite_differences(data):
    Y, X, donor, cond, off = data
    s = prepare_re(X, off, tuple(_slope_terms(donor, cond)))
    s = replace(s, prior=_penalised.separation_prior(s))
    prob = _Problem(s, np.ascontiguousarray(Y[:, 0]))
    phi = np.array([-7.0, 6.0, 0.5, 0.1, 0.4, 1.0])
    val, grad = prob.value_grad(phi, np.zeros(s.data.Q))
    h = 1e-5
    num = np.empty_like(phi)
    for i in range(phi.size):
        e = np.zeros_like(phi)
        e[i] = h
        num[i] = (prob.value_grad(phi + e, np.zeros(s.data.Q))[0] - prob.value_grad(phi - e, np.zeros(s.data.Q))[0]) / (
            2 * h
        )
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-5)
    # the objective is the log-likelihood less the prior's quadratic form
    plain = laplace_at(replace(s, prior=None), Y[:, 0], phi)
    assert val == pytest.approx(plain - 0.5 * float(s.prior.precision @ (phi * phi)), rel=1e-10)


def test_reported_loglik_is_the_unpenalised_one(data):
    Y, X, donor, cond, off = data
    terms = tuple(_slope_terms(donor, cond))
    fit = scglmm.fit_genes(Y[:, :1], X, terms, off, coef_names=NAMES)
    s = prepare_re(X, off, terms)
    phi = scglmm._core._re.phi_from_varcomp(s, fit.coef[0], fit.varcomp[0], fit.theta[0])
    assert fit.loglik[0] == pytest.approx(laplace_at(s, Y[:, 0], phi), abs=1e-4)


def test_prior_only_on_effects_other_than_the_intercept(data):
    Y, X, donor, cond, off = data
    s = prepare_re(X[:, ::-1], off, tuple(_slope_terms(donor, cond)))  # intercept second
    prec = _penalised.separation_prior(s).precision
    assert prec[1] == 0.0 and prec[0] == pytest.approx(_penalised.BETA_SD**-2)
    assert np.all(prec[2:-1] == pytest.approx(_penalised.COV_SD**-2)) and prec[-1] == 0.0


def test_design_without_intercept_keeps_separation(data):
    Y, X, donor, cond, off = data
    cells_means = np.column_stack([1 - cond, cond])  # ~ 0 + condition: a prior at 0 would be absurd
    fit = scglmm.fit_genes(Y[:, :1], cells_means, donor, off, coef_names=["ctrl", "stim"])
    assert fit.status[0] & PENALISED == 0
    assert np.isnan(fit.coef[0, 0])


def test_rare_null_genes_are_not_called(tmp_path):
    """Null genes with a few counts, often all on one side by chance: the penalised test is conservative."""
    adata = scglmm.datasets.simulate(n_donors=6, cells_per_donor=60, n_genes=400, mean_range=(0.005, 0.03), seed=4)
    scglmm.tl.fit(adata, "~ condition + (1 | donor)", size_factors="libsize", min_cells=3)  # no warning: all estimated
    res = scglmm.get.results(adata, "condition[T.stim]")
    fitted = res[res["status_kind"] != "filtered"]
    pen = fitted[fitted["status"].str.contains("penalised")]
    assert len(pen) >= 10
    assert pen["p_value"].notna().all() and fitted["p_value"].notna().all()
    assert (pen["p_value"] < 0.05).mean() <= 0.10
    assert (fitted["p_value"] < 0.05).mean() <= 0.08


def _adata(data):
    import anndata as ad

    Y, X, donor, cond, off = data
    obs = pd.DataFrame(
        {"donor": donor, "condition": np.where(cond == 1, "stim", "ctrl"), "lib": np.exp(off)},
        index=[f"c{i}" for i in range(len(donor))],
    )
    return ad.AnnData(X=sparse.csr_matrix(Y), obs=obs, var=pd.DataFrame(index=["on", "nearly_on", "off", "plain"]))


def test_tl_fit_reports_penalised_genes_with_p_values(data, caplog):
    adata = _adata(data)
    with caplog.at_level("INFO", logger="scglmm"):
        scglmm.tl.fit(
            adata, "~ condition + (1 + condition | donor)", size_factors="lib", norm_method="none", min_cells=0,
            min_donors=0,
        )  # fmt: skip
    res = scglmm.get.results(adata, "condition[T.stim]")
    assert res["p_value"].notna().all()
    assert list(res["status_kind"]) == ["penalised", "penalised", "penalised", res["status_kind"].iloc[3]]
    assert res.loc["plain", "status_kind"] in ("ok", "boundary")
    assert res.loc["on", "log2_fc"] > 5 and res.loc["off", "log2_fc"] < -5
    assert adata.uns["scglmm"]["params"]["separation"] == "prior"
    assert "3 penalised" in caplog.text


def test_tl_fit_limit_keeps_the_maximum_likelihood_limits(data):
    adata = _adata(data)
    with pytest.warns(UserWarning, match="no estimate"):
        scglmm.tl.fit(adata, "~ condition + (1 | donor)", size_factors="lib", norm_method="none", min_cells=0,
                      min_donors=0, separation="limit")  # fmt: skip
    res = scglmm.get.results(adata, "condition[T.stim]")
    assert res["p_value"].isna().sum() == 2  # switched on (separation) and off (condition NaN)
    assert not res["status"].str.contains("penalised").any()


def test_bad_separation_choice_is_refused_before_work(data):
    adata = _adata(data)
    with pytest.raises(ValueError, match=r"separation must be one of \['prior', 'limit'\]"):
        scglmm.tl.fit(adata, "~ condition + (1 | donor)", separation="firth")
    assert "scglmm" not in adata.uns


def test_blme_covariance_prior_gradient_and_curvature(data):
    """blme's boundary-avoiding term ``a * sum log |L_kk|``: gradient and curvature against finite differences."""
    from scglmm._core._prior import Prior

    Y, X, donor, cond, off = data
    s = prepare_re(X, off, tuple(_slope_terms(donor, cond)))
    diag = np.array([s.p + i for i in range(s.n_lambda) if s.data.lam_r[i] == s.data.lam_c[i]])
    prior = Prior(np.zeros(s.n_params), logdet=1.5, diagonal=diag)
    phi = np.array([-6.0, 0.3, 0.5, 0.1, -0.4, 1.0])
    val, grad = prior.value_grad(phi)
    assert val == pytest.approx(1.5 * (np.log(0.5) + np.log(0.4)))
    h = 1e-6
    for i in range(phi.size):
        e = np.zeros_like(phi)
        e[i] = h
        num = (prior.value_grad(phi + e)[0] - prior.value_grad(phi - e)[0]) / (2 * h)
        assert grad[i] == pytest.approx(num, rel=1e-6, abs=1e-8)
        curv = -(prior.value_grad(phi + e)[1][i] - prior.value_grad(phi - e)[1][i]) / (2 * h)
        assert prior.curvature(phi)[i] == pytest.approx(curv, rel=1e-5, abs=1e-8)
    assert prior.value_grad(np.where(np.arange(phi.size) == diag[0], 0.0, phi))[0] == -np.inf
    # a fit under it keeps every variance off 0
    fit = replace(s, prior=prior)
    from scglmm._core._re import fit_re_one

    one = fit_re_one(fit, np.ascontiguousarray(Y[:, 3]))
    L = fit.cholesky(one.phi)[0]
    assert np.all(np.abs(np.diag(L)) > 1e-3) and np.isfinite(one.loglik)


def test_prior_fit_of_a_rare_gene_is_not_taken_for_divergence(data):
    """With the prior every effect but the intercept is bounded: an intercept beyond the separation bound
    (a very rare gene, on a large offset scale) is the gene's level, not a divergence (Kang CD14 VWA3B)."""
    from scglmm._core._re import SEPARATION_BOUND, fit_re_one

    Y, X, donor, cond, off = data
    s = prepare_re(X, off + 20.0, tuple(_slope_terms(donor, cond)))
    s = replace(s, prior=_penalised.separation_prior(s))
    one = fit_re_one(s, np.ascontiguousarray(Y[:, 0]))
    assert not one.status & SEPARATION and np.isfinite(one.loglik)
    assert one.phi[0] < -SEPARATION_BOUND and 2.0 < one.phi[1] < 4 * _penalised.BETA_SD
