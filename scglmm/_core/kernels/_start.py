"""Starting values of the outer optimiser: Poisson GLM and moment estimates."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._few_rows import _row_dot
from ._jit import JIT as _JIT
from ._linalg import _chol_solve, _cholesky, _copy


@njit(**_JIT)
def _glm_newton_step(M, rhs, beta, L, step):
    """Complete the lower triangle ``M`` (with a tiny ridge), solve ``M step = rhs`` and move
    ``beta`` by the step, damped to a largest component of 3. Returns the largest component of
    the undamped step, or -1 if ``M`` is not positive definite."""
    p = beta.shape[0]
    for k in range(p):
        M[k, k] += 1e-8 * (1.0 + M[k, k])
        for l in range(k):
            M[l, k] = M[k, l]
    if not _cholesky(M, L, p):
        return -1.0
    _copy(step, rhs)
    _chol_solve(L, p, step)
    mx = 0.0
    for k in range(p):
        mx = max(mx, abs(step[k]))
    sc = 1.0 if mx < 3.0 else 3.0 / mx
    for k in range(p):
        beta[k] += sc * step[k]
    return mx


@njit(**_JIT)
def glm_start(X, off, starts, nzp, nzy, nzs, beta, b, maxit=25, tol=1e-4, n_sample=1024):
    """Starting values from a Poisson GLM (no donor effects); writes ``beta``, returns moment
    estimates of the NB dispersion and of log(sigma^2) (as :func:`few_rows_start`; ``nzs`` lists the
    non-zero cells per donor), and starting values of the modes in ``b`` (each donor's log ratio of
    observed to expected counts, shrunk as a normal mean with the moment variance).

    Only a start, so it is computed cheaply: the count terms (sum y x) come exactly from the
    non-zero cells ``nzp``, ``nzy``; the mean terms (sum mu x, sum mu x x') from every k-th cell
    scaled by k (k = n // n_sample), a systematic sample over the donor-sorted cells. The outer
    Newton starts from here and maximises the exact objective."""
    n, p = X.shape
    k_step = max(1, n // n_sample)
    scale = n / ((n + k_step - 1) // k_step)
    ytot = 0.0
    yx = np.zeros(p)
    for idx in range(nzp.shape[0]):
        j = nzp[idx]
        ytot += nzy[idx]
        for k in range(p):
            yx[k] += nzy[idx] * X[j, k]
    ebar = 0.0
    for j in range(0, n, k_step):
        ebar += math.exp(off[j])
    ebar *= scale
    beta[:] = 0.0
    beta[0] = math.log(max(ytot, 0.5) / ebar)  # assumes column 0 is the intercept-like column
    M = np.empty((p, p))
    L = np.empty((p, p))
    rhs = np.empty(p)
    step = np.empty(p)
    for _ in range(maxit):
        M[:, :] = 0.0
        rhs[:] = 0.0
        for j in range(0, n, k_step):
            e = off[j]
            for k in range(p):
                e += X[j, k] * beta[k]
            mu = math.exp(min(e, 50.0)) * scale
            for k in range(p):
                rhs[k] -= mu * X[j, k]
                for l in range(k + 1):
                    M[k, l] += mu * X[j, k] * X[j, l]
        for k in range(p):
            rhs[k] += yx[k]
        mx = _glm_newton_step(M, rhs, beta, L, step)
        if mx < tol:  # converged, or not positive definite (-1)
            break
    # moments: sum (y - mu)^2 - mu = sum_nz (y^2 - 2 y mu) + sum_all (mu^2 - mu); the donor
    # variance from the donors' observed / expected ratios
    num = 0.0
    den = 0.0
    nnz = nzp.shape[0]
    for idx in range(nnz):
        num += nzy[idx] * nzy[idx]
    # the cross term sum_nz y mu from a systematic sample of the non-zero cells as well
    k_nz = max(1, nnz // n_sample)
    scale_nz = nnz / ((nnz + k_nz - 1) // k_nz) if nnz > 0 else 1.0
    for idx in range(0, nnz, k_nz):
        j = nzp[idx]
        e = off[j]
        for k in range(p):
            e += X[j, k] * beta[k]
        num -= 2.0 * scale_nz * nzy[idx] * math.exp(min(e, 50.0))
    m = starts.shape[0] - 1
    v = 0.0
    nd = 0
    md_all = np.empty(m)
    for i in range(m):
        md = 0.0
        j0 = ((starts[i] + k_step - 1) // k_step) * k_step
        for j in range(j0, starts[i + 1], k_step):
            e = off[j]
            for k in range(p):
                e += X[j, k] * beta[k]
            mu = math.exp(min(e, 50.0))
            num += scale * (mu * mu - mu)
            den += scale * mu * mu
            md += scale * mu
        yd = 0.0
        for idx in range(nzs[i], nzs[i + 1]):
            yd += nzy[idx]
        if md > 0.0:
            v += (yd / md - 1.0) ** 2 - 1.0 / md
            nd += 1
        b[i] = math.log((yd + 0.5) / (md + 0.5))  # shrunk below, once the variance is known
        md_all[i] = md
    disp = num / den if den > 0.0 else 1.0
    # not below 0.1 (the fixed start it replaces): starting closer to the boundary sigma^2 = 0
    # stalls some huge-count Poisson genes on the flat corner sigma^2 -> 0, theta -> inf
    v = min(max(v / max(nd, 1), 0.1), 2.0)
    for i in range(m):
        # shrink as a normal mean: data precision about the expected count, prior precision 1 / v
        b[i] = min(max(b[i] * v * md_all[i] / (1.0 + v * md_all[i]), -3.0), 3.0)
    return disp - v, math.log1p(v)


@njit(**_JIT)
def few_rows_start(Xd, PA, Lw, o_ref, nzp, nzy, nzs, beta, Lc, dblk, maxit=25):
    """Poisson GLM start from block sums; moment estimates of the NB dispersion and donor variance.

    Block sums of Lw and Lw^2 come from the centred power sums: Lc (M0 + M1), Lc^2 (M0 + 2 M1 + M2).
    """
    m, p = Xd.shape
    eo = math.exp(o_ref)
    Ysum = np.zeros(m)
    YL = np.zeros(m)
    Y2 = 0.0
    for i in range(m):
        for idx in range(nzs[i], nzs[i + 1]):
            Ysum[i] += nzy[idx]
            YL[i] += nzy[idx] * Lw[nzp[idx]]
            Y2 += nzy[idx] * nzy[idx]
    tot_y = 0.0
    tot_e = 0.0
    for i in range(m):
        tot_y += Ysum[i]
        tot_e += eo * Lc[i] * (PA[i, 0] + PA[i, 1])
    beta[:] = 0.0
    M = np.empty((p, p))
    L = np.empty((p, p))
    rhs = np.empty(p)
    step = np.empty(p)
    # intercept-only start, then Newton on the donor sums
    beta[0] = math.log(max(tot_y, 0.5) / tot_e) / max(Xd[0, 0], 1e-12) if Xd[0, 0] != 0.0 else 0.0
    for _ in range(maxit):
        M[:, :] = 0.0
        rhs[:] = 0.0
        for i in range(m):
            mu = math.exp(min(_row_dot(Xd, beta, i), 50.0)) * eo * Lc[i] * (PA[i, 0] + PA[i, 1])
            for k in range(p):
                rhs[k] += (Ysum[i] - mu) * Xd[i, k]
                for l in range(k + 1):
                    M[k, l] += mu * Xd[i, k] * Xd[i, l]
        mx = _glm_newton_step(M, rhs, beta, L, step)
        if mx < 1e-8:  # converged, or not positive definite (-1)
            break
    num = Y2
    den = 0.0
    for i in range(m):
        mi = math.exp(min(_row_dot(Xd, beta, i), 50.0)) * eo
        s1 = Lc[i] * (PA[i, 0] + PA[i, 1])
        s2 = Lc[i] * Lc[i] * (PA[i, 0] + 2.0 * PA[i, 1] + PA[i, 2])
        num += -2.0 * mi * YL[i] + mi * mi * s2 - mi * s1
        den += mi * mi * s2
    disp = num / den if den > 0.0 else 1.0
    # donor variance by moments of the donors' observed / expected ratios (as in maximise_gene)
    nd = dblk.shape[0] - 1
    v = 0.0
    for d in range(nd):
        yd = 0.0
        md = 0.0
        for i in range(dblk[d], dblk[d + 1]):
            yd += Ysum[i]
            md += math.exp(min(_row_dot(Xd, beta, i), 50.0)) * eo * Lc[i] * (PA[i, 0] + PA[i, 1])
        if md > 0.0:
            v += (yd / md - 1.0) ** 2 - 1.0 / md
    v = min(max(v / max(nd, 1), 0.01), 2.0)
    return disp - v, math.log1p(v)
