"""The block and sparse-border algebra of general structures against dense references (issue 20).

Every top-level block keeps only the border effects its cells touch (``bptr``/``bcol``), and the border
x border matrices live over an envelope (``eptr``/``efirst``); these tests compare that factorisation,
its solves, the entries of the inverse the gradient uses and the seed's eliminated information with
dense numpy algebra over all effects, on structures where blocks touch all, some or none of the border
and where the border is banded (plates shared by neighbouring donors, reordered by reverse
Cuthill-McKee); the envelope kernels alone against numpy; then whole fits on dense, CSR and CSC counts,
the Laplace value at their optimum against a dense Laplace, and exact gradients against finite
differences at 200+ levels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.special import gammaln

import scglmm
from scglmm._core import _re
from scglmm._core._api import fit_genes
from scglmm._core._prior import Prior
from scglmm._core._re import _Problem, _start, fit_re_one, laplace_at, phi_from_varcomp, prepare_re
from scglmm._core._results import _structure_mode_names
from scglmm._core.kernels._linalg import (
    block_factor,
    block_local_inverse,
    block_solve,
    env_cholesky,
    env_inverse,
    env_solve,
    envelope,
)
from scglmm._core.kernels._re_laplace import _accumulate, re_amat, re_seed_fixed, re_workspace

FORMULAS = {
    "slope": "(1 + condition | donor)",
    "nested": "(1 | donor/sample)",
    "crossed": "(1 | donor) + (1 | batch)",
    "plates": "(1 | donor) + (1 | plate)",
    "mixed": "(1 + condition || donor) + (1 | donor:condition) + (1 | plate) + (1 | batch)",
    "band": "(1 | donor) + (1 + condition | lane)",
}


def cohort(n_donors: int, cells: int, n_batch: int = 6, seed: int = 0) -> pd.DataFrame:
    """Paired cells (``cells`` per donor and condition); ``batch`` drawn per cell (every donor meets
    most batches), ``plate`` one per donor and condition (each donor meets two of them); ``lane``: as
    many as donors, donor ``d`` on lanes ``7d`` and ``7d + 3`` (mod the donors), a band in scrambled
    order that the border's reordering must find."""
    rng = np.random.default_rng(seed)
    n = 2 * n_donors * cells
    donor = np.repeat(np.arange(n_donors), 2 * cells)
    stim = np.tile(np.repeat([0, 1], cells), n_donors)
    return pd.DataFrame(
        {
            "donor": pd.Categorical([f"D{d:03d}" for d in donor]),
            "condition": pd.Categorical(np.where(stim == 1, "stim", "ctrl")),
            "sample": pd.Categorical([f"D{d:03d}_{s}" for d, s in zip(donor, stim, strict=True)]),
            "batch": pd.Categorical([f"B{b}" for b in rng.integers(n_batch, size=n)]),
            "plate": pd.Categorical([f"P{(d + 5 * s) % 9}" for d, s in zip(donor, stim, strict=True)]),
            "lane": pd.Categorical([f"L{(7 * d + 3 * s) % n_donors:03d}" for d, s in zip(donor, stim, strict=True)]),
            "libsize": rng.lognormal(np.log(2000.0), 0.4, n),
        }
    )


def structure(name: str, obs: pd.DataFrame, *, blocks: bool = False):
    """The prepared structure of ``~ condition + FORMULAS[name]``."""
    X = np.column_stack([np.ones(len(obs)), (obs["condition"] == "stim").to_numpy(float)])
    terms = scglmm.random_terms(FORMULAS[name], obs)
    return prepare_re(X, np.log(obs["libsize"].to_numpy()), terms, blocks=blocks), X


def parameters(s, rng: np.random.Generator) -> np.ndarray:
    """Outer parameters with non-trivial Cholesky factors."""
    phi = np.zeros(s.n_params)
    phi[0] = -2.0
    phi[s.p : -1] = rng.uniform(0.2, 0.6, s.n_lambda)
    phi[-1] = 1.0
    return phi


