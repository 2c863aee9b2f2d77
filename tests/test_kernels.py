"""Kernel-level checks: densities, derivatives against finite differences, quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from scglmm._core.kernels._cell import _cell_all, _cell_q, count_table, theta_terms
from scglmm._core.kernels._laplace import (
    agq_value,
    cell_level_column,
    conditional_modes,
    laplace_grad_hess,
    laplace_value,
)
from scglmm._core.kernels._optimise import _separated_nz, _separated_rows, _two_valued
from scglmm._core.kernels._vector import vexp_array, vlog1p_array


def _toy(seed=0, m=5, n_per=40, p=3, theta=2.0, sigma2=0.3):
    rng = np.random.default_rng(seed)
    n = m * n_per
    X = np.column_stack([np.ones(n), np.repeat(rng.integers(0, 2, m), n_per), rng.normal(size=(n, p - 2))])
    off = np.log(rng.uniform(500, 3000, n)) - 6.0
    b = rng.normal(0, np.sqrt(sigma2), m)
    beta = np.array([0.3, 0.5, -0.2][:p])
    mu = np.exp(X @ beta + off + np.repeat(b, n_per))
    y = rng.poisson(rng.gamma(theta, mu / theta)).astype(float)
    starts = np.arange(0, n + 1, n_per).astype(np.int64)
    return y, X, off, starts


def _modes(y, X, off, starts, phi):
    p = X.shape[1]
    eta0 = X @ phi[:p] + off
    b = np.zeros(starts.shape[0] - 1)
    assert conditional_modes(y, eta0, np.exp(eta0), starts, phi[p], phi[p + 1], b, 1e-13, 200)
    return eta0, b


def _laplace(y, X, off, starts, phi):
    cnt, lgy = count_table(y)
    eta0, b = _modes(y, X, off, starts, phi)
    return laplace_value(y, eta0, np.exp(eta0), starts, phi[-2], phi[-1], b, cnt, lgy)


@pytest.mark.parametrize(("y", "eta", "t"), [(0, 0.3, 0.5), (3, -1.0, 2.0), (17, 2.5, -1.0), (1, -2.0, 6.0)])
def test_nb_density_matches_scipy(y, eta, t):
    theta = math.exp(t)
    mu = math.exp(eta)
    cnt, lgy = count_table(np.array([float(y)]))
    c, _, _ = theta_terms(cnt, t)
    ours = c - lgy + _cell_q(float(y), eta, t, theta)
    ref = stats.nbinom.logpmf(y, theta, theta / (theta + mu))
    assert ours == pytest.approx(ref, abs=1e-10, rel=1e-10)


@pytest.mark.parametrize("y", [0, 1, 7, 250])
def test_nb_density_poisson_limit(y):
    """At theta = 1e8 the NB density is the Poisson one up to O(mu^2 / theta); scipy's nbinom
    loses digits there (p -> 1), the split C(y, theta) + q(eta) does not."""
    t = math.log(1e8)
    eta = math.log(max(y, 0.5))
    cnt, lgy = count_table(np.array([float(y)]))
    ours = theta_terms(cnt, t)[0] - lgy + _cell_q(float(y), eta, t, math.exp(t))
    ref = stats.poisson.logpmf(y, math.exp(eta))
    assert ours == pytest.approx(ref, abs=1e-5 * max(y, 1) ** 2 / 1e3 + 1e-9)


@pytest.mark.parametrize("y", [0.0, 1.0, 4.0, 30.0])
@pytest.mark.parametrize(("eta", "t"), [(0.2, 0.7), (-3.0, 3.0), (2.0, -1.5)])
def test_cell_derivatives_match_finite_differences(y, eta, t):
    h = 1e-5
    theta = math.exp(t)

    def fq(e, tt):
        return _cell_q(y, e, tt, math.exp(tt))

    q, e1, e2, e3, e4, t0, t1, t2, t3, tt0, tt1, tt2 = _cell_all(y, eta, t, theta)
    assert q == pytest.approx(fq(eta, t), rel=1e-14, abs=1e-14)

    def d_eta(f, e, tt, k):
        if k == 0:
            return f(e, tt)
        return (d_eta(f, e + h, tt, k - 1) - d_eta(f, e - h, tt, k - 1)) / (2 * h)

    # derivative in eta of the analytic lower-order derivatives (avoids nested FD noise)
    def an(idx):
        return lambda e, tt: _cell_all(y, e, tt, math.exp(tt))[idx]

    for k_lo, k_hi in [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (7, 8)]:
        fd = (an(k_lo)(eta + h, t) - an(k_lo)(eta - h, t)) / (2 * h)
        assert _cell_all(y, eta, t, theta)[k_hi] == pytest.approx(fd, rel=1e-6, abs=1e-7), (k_lo, k_hi)
    # derivatives in t
    for k_lo, k_hi in [(0, 5), (1, 6), (2, 7), (3, 8), (5, 9), (6, 10), (7, 11)]:
        fd = (an(k_lo)(eta, t + h) - an(k_lo)(eta, t - h)) / (2 * h)
        assert _cell_all(y, eta, t, theta)[k_hi] == pytest.approx(fd, rel=1e-6, abs=1e-7), (k_lo, k_hi)


@pytest.mark.parametrize("t", [-1.0, 0.5, 4.0, 15.0])
def test_theta_terms_derivatives(t):
    y = np.array([0, 0, 1, 2, 2, 5, 9, 40], dtype=float)
    cnt, _ = count_table(y)
    v, d1, d2 = theta_terms(cnt, t)
    direct = sum(sum(math.log1p(k / math.exp(t)) for k in range(int(yy))) for yy in y)
    assert v == pytest.approx(direct, rel=1e-12, abs=1e-12)
    h = 1e-5
    vp = theta_terms(cnt, t + h)
    vm = theta_terms(cnt, t - h)
    assert d1 == pytest.approx((vp[0] - vm[0]) / (2 * h), rel=1e-6, abs=1e-8)
    assert d2 == pytest.approx((vp[1] - vm[1]) / (2 * h), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("phi_st", [(-1.2, 0.7), (-4.0, 2.5), (0.5, -0.5)])
def test_laplace_gradient_and_hessian_match_finite_differences(seed, phi_st):
    y, X, off, starts = _toy(seed)
    p = X.shape[1]
    phi = np.array([0.1, 0.4, -0.1, *phi_st])
    cnt, lgy = count_table(y)
    eta0, b = _modes(y, X, off, starts, phi)
    q = p + 2
    grad = np.zeros(q)
    hess = np.zeros((q, q))
    VB = np.zeros((starts.size - 1, q))
    val = laplace_grad_hess(y, X, eta0, np.exp(eta0), starts, phi[p], phi[p + 1], b, cnt, lgy, grad, hess, VB)
    VB0 = VB.copy()
    # the shortcut for designs with at most one column varying within donors gives the same sums
    jc = cell_level_column(X, starts)
    Xd = X.copy()
    const = [k for k in range(p) if k != jc]
    Xd[:, const] = Xd[starts[:-1].repeat(np.diff(starts))][:, const]
    assert cell_level_column(Xd, starts) == jc and jc >= 0
    for Xc, j in ((Xd, jc), (Xd, -2), (np.column_stack([np.ones(len(y)), Xd[:, 1:] * 0 + 1.5]), -1)):
        g1, h1, g2, h2 = np.zeros(q), np.zeros((q, q)), np.zeros(q), np.zeros((q, q))
        e0, bb = _modes(y, Xc, off, starts, phi)
        v1 = laplace_grad_hess(y, Xc, e0, np.exp(e0), starts, phi[p], phi[p + 1], bb, cnt, lgy, g1, h1, VB, -2)
        v2 = laplace_grad_hess(y, Xc, e0, np.exp(e0), starts, phi[p], phi[p + 1], bb, cnt, lgy, g2, h2, VB, j)
        assert v2 == pytest.approx(v1, rel=1e-13)
        np.testing.assert_allclose(g2, g1, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(h2, h1, rtol=1e-11, atol=1e-11)
    assert val == pytest.approx(_laplace(y, X, off, starts, phi), rel=1e-12)
    h = 1e-5
    fd_grad = np.zeros(q)
    fd_hess = np.zeros((q, q))
    for k in range(q):
        e = np.zeros(q)
        e[k] = h
        fd_grad[k] = (_laplace(y, X, off, starts, phi + e) - _laplace(y, X, off, starts, phi - e)) / (2 * h)
        gp = np.zeros(q)
        gm = np.zeros(q)
        hp = np.zeros((q, q))
        for sign, g in ((1, gp), (-1, gm)):
            ph = phi + sign * e
            e0, bb = _modes(y, X, off, starts, ph)
            laplace_grad_hess(y, X, e0, np.exp(e0), starts, ph[p], ph[p + 1], bb, cnt, lgy, g, hp, VB)
        fd_hess[k] = (gp - gm) / (2 * h)
        # sensitivities of the conditional modes (used to warm-start them) vs finite differences
        bp = _modes(y, X, off, starts, phi + e)[1]
        bm = _modes(y, X, off, starts, phi - e)[1]
        np.testing.assert_allclose(VB0[:, k], (bp - bm) / (2 * h), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hess, fd_hess, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-12, atol=1e-12)


def _gh(K_nodes):
    z, w = np.polynomial.hermite.hermgauss(K_nodes)
    return z, np.log(w) + z * z


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("phi_st", [(-1.0, 0.5), (0.8, 2.0)])
def test_agq25_matches_adaptive_quadrature(seed, phi_st):
    y, X, off, starts = _toy(seed, m=4, n_per=15)
    p = X.shape[1]
    phi = np.array([0.2, 0.3, -0.1, *phi_st])
    cnt, lgy = count_table(y)
    eta0, b = _modes(y, X, off, starts, phi)
    z, lw = _gh(25)
    agq = agq_value(y, eta0, starts, phi[p], phi[p + 1], b, cnt, lgy, z, lw)
    s2 = math.exp(phi[p])
    theta = math.exp(phi[p + 1])
    total = 0.0
    for i in range(starts.shape[0] - 1):
        sl = slice(starts[i], starts[i + 1])

        shift = stats.nbinom.logpmf(y[sl], theta, theta / (theta + np.exp(eta0[sl] + b[i]))).sum()

        def integrand(u, sl=sl, shift=shift):
            mu = np.exp(eta0[sl] + u)
            return math.exp(
                stats.nbinom.logpmf(y[sl], theta, theta / (theta + mu)).sum()
                + stats.norm.logpdf(u, 0, math.sqrt(s2))
                - shift
            )

        half = 12 * math.sqrt(s2) + 3
        val, _ = integrate.quad(integrand, b[i] - half, b[i] + half, points=[b[i]], epsabs=0, epsrel=1e-12, limit=400)
        total += math.log(val) + shift
    assert agq == pytest.approx(total, abs=1e-6)
    # and Laplace is the 1-node rule
    lap = laplace_value(y, eta0, np.exp(eta0), starts, phi[p], phi[p + 1], b, cnt, lgy)
    z1, lw1 = _gh(1)
    assert agq_value(y, eta0, starts, phi[p], phi[p + 1], b, cnt, lgy, z1, lw1) == pytest.approx(lap, rel=1e-13)
    assert abs(lap - total) > 1e-6  # the Laplace error is real on these sparse toy genes


def test_fit_gene_agq_is_close_to_laplace_and_maximises_agq():
    import scglmm

    y, X, off, starts = _toy(5, m=6, n_per=30)
    groups = np.repeat(np.arange(6), 30)
    lap = scglmm.fit_gene(y, X, groups, off)
    agq = scglmm.fit_gene(y, X, groups, off, n_agq=15)
    assert lap.converged and agq.converged
    assert np.all(np.abs(agq.coef - lap.coef) < 0.2 * lap.se)
    assert agq.loglik != lap.loglik
    # AGQ optimum: perturbing any parameter lowers the AGQ objective
    z, lw = _gh(15)
    cnt, lgy = count_table(y)
    phi = np.concatenate([agq.coef, [math.log(agq.sigma2), -math.log(agq.dispersion)]])
    order_y, order_X, order_off = y, X, off
    best = None
    for k in range(phi.size):
        for sgn in (-1, 1):
            ph = phi.copy()
            ph[k] += sgn * 1e-3
            e0, bb = _modes(order_y, order_X, order_off, starts, ph)
            v = agq_value(order_y, e0, starts, ph[-2], ph[-1], bb, cnt, lgy, z, lw)
            best = v if best is None else max(best, v)
    assert best <= agq.loglik + 1e-7


def test_inline_exp_and_log1p_agree_with_libm():
    """The vectorisable exp and log1p of the cell passes are within 2 ulp of libm (which is
    within 1 ulp of the exact values) over the ranges the kernels use, including tiny x where
    log1p needs the compensation for the rounding of 1 + x."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-708, 700, 200_000), rng.uniform(-1, 1, 100_000), [0.0, -708.0, 700.0]])
    out = np.empty_like(x)
    vexp_array(x, out)
    rel = np.abs(out / np.exp(x) - 1.0)
    assert rel.max() <= 4.5e-16
    x = np.concatenate([10.0 ** rng.uniform(-300, 299, 200_000), rng.uniform(0, 4, 100_000), [0.0, 1e-300, 1.0]])
    vlog1p_array(x, out)
    ref = np.log1p(x)
    rel = np.abs(out - ref) / np.maximum(ref, 1e-308)
    assert rel[x > 0].max() <= 4.5e-16
    assert out[x == 0.0].max() == 0.0


def test_separation_from_nonzero_cells_matches_all_cells():
    """The separation check that reads only the non-zero cells agrees with the one over all
    cells, for a factor with no counts on one level, on both, and for non-factor columns."""
    rng = np.random.default_rng(4)
    n = 300
    factor3 = np.repeat([2.0, 5.0, 7.0], n // 3)
    X = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2), rng.normal(size=n), factor3])
    tv, v0 = _two_valued(X)
    assert tv.tolist() == [False, True, False, False]
    for lo, hi, expect in [(0, n // 2, True), (n // 2, n, True), (0, n, False)]:
        y = np.zeros(n)
        y[lo:hi] = rng.poisson(1.0, hi - lo)
        nzp = np.flatnonzero(y)
        assert _separated_nz(X, nzp, y[nzp], tv, v0) is expect
        assert _separated_rows(X, y) is expect
