"""General random-effect structures (scglmm._core._re): derivatives, a dense reference, glmmTMB.

The glmmTMB fits are copies in tests/data/reference_re (see its README). The default run fits the
first ``N_FAST`` genes of each set; the full 150 genes per set are marked slow.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.special import gammaln

import scglmm
from scglmm._core._api import fit_general_engine, fit_genes
from scglmm._core._re import RETerm, _Problem, _start, laplace_at, phi_from_varcomp, prepare_re
from scglmm._core._status import NOT_CONVERGED, POISSON_LIMIT, status_name

REF = Path(__file__).parent / "data" / "reference_re"
COEFS = ["Intercept", "condition[T.stim]", "covariate"]
N_FAST = 30
#: Our log-likelihood above glmmTMB's by less than this: the same optimum.
SAME_OPTIMUM = 1e-4


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, levels = pd.factorize(pd.Series(values).astype(str), sort=True)
    return codes.astype(np.int64), np.asarray(levels, dtype=object)


@cache
def load(kind: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], sparse.csc_matrix, pd.DataFrame]:
    """Design, offset, obs columns, counts (CSC) and the glmmTMB table of one reference set."""
    import anndata as ad

    a = ad.read_h5ad(REF / f"{kind}.h5ad")
    obs = a.obs
    n = a.n_obs
    cond = (obs["condition"].astype(str) == "stim").to_numpy(float)
    X = np.column_stack([np.ones(n), cond, obs["covariate"].to_numpy(float)])
    off = np.log(obs["libsize"].to_numpy(float))
    cols = {c: obs[c].astype(str).to_numpy() for c in ("donor", "sample", "batch")}
    cols["cond"] = cond
    cols["covariate"] = obs["covariate"].to_numpy(float)
    ref = pd.read_csv(REF / f"{kind}_glmmtmb.csv")
    return X, off, cols, sparse.csc_matrix(a.X), ref


def term(cols: dict, group: str, Z: list[np.ndarray], names: tuple[str, ...], diagonal: bool = False) -> RETerm:
    """A term grouped by obs column(s) ``group`` (``a:b`` joins labels, as lme4's interaction)."""
    labels = None
    for g in group.split(":"):
        labels = cols[g] if labels is None else np.char.add(np.char.add(labels, ":"), cols[g])
    codes, levels = _codes(labels)
    return RETerm(group, np.column_stack(Z), codes, levels, names, diagonal)


def terms_of(kind: str) -> list[RETerm]:
    """The glmmTMB formula's random-effect terms of each reference set."""
    X, _, cols, _, _ = load(kind)
    one = np.ones(X.shape[0])
    if kind == "slope":
        return [term(cols, "donor", [one, cols["cond"]], ("Intercept", "condition[T.stim]"))]
    if kind == "nested":
        return [term(cols, "donor", [one], ("Intercept",)), term(cols, "donor:sample", [one], ("Intercept",))]
    return [term(cols, "donor", [one], ("Intercept",)), term(cols, "batch", [one], ("Intercept",))]


def gene(kind: str, g: int) -> np.ndarray:
    return load(kind)[3][:, g].toarray().ravel().astype(np.float64)


# ------------------------------------------------------------------------------------------------
# derivatives and the value
# ------------------------------------------------------------------------------------------------
def _structures() -> dict[str, list[RETerm]]:
    X, _, cols, _, _ = load("nested")
    one = np.ones(X.shape[0])
    c, x = cols["cond"], cols["covariate"]
    return {
        "slope": terms_of("slope"),
        "nested": terms_of("nested"),
        "crossed": terms_of("crossed"),
        "three_coefs": [term(cols, "donor", [one, c, x], ("Intercept", "c", "x"))],
        "diagonal": [term(cols, "donor", [one, x], ("Intercept", "x"), diagonal=True)],
        "mixed": [
            term(cols, "donor", [one, x], ("Intercept", "x")),
            term(cols, "donor:sample", [one], ("Intercept",)),
            term(cols, "batch", [one, c], ("Intercept", "c")),
        ],
    }


STRUCTURES = _structures()


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_gradient_matches_finite_differences(name: str) -> None:
    """The exact gradient (implicit dependence of the modes included) against central differences."""
    X, off, _, _, _ = load("nested")
    s = prepare_re(X, off, STRUCTURES[name])
    y = gene("nested", 1)
    prob = _Problem(s, y)
    rng = np.random.default_rng(3)
    phi = _start(s, y)
    phi[s.p : -1] += rng.uniform(0.05, 0.2, s.n_lambda)
    _, grad = prob.value_grad(phi)
    fd = np.empty_like(grad)
    for i in range(phi.size):
        h = 1e-5
        vals = []
        for sgn in (1.0, -1.0):
            ph = phi.copy()
            ph[i] += sgn * h
            vals.append(prob.value_grad(ph, prob.u.copy())[0])
        fd[i] = (vals[0] - vals[1]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=2e-6)


def _dense_laplace(s, y: np.ndarray, phi: np.ndarray) -> float:
    """The Laplace log-likelihood with dense numpy algebra (no kernels): an independent reference."""
    d = s.data
    n = y.size
    A = np.zeros((n, d.Q))
    Ls = s.cholesky(phi)
    for it, t in enumerate(s.terms):
        rows = t.Z @ Ls[it]  # (n, q): the row of Z Lambda of each cell in this term
        for c in range(t.q):
            A[np.arange(n), s.gpos[it][t.codes] + c] += rows[:, c]
    eta0 = d.X @ phi[: s.p] + d.off
    theta = np.exp(phi[-1])

    def lognb(eta: np.ndarray) -> np.ndarray:
        mu = np.exp(eta)
        return (
            gammaln(y + theta) - gammaln(theta) - gammaln(y + 1) + theta * np.log(theta / (theta + mu))
            + y * np.log(mu / (theta + mu))
        )  # fmt: skip

    u = np.zeros(d.Q)
    for _ in range(50):
        eta = eta0 + A @ u
        mu = np.exp(eta)
        g = A.T @ (theta * (y - mu) / (theta + mu)) - u
        W = theta * mu * (theta + y) / (theta + mu) ** 2
        H = A.T @ (W[:, None] * A) + np.eye(d.Q)
        u = u + np.linalg.solve(H, g)
    eta = eta0 + A @ u
    mu = np.exp(eta)
    W = theta * mu * (theta + y) / (theta + mu) ** 2
    H = A.T @ (W[:, None] * A) + np.eye(d.Q)
    return float(lognb(eta).sum() - 0.5 * u @ u - 0.5 * np.linalg.slogdet(H)[1])


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_value_matches_dense_reference(name: str) -> None:
    """Block-by-block factorisation with a Schur border gives the dense Laplace value."""
    X, off, _, _, _ = load("nested")
    s = prepare_re(X, off, STRUCTURES[name])
    y = gene("nested", 4)
    phi = _start(s, y)
    phi[s.p : -1] += 0.15
    assert laplace_at(s, y, phi) == pytest.approx(_dense_laplace(s, y, phi), rel=1e-11, abs=1e-8)


def test_layout_blocks_and_border() -> None:
    """donor/sample nests in donor (no border); batch is the border of donor + batch; slopes are blocks of 2."""
    X, off, _, _, _ = load("nested")
    s = prepare_re(X, off, STRUCTURES["mixed"])
    assert s.terms[s.top].group == "donor"
    assert s.nested == (True, True, False)
    assert s.n_border == 3 * 2
    assert list(s.data.nk) == [2 + 3] * 8


# ------------------------------------------------------------------------------------------------
# the donor random intercept: the same numbers as fit_genes
# ------------------------------------------------------------------------------------------------
def test_donor_intercept_reproduces_fit_genes() -> None:
    X, off, cols, Y, _ = load("crossed")
    one = np.ones(X.shape[0])
    genes = list(range(12))
    new = fit_general_engine(Y[:, genes], X, [term(cols, "donor", [one], ("Intercept",))], off)
    old = scglmm.fit_genes(Y[:, genes], X, cols["donor"], off)
    np.testing.assert_allclose(new.loglik, old.loglik, rtol=0, atol=1e-6)
    assert np.all(np.abs(new.coef - old.coef) <= 1e-4 * old.se)
    np.testing.assert_allclose(new.se, old.se, rtol=1e-4)
    np.testing.assert_allclose(new.varcomp[:, 0], old.sigma2, rtol=1e-4, atol=1e-8)
    assert [status_name(s) for s in new.status] == list(old.status_str)


# ------------------------------------------------------------------------------------------------
# glmmTMB
# ------------------------------------------------------------------------------------------------
def is_clean(r: pd.Series, vc_names: list[str]) -> bool:
    """The reference README's rule for genes where glmmTMB's fit is an interior, converged optimum."""
    var = [r[f"vc_{v}"] for v in vc_names if v.startswith("var")]
    cor = [r[f"vc_{v}"] for v in vc_names if v.startswith("cor")]
    return bool(
        r.status == "ok" and r.converged and r.pdHess and r.phi > 1e-4
        and all(v > 1e-4 for v in var) and all(abs(c) < 0.98 for c in cor)
    )  # fmt: skip


def compare(kind: str, genes: list[int]) -> pd.DataFrame:
    """Per gene: our fit against glmmTMB's (differences in the units of the tolerances)."""
    X, off, _, Y, ref = load(kind)
    terms = terms_of(kind)
    s = prepare_re(X, off, terms)
    fit = fit_genes(Y[:, genes], X, terms, off, coef_names=COEFS)
    rows = []
    for i, g in enumerate(genes):
        r = ref.iloc[g]
        y = gene(kind, g)
        b_ref = r[[f"beta_{c}" for c in COEFS]].to_numpy(float)
        se_ref = r[[f"se_{c}" for c in COEFS]].to_numpy(float)
        vc_ref = r[[f"vc_{v}" for v in fit.varcomp_names]].to_numpy(float)
        is_var = np.array([v.startswith("var") for v in fit.varcomp_names])
        # glmmTMB's own point, evaluated with our objective (theta capped at the Poisson limit)
        at_ref = laplace_at(s, y, phi_from_varcomp(s, b_ref, vc_ref, r.theta))
        # glmmTMB's NB log-likelihood at theta > 1e8 loses digits to lgamma(y + theta) - lgamma(theta)
        # (up to ~0.2 on these genes), and it is NaN where its Hessian was not positive definite: there
        # the Poisson fit and our objective at glmmTMB's estimates are the references
        refs = [at_ref, r.pois_loglik, r.loglik if r.theta <= 1e8 else np.nan]
        best = max(v for v in refs if np.isfinite(v))
        vdiff = np.abs(fit.varcomp[i] - vc_ref)
        rows.append({
            "gene": g,
            "clean": is_clean(r, fit.varcomp_names),
            "status": status_name(fit.status[i]),
            "beta_se": float(np.max(np.abs(fit.coef[i] - b_ref) / se_ref)),
            "se_rel": float(np.max(np.abs(fit.se[i] / se_ref - 1.0))),
            "var_excess": float(np.max(vdiff[is_var] / np.maximum(0.02 * vc_ref[is_var], 2e-3))),
            "cor_abs": float(np.max(vdiff[~is_var], initial=0.0)),
            "loglik_diff": float(fit.loglik[i] - r.loglik),
            "value_at_ref": float(at_ref - r.loglik),
            "shortfall": float(best - fit.loglik[i]),
            "not_converged": bool(fit.status[i] & NOT_CONVERGED),
            "poisson": bool(fit.status[i] & POISSON_LIMIT),
        })  # fmt: skip
    return pd.DataFrame(rows)


def check(table: pd.DataFrame) -> None:
    """The issue's accuracy targets."""
    clean = table[table.clean]
    # our objective reproduces glmmTMB's log-likelihood at glmmTMB's own estimates
    assert np.all(np.abs(clean.value_at_ref) < 1e-5), clean[["gene", "value_at_ref"]]
    # fixed effects and their standard errors: every clean gene
    assert np.all(clean.beta_se < 0.03), clean[["gene", "beta_se"]]
    assert np.all(clean.se_rel < 0.01), clean[["gene", "se_rel"]]
    # variance components and log-likelihood where both fits reach the same optimum (ours not higher
    # by more than 1e-4); where ours is higher glmmTMB stopped early on a flat ridge (its value at
    # its estimates is reproduced above, so the difference is real): at most 3 such genes per set
    same = clean[clean.loglik_diff < SAME_OPTIMUM]
    assert np.all(same.var_excess < 1.0), same[["gene", "var_excess"]]
    assert np.all(same.cor_abs < 0.03), same[["gene", "cor_abs"]]
    assert np.all(np.abs(same.loglik_diff) < 0.02)
    assert len(clean) - len(same) <= 3, clean[clean.loglik_diff >= SAME_OPTIMUM]
    # every gene: at least as high as glmmTMB's NB or Poisson fit, less 0.01
    assert np.all(table.shortfall < 0.01), table[table.shortfall >= 0.01]


@pytest.mark.parametrize("kind", ["slope", "nested", "crossed"])
def test_against_glmmtmb_subset(kind: str) -> None:
    check(compare(kind, list(range(N_FAST))))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["slope", "nested", "crossed"])