def dense_rows(s, a: np.ndarray) -> np.ndarray:
    """(n, Q) rows of ``Z Lambda`` in global effect order."""
    d = s.data
    A = np.zeros((a.shape[0], d.Q))
    for r in range(a.shape[1]):
        np.add.at(A, (np.arange(a.shape[0]), d.gidx[:, r]), a[:, r])
    return A


def envelope_entries(efirst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each stored entry of an envelope, in storage order."""
    rows = np.repeat(np.arange(efirst.size), np.arange(efirst.size) - efirst + 1)
    cols = np.concatenate([np.arange(f, i + 1) for i, f in enumerate(efirst)]) if efirst.size else rows
    return rows, cols.astype(int)


def local_globals(d, k: int) -> np.ndarray:
    """Global effect of each of block k's local positions."""
    own = d.bstart[k] + np.arange(d.nk[k])
    return np.concatenate([own, d.NB + d.bcol[d.bptr[k] : d.bptr[k + 1]]])


@pytest.mark.parametrize("name", list(FORMULAS))
def test_block_algebra_matches_dense(name: str) -> None:
    """log det H, H^{-1} g, the local entries of H^{-1} and the seed's information, against numpy."""
    rng = np.random.default_rng(1)
    s, _ = structure(name, cohort(30, 3, seed=2))
    d = s.data
    a = re_amat(d, parameters(s, rng))
    w = rng.uniform(0.1, 3.0, a.shape[0])
    work = re_workspace(d)
    _accumulate(d, a, w, work)
    ok, logdet = block_factor(d.nk, d.bptr, d.bcol, work, 1.0)
    A = dense_rows(s, a)
    H = A.T @ (w[:, None] * A) + np.eye(d.Q)
    assert ok
    assert logdet == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-12)
    g = rng.normal(size=d.Q)
    out = np.empty(d.Q)
    block_solve(d.nk, d.bstart, d.bptr, d.bcol, d.NB, work, g, out)
    np.testing.assert_allclose(out, np.linalg.solve(H, g), rtol=1e-10, atol=1e-12)
    E = np.empty_like(work[0])
    Sinv = block_local_inverse(d.nk, d.bptr, d.bcol, work, E)
    Hinv = np.linalg.inv(H)
    rows, cols = envelope_entries(d.efirst)
    np.testing.assert_allclose(Sinv, Hinv[d.NB + rows, d.NB + cols], rtol=1e-10, atol=1e-13)
    toff = work[4]
    for k in range(d.nk.size):
        glob = local_globals(d, k)
        Ek = E[toff[k] : toff[k + 1]].reshape(d.nk[k], glob.size)
        np.testing.assert_allclose(Ek, Hinv[np.ix_(glob[: d.nk[k]], glob)], rtol=1e-10, atol=1e-13)
    ok, info = re_seed_fixed(d, a, w)
    C = A.T @ (w[:, None] * d.X)
    np.testing.assert_allclose(info, d.X.T @ (w[:, None] * d.X) - C.T @ np.linalg.solve(H, C), rtol=1e-10)


def test_border_lists_are_sparse() -> None:
    """Plates touch two of nine border effects per donor; random batches most of them; memory follows."""
    obs = cohort(40, 4, n_batch=6)
    s, _ = structure("plates", obs)
    assert s.n_border == 9 and s.terms[s.top].group == "donor"
    assert np.all(np.diff(s.data.bptr) == 2)
    s, _ = structure("crossed", obs)
    assert s.n_border == 6
    assert np.diff(s.data.bptr).max() <= 6
    work = re_workspace(s.data)
    nb = np.diff(s.data.bptr)
    assert work[0].size == sum(s.data.nk * (s.data.nk + nb))


