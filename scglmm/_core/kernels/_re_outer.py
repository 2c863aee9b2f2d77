"""Small kernels of the outer optimisation of general random-effect structures: per-level fits of
one term's effects (starting values) and the modified Newton step."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._jit import JIT as _JIT


@njit(**_JIT)
def re_level_effects(lev, Z, cur, E, E2, ysum, disp, prior, iters, b, V):
    """Per level ``l`` of one term, the effects ``b_l`` maximising the penalised Poisson log-likelihood
    of the level's rows, ``sum_j ysum_j eta_j - E_j exp(eta_j) - b_l' b_l / (2 prior)`` with ``eta_j =
    cur_j + Z_j' b_l`` (``iters`` Newton steps from 0, each entry's step capped at 2), and ``V_l``, the
    inverse of the penalised negative binomial information at ``b_l`` (row sums of cells with
    ``sum exp(offset) = E_j``, ``sum exp(2 offset) = E2_j`` and dispersion ``disp``).

    ``b`` (m, q) and ``V`` (m, q, q) are filled in place.
    """
    n, q = Z.shape
    m = b.shape[0]
    g = np.empty((m, q))
    H = np.empty((m, q, q))
    b[:, :] = 0.0
    for it in range(iters + 1):
        last = it == iters
        g[:, :] = 0.0
        H[:, :, :] = 0.0
        for j in range(n):
            lv = lev[j]
            eta = cur[j]
            for c in range(q):
                eta += Z[j, c] * b[lv, c]
            mu = E[j] * math.exp(min(eta, 50.0))
            w = mu / (1.0 + disp * mu * E2[j] / (E[j] * E[j])) if last else mu
            r = ysum[j] - mu
            for c in range(q):
                g[lv, c] += r * Z[j, c]
                for c2 in range(q):
                    H[lv, c, c2] += w * Z[j, c] * Z[j, c2]
        for lv in range(m):
            for c in range(q):
                g[lv, c] -= b[lv, c] / prior
                H[lv, c, c] += 1.0 / prior
            if last:
                V[lv] = np.linalg.inv(H[lv])
            else:
                step = np.linalg.solve(H[lv], g[lv])
                for c in range(q):
                    b[lv, c] += min(2.0, max(-2.0, step[c]))


@njit(**_JIT)
def re_newton_step(g, H, free):
    """Newton step of a maximisation on the free parameters, with the negative Hessian's eigenvalues
    made positive (absolute value, floored at 1e-8 of the largest). Returns the step, the decrement
    ``g' step`` and whether the negative Hessian was positive definite (smallest eigenvalue above
    1e-10 of the largest, or of 1)."""
    P = g.shape[0]
    idx = np.flatnonzero(free)
    nf = idx.shape[0]
    A = np.empty((nf, nf))
    for i in range(nf):
        for k in range(nf):
            A[i, k] = -H[idx[i], idx[k]]
    w, V = np.linalg.eigh(A)
    wmax = 0.0
    for i in range(nf):
        wmax = max(wmax, abs(w[i]))
    scale = max(1.0, wmax)
    pd = w.min() > 1e-10 * scale
    floor = 1e-8 * scale
    gf = np.empty(nf)
    for i in range(nf):
        gf[i] = g[idx[i]]
    c = V.T @ gf
    for i in range(nf):
        c[i] /= max(abs(w[i]), floor)
    sf = V @ c
    step = np.zeros(P)
    dec = 0.0
    for i in range(nf):
        step[idx[i]] = sf[i]
        dec += gf[i] * sf[i]
    return step, dec, pd