def test_against_glmmtmb_all_genes(kind: str) -> None:
    check(compare(kind, list(range(150))))


def test_refuses_agq_and_bad_terms() -> None:
    X, off, cols, Y, _ = load("slope")
    with pytest.raises(ValueError, match="adaptive Gauss-Hermite"):
        fit_genes(Y[:, :1], X, terms_of("slope"), off, n_agq=5)
    bad = RETerm("donor", np.ones((3, 1)), np.zeros(3, dtype=np.int64), np.array(["a"], dtype=object), ("Intercept",))
    with pytest.raises(ValueError, match="Z must be"):
        fit_genes(Y[:, :1], X, [bad], off)


def test_separation() -> None:
    """No count in any stimulated cell: the condition effect runs to minus infinity."""
    X, off, _, _, _ = load("slope")
    y = gene("slope", 1) * (X[:, 1] == 0)
    fit = fit_genes(y[:, None], X, terms_of("slope"), off, separation="limit")
    assert status_name(fit.status[0]) == "separation" and np.isnan(fit.coef[0]).all()
    fit = fit_genes(y[:, None], X, terms_of("slope"), off)  # the default: the weak prior (issue 19)
    assert status_name(fit.status[0]).startswith("penalised") and fit.coef[0, 1] < -2.0
    assert np.isfinite(fit.coef[0]).all() and np.isfinite(fit.se[0]).all()