@pytest.mark.parametrize("n", [1, 7, 60])
def test_envelope_kernels_match_numpy(n: int) -> None:
    """Cholesky, solve and the inverse's entries over an irregular envelope (the recursion and, for a
    near-full envelope, the dense inverse) against numpy on a matrix with that envelope."""
    rng = np.random.default_rng(n)
    for first in (np.maximum(np.arange(n) - rng.integers(0, 6, n), 0), np.zeros(n, dtype=np.int64)):
        first = np.minimum(first, np.arange(n)).astype(np.int64)
        eptr, efirst, cptr, crow = envelope(first)
        rows, cols = envelope_entries(efirst)
        A = np.zeros((n, n))
        A[rows, cols] = rng.uniform(-1.0, 1.0, rows.size)
        A = A + A.T
        A[np.diag_indices(n)] = np.abs(A).sum(axis=1) + 1.0  # diagonally dominant
        flat = A[rows, cols].copy()
        flat[rows == cols] -= 0.5  # the diagonal shift the kernel adds back
        L = np.zeros_like(flat)
        assert env_cholesky(flat, L, eptr, efirst, n, 0.5)
        Ld = np.zeros((n, n))
        Ld[rows, cols] = L
        np.testing.assert_allclose(Ld, np.linalg.cholesky(A), rtol=1e-12, atol=1e-14)
        x = rng.normal(size=n)
        z = x.copy()
        env_solve(L, eptr, efirst, cptr, crow, n, z)
        np.testing.assert_allclose(z, np.linalg.solve(A, x), rtol=1e-11, atol=1e-14)
        Z = env_inverse(L, eptr, efirst, cptr, crow, n)
        np.testing.assert_allclose(Z, np.linalg.inv(A)[rows, cols], rtol=1e-10, atol=1e-14)
    assert not env_cholesky(-np.ones(eptr[-1]), np.zeros(eptr[-1]), eptr, efirst, n, 0.0)


def test_banded_border_is_reordered_into_a_narrow_envelope() -> None:
    """200 donors on lanes 7 apart (the lanes are the top level, the donors the border, in scrambled
    order: each lane holds donors d and d + 3 / 7 mod 200): reverse Cuthill-McKee makes the Schur
    complement's envelope a band (a few per cent of the lower triangle, where the natural order fills almost
    half of it); the fit, its modes (reported by name, in the natural order) and its standard errors
    are those of the natural order."""
    obs = cohort(200, 3, seed=7)
    s, X = structure("band", obs, blocks=True)
    nc = s.n_border
    assert s.terms[s.top].group == "lane" and nc == 200 and s.data.eptr[-1] < 0.05 * nc * (nc + 1) / 2
    rng = np.random.default_rng(8)
    off = np.log(obs["libsize"].to_numpy())
    lane = rng.normal(0.0, 0.4, 200)[obs["lane"].cat.codes.to_numpy()]
    y = rng.negative_binomial(3, 3.0 / (3.0 + np.exp(off - 6.0 + lane))).astype(np.float64)
    fit = fit_re_one(s, y)
    gain = _re.ENVELOPE_GAIN
    _re.ENVELOPE_GAIN = 0.0
    try:
        s0, _ = structure("band", obs, blocks=True)
    finally:
        _re.ENVELOPE_GAIN = gain
    assert s0.data.eptr[-1] > 0.4 * nc * (nc + 1) / 2
    np.testing.assert_array_equal(s0.effect_order(), np.arange(s0.data.Q))
    fit0 = fit_re_one(s0, y)
    assert fit.status == fit0.status and fit.loglik == pytest.approx(fit0.loglik, abs=1e-8)
    np.testing.assert_allclose(fit.phi, fit0.phi, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.diag(fit.cov_phi), np.diag(fit0.cov_phi), rtol=1e-5)
    np.testing.assert_allclose(fit.modes, fit0.modes, rtol=1e-5, atol=1e-8)
    assert _structure_mode_names(s) == _structure_mode_names(s0)


