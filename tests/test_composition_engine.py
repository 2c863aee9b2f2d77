"""The binomial (and Poisson) family of the general engine: against glmmTMB on simulated compositions
(tests/data/composition/PROVENANCE.md), its derivatives against finite differences, and its inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import scglmm
from scglmm._core._errors import InvalidValueError
from scglmm._core._family import structure
from scglmm._core._re import _Problem, fit_re_one
from scglmm._core.kernels._cell import BINOMIAL, POISSON, row_glm

DATA = Path(__file__).parent / "data" / "composition"
FORMULAS = {"A": "(1 | donor)", "B": "(1 | donor) + (1 | donor:sample)"}
VARS = {"var(Intercept|donor)": "var(Intercept|donor)", "var(Intercept|donor:sample)": "var(Intercept|sample)"}


def _set(name: str) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Counts per sample (rows) and type (columns), the samples' obs and their design (intercept, stim)."""
    d = pd.read_csv(DATA / f"counts_{name}.csv")
    wide = d.pivot(index="sample", columns="cell_type", values="n")
    obs = d.drop_duplicates("sample").set_index("sample", drop=False).loc[wide.index]
    X = np.column_stack([np.ones(len(obs)), (obs["condition"] == "stim").to_numpy(float)])
    return wide, obs, X


@pytest.fixture(scope="module", params=["A", "B"])
def compared(request) -> tuple[scglmm.GenesFit, pd.DataFrame]:
    wide, obs, X = _set(request.param)
    terms = scglmm.random_terms(FORMULAS[request.param], obs)
    fit = scglmm.fit_genes(
        wide.to_numpy(),
        X,
        terms,
        family="binomial",
        trials=wide.sum(axis=1).to_numpy(),
        coef_names=["Intercept", "stim"],
    )
    ref = pd.read_csv(DATA / f"glmmtmb_{request.param}.csv").set_index("cell_type").loc[wide.columns]
    return fit, ref