def test_boundary_flags_match_components() -> None:
    """sigma2_boundary: some variance reported as 0; correlation_boundary: a correlation of exactly +-1."""
    X, off, _, Y, _ = load("slope")
    fit = fit_genes(Y[:, :N_FAST], X, terms_of("slope"), off)
    names = fit.status_str
    var0 = (fit.varcomp[:, :2] == 0).any(axis=1)
    cor1 = np.abs(fit.varcomp[:, 2]) == 1
    assert np.array_equal(var0, np.array(["sigma2_boundary" in s for s in names]))
    assert np.array_equal(cor1, np.array(["correlation_boundary" in s for s in names]))
    assert cor1.sum() >= 5  # glmmTMB puts the correlation at +-1 on 68 of the 150 genes


def test_all_zero_gene() -> None:
    X, off, _, _, _ = load("crossed")
    fit = fit_genes(np.zeros((X.shape[0], 1)), X, terms_of("crossed"), off)
    assert status_name(fit.status[0]) == "all_zero" and np.isnan(fit.coef[0]).all()


if __name__ == "__main__":  # print the accuracy table of every set: python tests/test_re.py
    pd.set_option("display.width", 200)
    for kind in ("slope", "nested", "crossed"):
        t = compare(kind, list(range(150)))
        c = t[t.clean]
        same = c[c.loglik_diff < SAME_OPTIMUM]
        print(f"== {kind}: {len(c)} clean genes ({len(c) - len(same)} where glmmTMB's optimum is lower)")
        print(c[["beta_se", "se_rel"]].abs().max().to_string())
        print(same[["var_excess", "cor_abs", "loglik_diff"]].abs().max().to_string())
        print("glmmTMB lower:", c[c.loglik_diff >= SAME_OPTIMUM][["gene", "loglik_diff", "var_excess", "cor_abs"]])
        print("max |value at glmmTMB's estimates - its loglik| (clean):", float(c.value_at_ref.abs().max()))
        o = t[~t.clean]
        print(f"other genes: {len(o)}, max shortfall {o.shortfall.max():.3g}")
        print(t.status.value_counts().to_string())