@pytest.mark.parametrize(("name", "blocks"), [("slope", False), ("slope", True), ("nested", False), ("nested", True)])
def test_exact_hessian_matches_finite_differences(name: str, blocks: bool) -> None:
    """The exact Hessian of structures without a border (:mod:`scglmm._core.kernels._re_hessian`) against
    central differences of the exact gradient, with 200+ levels, on cells and on blocks of cells, with and
    without a prior (its curvature added); structures with a border have none."""
    obs = cohort(210, 10 if blocks else 3, n_batch=12, seed=9)
    s, X = structure(name, obs, blocks=blocks)
    assert (s.blocks is not None) == blocks
    off = np.log(obs["libsize"].to_numpy())
    rng = np.random.default_rng(10)
    b = rng.normal(0.0, 0.5, 210)[obs["donor"].cat.codes.to_numpy()]
    y = rng.negative_binomial(3, 3.0 / (3.0 + np.exp(off - 6.5 + b))).astype(np.float64)
    for prior in (None, Prior(np.full(s.n_params, 0.1), 1.5, np.array([s.p]))):
        sp = dataclasses.replace(s, prior=prior, compiled={})
        prob = _Problem(sp, y)
        phi = _start(sp, y)
        phi[sp.p : -1] += rng.uniform(0.05, 0.2, sp.n_lambda)
        prob.value_grad(phi)
        assert prob.has_exact_hessian
        exact = prob.exact_hessian(phi)
        fd = prob.hessian(phi, np.ones(phi.size, dtype=bool), central=True)
        np.testing.assert_allclose(exact, fd, rtol=0, atol=2e-5 * np.abs(fd).max())
        np.testing.assert_array_equal(exact, exact.T)
    for other in ("crossed", "plates", "band"):
        assert not _Problem(structure(other, obs)[0], y).has_exact_hessian


@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("name", list(FORMULAS))
def test_groups_of_rows_change_nothing(name: str, blocks: bool) -> None:
    """What follows a pass over the rows runs over their groups (``REData.grp``: rows sharing design, ``Z``
    and levels) on the sums of their derivatives: the value, gradient, modes, their derivatives and the exact
    Hessian equal those of one group per row (the sums in another order only)."""
    obs = cohort(60, 20, n_batch=3, seed=3)
    s, _ = structure(name, obs, blocks=blocks)
    batch = "batch" in FORMULAS[name]  # drawn per cell: more groups (and fewer cells per block)
    n, G = s.data.X.shape[0], s.groups.X.shape[0]
    assert G == len(obs[["donor", "condition", *(["batch"] if batch else [])]].drop_duplicates()) <= n / 2
    rows = s.data._replace(grp=np.arange(n, dtype=np.int64))
    single = dataclasses.replace(s, data=rows, groups=rows, compiled={})
    rng = np.random.default_rng(4)
    off = np.log(obs["libsize"].to_numpy())
    y = rng.negative_binomial(2, 2.0 / (2.0 + np.exp(off - 6.0 + rng.normal(0, 0.4, off.size)))).astype(float)
    phi = parameters(s, rng)
    got, ref = _Problem(s, y), _Problem(single, y)
    (v1, g1), (v2, g2) = got.value_grad(phi), ref.value_grad(phi)
    assert v1 == pytest.approx(v2, rel=1e-13)
    np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9 * np.abs(g2).max())
    np.testing.assert_allclose(got.u, ref.u, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.jac, ref.jac, rtol=0, atol=1e-9 * np.abs(ref.jac).max())
    if got.has_exact_hessian:
        h1, h2 = got.exact_hessian(phi), ref.exact_hessian(phi)
        np.testing.assert_allclose(h1, h2, rtol=0, atol=1e-9 * np.abs(h2).max())