def test_binomial_matches_glmmtmb(compared):
    fit, ref = compared
    ok = (ref["ok"] & ref["conv"] & ref["pdHess"]).to_numpy()
    assert ok.sum() == 10
    for k, name in enumerate(["Intercept", "stim"]):
        beta, se = ref[f"beta_{name}"].to_numpy(), ref[f"se_{name}"].to_numpy()
        # the log odds ratio within 0.03 SE and 1e-3 relative (or 1e-4), SEs within 1 %
        assert np.max(np.abs(fit.coef[ok, k] - beta[ok]) / se[ok]) < 0.03
        np.testing.assert_allclose(fit.coef[ok, k], beta[ok], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(fit.se[ok, k], se[ok], rtol=0.01)
    ll = ref["loglik"].to_numpy()
    assert np.max(np.abs(fit.loglik[ok] - ll[ok])) < 0.02
    np.testing.assert_allclose(fit.loglik[ok], ll[ok], rtol=1e-3)
    assert np.all(fit.loglik >= ll - 1e-3)  # never a worse optimum
    for ours, theirs in VARS.items():
        if ours in fit.varcomp_names:
            v = fit.varcomp[:, fit.varcomp_names.index(ours)]
            np.testing.assert_allclose(v[ok], ref[theirs].to_numpy()[ok], rtol=0.02, atol=2e-3)
    assert np.all(fit.status == 0) and np.all(np.isnan(fit.theta))


@pytest.mark.parametrize(("family", "y", "n"), [(BINOMIAL, 7.0, 40.0), (BINOMIAL, 0.0, 3.0), (POISSON, 5.0, 0.0)])
@pytest.mark.parametrize("eta", [-3.0, 0.4, 2.5])
def test_row_derivatives_match_finite_differences(family, y, n, eta):
    h = 1e-5
    vals = [row_glm(family, y, n, eta + s * h) for s in (-1.0, 0.0, 1.0)]
    q, e1, e2, e3 = vals[1]
    np.testing.assert_allclose((vals[2][0] - vals[0][0]) / (2 * h), e1, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose((vals[2][1] - vals[0][1]) / (2 * h), e2, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose((vals[2][2] - vals[0][2]) / (2 * h), e3, rtol=1e-6, atol=1e-8)
    if family == BINOMIAL:  # q + log C(n, y) is the binomial log-probability
        p = 1.0 / (1.0 + np.exp(-eta))
        const = stats.binom.logpmf(y, n, p) - (y * np.log(p) + (n - y) * np.log1p(-p))
        np.testing.assert_allclose(q + const, stats.binom.logpmf(y, n, p), rtol=1e-12)


def _problem(name: str, family: str = "binomial") -> tuple[_Problem, np.ndarray]:
    wide, obs, X = _set(name)
    tot = wide.sum(axis=1).to_numpy(float)
    terms = scglmm.random_terms(FORMULAS[name], obs)
    off = np.log(tot) if family == "poisson" else np.zeros(len(obs))
    s = structure(X, off, terms, family, tot if family == "binomial" else None)
    y = wide["T03"].to_numpy(float)
    return _Problem(s, y), fit_re_one(s, y).phi


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_laplace_gradient_matches_finite_differences(family):
    prob, phi = _problem("B", family)
    phi = phi + np.r_[0.05, -0.1, 0.07, -0.05, 0.0]  # away from the optimum, every component non-zero
    val, g = prob.value_grad(phi, prob.u.copy())
    assert g[-1] == 0.0  # no dispersion
    for i in range(phi.size - 1):
        h = 1e-5
        up, dn = phi.copy(), phi.copy()
        up[i] += h
        dn[i] -= h
        fd = (prob.value_grad(up, prob.u.copy())[0] - prob.value_grad(dn, prob.u.copy())[0]) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, atol=1e-6)


def test_laplace_hessian_gives_the_reported_covariance():
    prob, phi = _problem("A")
    s = prob.s
    free = np.r_[np.ones(s.n_params - 1, dtype=bool), False]
    H = prob.hessian(phi, free)
    idx = np.flatnonzero(free)
    cov = np.linalg.inv(-H[np.ix_(idx, idx)])
    fit = fit_re_one(s, prob.y)
    np.testing.assert_allclose(fit.cov_phi[np.ix_(idx, idx)], cov, rtol=1e-3, atol=1e-6)  # forward vs central
    assert np.all(np.isnan(fit.cov_phi[-1]))


def test_dense_and_sparse_input_agree():
    wide, obs, X = _set("A")
    terms = scglmm.random_terms("(1 | donor)", obs)
    tot = wide.sum(axis=1).to_numpy()
    dense = scglmm.fit_genes(wide.to_numpy(), X, terms, family="binomial", trials=tot)
    csr = scglmm.fit_genes(sparse.csr_matrix(wide.to_numpy()), X, terms, family="binomial", trials=tot)
    per_entry = np.repeat(tot[:, None], wide.shape[1], axis=1)
    full = scglmm.fit_genes(wide.to_numpy(), X, terms, family="binomial", trials=per_entry)
    for other in (csr, full):
        np.testing.assert_array_equal(dense.coef, other.coef)
        np.testing.assert_array_equal(dense.loglik, other.loglik)


def test_trials_per_entry_against_a_reference_type():
    wide, obs, X = _set("A")
    terms = scglmm.random_terms("(1 | donor)", obs)
    y = wide.to_numpy()
    trials = y + y[:, [0]]  # each type against type T00
    fit = scglmm.fit_genes(y[:, 1:], X, terms, family="binomial", trials=trials[:, 1:])
    one = scglmm.fit_genes(y[:, [3]], X, terms, family="binomial", trials=trials[:, 3])
    np.testing.assert_array_equal(fit.coef[2], one.coef[0])


def test_separation_is_a_status():
    wide, obs, X = _set("A")
    terms = scglmm.random_terms("(1 | donor)", obs)
    y = wide.to_numpy().copy()
    y[X[:, 1] == 1.0, 0] = 0  # type T00 absent from every stimulated sample
    fit = scglmm.fit_genes(y[:, :2], X, terms, family="binomial", trials=wide.sum(axis=1).to_numpy())
    assert fit.status_str[0] == "separation" and np.isnan(fit.coef[0]).all()
    assert fit.status_str[1] == "ok"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "gamma"}, "must be one of"),
        ({"family": "binomial"}, "needs trials"),
        ({"family": "binomial", "trials": np.ones(12)}, "at least the successes"),
        ({"family": "binomial", "trials": np.ones(5)}, "fits neither"),
        ({"family": "poisson", "trials": np.ones(12)}, "only the binomial family"),
        ({"family": "nb", "trials": np.ones(12)}, "only the binomial family"),
        ({"family": "binomial", "trials": np.full(12, 10**5), "n_agq": 3}, "Laplace"),
    ],
)
def test_bad_family_inputs(kwargs, match):
    wide, obs, X = _set("A")
    with pytest.raises(InvalidValueError, match=match):
        scglmm.fit_genes(wide.to_numpy(), X, obs["donor"].to_numpy(), **kwargs)