def test_a_trial_point_that_divides_by_zero_is_rejected_not_raised() -> None:
    """A gene whose line search visited a point where a kernel divides by zero (found in the calibration
    study) is fitted: the point counts as outside the usable region, the fit ends in the Poisson limit with
    a correlation at +-1, both flagged, with finite estimates."""
    from scglmm._core._api import fit_genes
    from scglmm._core._status import CORRELATION_BOUNDARY, POISSON_LIMIT, UNUSABLE
    from scglmm._formula import build_re_terms, parse_re_formula

    a = scglmm.datasets.simulate(
        n_donors=4, cells_per_donor=100, n_genes=400, paired=True, seed=20260 + 7919 * 4,
        sigma2_range=(0.0, 0.08), sigma2_zero_frac=0.3, phi_range=(0.05, 1.0), covariate_sd=0.1,
    )  # fmt: skip
    y = a[:, "G00132"].X.toarray()
    terms = build_re_terms(parse_re_formula("~ condition + (1 + condition | donor)").terms, a.obs)
    X = np.column_stack([np.ones(a.n_obs), (a.obs["condition"] == "stim").to_numpy(float)])
    off = np.log(a.obs["libsize"].to_numpy(float))
    r = fit_genes(y, X, terms, off)
    assert (r.status[0] & UNUSABLE) == 0
    assert r.status[0] & POISSON_LIMIT and r.status[0] & CORRELATION_BOUNDARY
    assert np.isfinite(r.loglik[0]) and np.all(np.isfinite(r.coef))