def test_start_moves_the_glm_to_the_conditional_mean(monkeypatch) -> None:
    """The start's fixed effects lose the log-normal excess ``z' G z / 2`` of the marginal mean the Poisson GLM
    fits: for a random slope on the condition, ``G00 / 2`` on the intercept and ``G01 + G11 / 2`` on the
    condition (exact: the slope's ``z`` lie in the design's span); with a nested intercept, both variances'
    halves on the intercept. From :data:`COHORT_START_LEVELS` levels on only."""
    obs = cohort(120, 4, seed=5)
    rng = np.random.default_rng(6)
    off = np.log(obs["libsize"].to_numpy())
    y = rng.negative_binomial(2, 2.0 / (2.0 + np.exp(off - 6.0 + rng.normal(0, 0.5, off.size)))).astype(float)
    for name in ("slope", "nested"):
        s, _ = structure(name, obs, blocks=True)
        phi = parameters(s, rng)
        G = [L @ L.T for L in s.cholesky(phi)]
        want = [G[0][0, 0] / 2, G[0][0, 1] + G[0][1, 1] / 2] if name == "slope" else [(G[0] + G[1])[0, 0] / 2, 0.0]
        np.testing.assert_allclose(_re._lognormal_shift(s, phi), want, rtol=1e-12, atol=1e-14)
        shifted = _start(s, y)
        monkeypatch.setattr(_re, "START_LOGNORMAL", False)
        plain = _start(s, y)
        monkeypatch.setattr(_re, "START_LOGNORMAL", True)
        np.testing.assert_allclose(
            plain[: s.p] - shifted[: s.p], _re._lognormal_shift(s, plain), rtol=1e-12, atol=1e-14
        )
        np.testing.assert_array_equal(plain[s.p :], shifted[s.p :])
        monkeypatch.setattr(_re, "COHORT_START_LEVELS", 121)
        np.testing.assert_array_equal(_start(s, y), plain)
        monkeypatch.setattr(_re, "COHORT_START_LEVELS", 100)


def test_start_variance_of_a_nested_intercept(monkeypatch) -> None:
    """A random intercept nested in the top-level one (``donor/sample``, two samples a donor) has its start's
    variance from its per-level fits corrected for the mean of each donor's samples its donor's effect took:
    ``(mean b^2 - mean V / 2) * 2``; the top-level term, other structures and fewer than
    :data:`COHORT_START_LEVELS` donors keep the plain ``mean b^2 - mean V``."""
    obs = cohort(120, 4, seed=5)
    rng = np.random.default_rng(8)
    s, _ = structure("nested", obs, blocks=True)
    top = s.top
    child = 1 - top
    assert (s.terms[top].m, s.terms[child].m) == (120, 240)
    b, V = rng.normal(0, 0.3, (240, 1)), rng.uniform(0.01, 0.05, (240, 1, 1))
    plain = b.T @ b / 240 - V.mean(axis=0)
    np.testing.assert_allclose(_re._level_covariance(s, child, b, V), (b.T @ b / 240 - V.mean(axis=0) / 2) * 2)
    np.testing.assert_allclose(
        _re._level_covariance(s, top, b[:120], V[:120]), b[:120].T @ b[:120] / 120 - V[:120].mean(axis=0)
    )
    slope, _ = structure("slope", obs, blocks=True)
    b2, V2 = rng.normal(0, 0.3, (120, 2)), np.tile(np.eye(2) * 0.02, (120, 1, 1))
    np.testing.assert_array_equal(_re._level_covariance(slope, 0, b2, V2), b2.T @ b2 / 120 - V2.mean(axis=0))
    monkeypatch.setattr(_re, "COHORT_START_LEVELS", 121)
    np.testing.assert_array_equal(_re._level_covariance(s, child, b, V), plain)


def dense_laplace(s, X: np.ndarray, off: np.ndarray, y: np.ndarray, phi: np.ndarray) -> float:
    """The Laplace log-likelihood by dense numpy algebra over all effects (cells as rows)."""
    A = dense_rows(s, re_amat(s.data, phi))
    eta0 = X @ phi[: s.p] + off
    theta = np.exp(phi[-1])
    u = np.zeros(s.data.Q)
    for _ in range(60):
        mu = np.exp(eta0 + A @ u)
        W = theta * mu * (theta + y) / (theta + mu) ** 2
        H = A.T @ (W[:, None] * A) + np.eye(s.data.Q)
        u = u + np.linalg.solve(H, A.T @ (theta * (y - mu) / (theta + mu)) - u)
    eta = eta0 + A @ u
    mu = np.exp(eta)
    W = theta * mu * (theta + y) / (theta + mu) ** 2
    H = A.T @ (W[:, None] * A) + np.eye(s.data.Q)
    lognb = (
        gammaln(y + theta) - gammaln(theta) - gammaln(y + 1) + theta * np.log(theta / (theta + mu))
        + y * np.log(mu / (theta + mu))
    )  # fmt: skip
    return float(lognb.sum() - 0.5 * u @ u - 0.5 * np.linalg.slogdet(H)[1])


@pytest.mark.parametrize("name", list(FORMULAS))
def test_fits_on_every_format_match_a_dense_laplace(name: str) -> None:
    """Dense, CSR and CSC counts give the same fits; the optimum's value is the dense Laplace value."""
    obs = cohort(24, 4, seed=3)
    s, X = structure(name, obs)
    off = np.log(obs["libsize"].to_numpy())
    rng = np.random.default_rng(4)
    b = rng.normal(0.0, 0.5, 24)[obs["donor"].cat.codes.to_numpy()]
    Y = rng.poisson(np.exp(off - 6.5 + b)[:, None] * rng.gamma(2.0, 0.5, (len(obs), 3))).astype(np.float64)
    terms = scglmm.random_terms(FORMULAS[name], obs)
    fits = [fit_genes(m, X, terms, off) for m in (Y, sparse.csr_matrix(Y), sparse.csc_matrix(Y))]
    for f in fits[1:]:
        np.testing.assert_array_equal(f.loglik, fits[0].loglik)
        np.testing.assert_array_equal(f.coef, fits[0].coef)
    f = fits[0]
    for g in np.flatnonzero(np.isfinite(f.loglik)):
        phi = phi_from_varcomp(s, f.coef[g], np.nan_to_num(f.varcomp[g]), f.theta[g])
        assert laplace_at(s, Y[:, g], phi) == pytest.approx(dense_laplace(s, X, off, Y[:, g], phi), abs=1e-7)


@pytest.mark.parametrize(
    ("name", "donors"), [("slope", 220), ("nested", 200), ("plates", 210), ("crossed", 200), ("band", 200)]
)
def test_gradient_at_many_levels(name: str, donors: int) -> None:
    """The exact gradient against central differences with 200+ levels (blocks of cells where they form)."""
    obs = cohort(donors, 3, n_batch=12, seed=5)
    s, X = structure(name, obs, blocks=True)
    off = np.log(obs["libsize"].to_numpy())
    rng = np.random.default_rng(6)
    b = rng.normal(0.0, 0.5, donors)[obs["donor"].cat.codes.to_numpy()]
    y = rng.negative_binomial(3, 3.0 / (3.0 + np.exp(off - 6.0 + b))).astype(np.float64)
    prob = _Problem(s, y)
    phi = _start(s, y)
    phi[s.p : -1] += rng.uniform(0.05, 0.2, s.n_lambda)
    _, grad = prob.value_grad(phi)
    fd = np.empty_like(grad)
    for i in range(phi.size):
        h = 1e-5
        vals = [prob.value_grad(phi + sgn * h * np.eye(phi.size)[i], prob.u.copy())[0] for sgn in (1.0, -1.0)]
        fd[i] = (vals[0] - vals[1]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=5e-6)
