"""Conditional modes, the Laplace and AGQ objectives, and the exact Laplace gradient and Hessian."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._cell import _cell_all_x, _cell_d12, _cell_q, theta_terms
from ._jit import JIT as _JIT
from ._vector import CHUNK, _chunk_g, _chunk_sums, _chunk_sums_z, _mode_sums

LOG_2PI = math.log(2.0 * math.pi)


@njit(**_JIT)
def _mode_step(bi, step, tol_step, err, tol):
    """Move a donor's mode ``bi`` by a Newton (or Halley) ``step`` capped at 2 in absolute value (NaN
    passes through). Returns the new mode and whether it has converged: a step below ``tol_step``,
    or below 1e-2 with a predicted error ``err`` below ``tol`` (both relative to 1 + |b|)."""
    if step > 2.0:
        step = 2.0
    elif step < -2.0:
        step = -2.0
    bi += step
    scale = 1.0 + abs(bi)
    return bi, abs(step) <= tol_step * scale or (abs(step) <= 1e-2 and err <= tol * scale)


@njit(**_JIT)
def _mode_found(b, i, bi, done):
    """Store donor i's mode ``bi``; returns whether its iterations converged (``done``) to a finite value."""
    b[i] = bi
    return done and math.isfinite(bi)


@njit(**_JIT)
def conditional_modes(y, eta0, w, starts, s, t, b, tol=1e-12, maxit=100):
    """Halley's method on each donor's b_i (h_i is strictly concave in b). Updates ``b`` in place.

    Steps use h's first three derivatives (cubic convergence; plain Newton steps while the step
    is above 0.5), all four summed in one pass over the donor's cells. After a Halley step delta the
    error left is about |f3^2 / (4 f2^2) - f4 / (6 f2)| |delta|^3 (f_k the k-th derivative of h_i;
    |f3 / (2 f2)| delta^2 after a Newton step). A donor is done, without another pass over its
    cells, once that predicted error is below ``tol`` (relative to 1 + |b_i|) after a step below
    1e-2, or once a step is below 1e-8.
    ``w = exp(eta0)`` (one exponential per cell per change of beta); mu / theta is then
    ``w * exp(b - t)``, so the passes over the cells need no transcendental function.
    Returns False if some donor did not converge.
    """
    theta = math.exp(t)
    prec = math.exp(-s)
    ok = True
    for i in range(starts.shape[0] - 1):
        bi = b[i]
        done = False
        for _ in range(maxit):
            c1, c2, f3, f4 = _mode_sums(y, w, starts[i], starts[i + 1], math.exp(bi - t), theta)
            f1 = c1 - bi * prec
            f2 = c2 - prec
            step = -f1 / f2
            err = abs(0.5 * f3 / f2) * step * step
            if abs(step) <= 0.5:
                den = 1.0 + 0.5 * step * f3 / f2
                if den > 0.5:
                    step /= den
                    err = abs(0.25 * f3 * f3 / (f2 * f2) - f4 / (6.0 * f2)) * abs(step) ** 3
            bi, done = _mode_step(bi, step, 1e-8, err, tol)
            if done:
                break
        if not _mode_found(b, i, bi, done):
            ok = False
    return ok


@njit(**_JIT)
def _donor_h(y, eta0, lo, hi, bi, t, theta, prec):
    """h_i(b) without the gene-level constants (C and lgamma terms)."""
    h = -0.5 * bi * bi * prec
    for j in range(lo, hi):
        h += _cell_q(y[j], eta0[j] + bi, t, theta)
    return h


@njit(**_JIT)
def laplace_value(y, eta0, w, starts, s, t, b, cnt_gt, lgy):
    """Laplace log-likelihood at modes ``b`` (which must be the conditional modes); ``w = exp(eta0)``.
    Summed chunk by chunk with the vectorised pieces of :func:`laplace_grad_hess`."""
    theta = math.exp(t)
    prec = math.exp(-s)
    G = np.empty((6, CHUNK))
    S = np.empty(27)
    total = 0.0
    for i in range(starts.shape[0] - 1):
        bi = b[i]
        eb = math.exp(bi - t)
        S[:] = 0.0
        for lo in range(starts[i], starts[i + 1], CHUNK):
            hi = min(lo + CHUNK, starts[i + 1])
            _chunk_g(w, lo, hi, eb, G)
            _chunk_sums(y, eta0, lo, hi, G, S)
        h = -0.5 * bi * bi * prec + S[11] + bi * S[10] - S[5] - theta * S[0]
        f2 = -prec - S[7] - theta * S[2]
        total += h - 0.5 * s - 0.5 * math.log(-f2)
    c, _, _ = theta_terms(cnt_gt, t)
    return total + c - lgy


@njit(**_JIT)
def agq_value(y, eta0, starts, s, t, b, cnt_gt, lgy, nodes, logw):
    """Adaptive Gauss-Hermite log-likelihood with ``nodes`` (z_k) and ``logw`` (log w_k + z_k^2).

    Centred at the conditional modes ``b`` and scaled by the curvature there. With a single node
    (z = 0, w = sqrt(pi)) it equals :func:`laplace_value`.
    """
    theta = math.exp(t)
    prec = math.exp(-s)
    K = nodes.shape[0]
    vals = np.empty(K)
    total = 0.0
    for i in range(starts.shape[0] - 1):
        lo = starts[i]
        hi = starts[i + 1]
        bi = b[i]
        f2 = -prec
        for j in range(lo, hi):
            f2 += _cell_d12(y[j], eta0[j] + bi, t, theta)[1]
        scale = math.sqrt(2.0 / -f2)
        vmax = -np.inf
        for k in range(K):
            v = logw[k] + _donor_h(y, eta0, lo, hi, bi + nodes[k] * scale, t, theta, prec)
            vals[k] = v
            if v > vmax:
                vmax = v
        acc = 0.0
        for k in range(K):
            acc += math.exp(vals[k] - vmax)
        total += vmax + math.log(acc) + math.log(scale) - 0.5 * (LOG_2PI + s)
    c, _, _ = theta_terms(cnt_gt, t)
    return total + c - lgy


@njit(**_JIT)
def _zero_sums(g, a, c, d, F, A, C):
    """Set a donor's sums (see :func:`_donor_terms`) to 0."""
    g[:] = 0.0
    a[:] = 0.0
    c[:] = 0.0
    d[:] = 0.0
    F[:, :] = 0.0
    A[:, :] = 0.0
    C[:, :] = 0.0


@njit(**_JIT)
def _donor_terms(bi, s, prec, h, f2, f3, f4, g, a, c, d, F, A, C, v, dK, p, grad, hess, vout):
    """Add one donor's Laplace term to ``grad`` and the lower triangle of ``hess``; return L_i.
    ``vout`` (q,) receives v = db_i / dphi, the sensitivity of the mode (to predict it elsewhere).

    On entry g, a, c, d hold f_phi, f_bphi, f_bbphi, f_bbbphi and F, A, C the lower triangle and
    the t column of the beta rows of f_phiphi, f_bphiphi, f_bbphiphi, all without the prior term.
    """
    q = p + 2
    js = p
    jt = p + 1
    # the prior term -b^2 exp(-s) / 2
    g[js] = 0.5 * bi * bi * prec
    a[js] = bi * prec
    c[js] = prec
    d[js] = 0.0
    F[js, js] = -0.5 * bi * bi * prec
    A[js, js] = -bi * prec
    C[js, js] = -prec
    # symmetrize (only lower triangle and the t column of the beta rows were filled)
    for k in range(p):
        F[jt, k] = F[k, jt]
        A[jt, k] = A[k, jt]
        C[jt, k] = C[k, jt]
        for l in range(k):
            F[l, k] = F[k, l]
            A[l, k] = A[k, l]
            C[l, k] = C[k, l]
    K = f2
    for k in range(q):
        v[k] = -a[k] / K
        vout[k] = v[k]
    for k in range(q):
        dK[k] = c[k] + f3 * v[k]
    for k in range(q):
        grad[k] += g[k] - 0.5 * dK[k] / K
    grad[js] -= 0.5
    for k in range(q):
        for l in range(k + 1):
            dv = -(A[k, l] + c[k] * v[l] + v[k] * c[l] + f3 * v[k] * v[l]) / K
            d2K = C[k, l] + d[k] * v[l] + v[k] * d[l] + f4 * v[k] * v[l] + f3 * dv
            hess[k, l] += F[k, l] - a[k] * a[l] / K - 0.5 * (d2K / K - dK[k] * dK[l] / (K * K))
    return h - 0.5 * s - 0.5 * math.log(-K)


@njit(**_JIT)
def cell_level_column(X, starts):
    """Index of the only column of ``X`` that varies within some donor, -1 if none does, -2 if
    several do (see :func:`laplace_grad_hess`)."""
    n, p = X.shape
    jc = -1
    for k in range(p):
        varies = False
        for i in range(starts.shape[0] - 1):
            x0 = X[starts[i], k] if starts[i] < n else 0.0
            for j in range(starts[i] + 1, starts[i + 1]):
                if X[j, k] != x0:
                    varies = True
                    break
            if varies:
                break
        if varies:
            if jc >= 0:
                return -2
            jc = k
    return jc


@njit(**_JIT)
def _e_sums(Sg, Sy, th):
    """e_2, e_3, e_4 summed over a donor's cells, -(sum y g_m + theta sum g_m), from the sums of g_m
    in ``Sg[m]`` and of y g_m in ``Sy[m]`` (slices of the sums of :func:`_donor_sums_one_cell_column`)."""
    return -(Sy[2] + th * Sg[2]), -(Sy[3] + th * Sg[3]), -(Sy[4] + th * Sg[4])


@njit(**_JIT)
def _t_sums(Sg, Sy, th):
    """t_1, t_2, t_3 summed over a donor's cells, -theta sum g_m + sum y g_(m+1) + theta sum
    g_(m+1), from the sums of :func:`_e_sums`."""
    t1 = -th * Sg[1] + Sy[2] + th * Sg[2]
    t2 = -th * Sg[2] + Sy[3] + th * Sg[3]
    t3 = -th * Sg[3] + Sy[4] + th * Sg[4]
    return t1, t2, t3


@njit(**_JIT)
def _donor_sums_one_cell_column(y, X, eta0, w, lo, hi, bi, eb, t, theta, jc, h, f2, g, a, c, d, F, A, C, G, S):
    """One donor's sums for :func:`laplace_grad_hess` when only column ``jc`` varies within donors
    (-1: none). Weighted sums over the cells of 1, z and z^2 (z the cell's value of column ``jc``)
    in scalars; the donor's constant row multiplies them afterwards. Fills g, a, c, d, F, A, C
    (lower triangle and t column, without the prior term); returns h, f2, f3, f4.

    Every per-cell term is a combination of g_0..g_4 (see :func:`_cell_all`) with weights theta
    and y: e1 = y - (y + theta) g_1, e_m = -(y + theta) g_m, t_m = -theta g_m + (y + theta) g_{m+1},
    tt_m = -theta g_m + 2 theta g_{m+1} - (y + theta) g_{m+2}. So the pass sums g_m and y g_m (and
    their z- and z^2-weighted versions), chunk by chunk: values into ``G`` (6, CHUNK), then sums
    into ``S`` (27,), both vectorised."""
    p = X.shape[1]
    jt = p + 1
    S[:] = 0.0
    for lo_c in range(lo, hi, CHUNK):
        hi_c = min(lo_c + CHUNK, hi)
        _chunk_g(w, lo_c, hi_c, eb, G)
        _chunk_sums(y, eta0, lo_c, hi_c, G, S)
        if jc >= 0:
            for j in range(lo_c, hi_c):
                G[5, j - lo_c] = X[j, jc]
            _chunk_sums_z(y, lo_c, hi_c, G, S)
    th = theta
    h += S[11] + bi * S[10] - S[5] - th * S[0]
    s1 = S[10] - S[6] - th * S[1]  # sums over the cells: g_m at S[m], y g_m at S[5 + m]
    s2, s3, s4 = _e_sums(S[0:5], S[5:10], th)
    st0 = -th * S[0] + S[6] + th * S[1]
    st1, st2, st3 = _t_sums(S[0:5], S[5:10], th)
    stt0 = -th * S[0] + 2.0 * th * S[1] - S[7] - th * S[2]
    stt1 = -th * S[1] + 2.0 * th * S[2] - S[8] - th * S[3]
    stt2 = -th * S[2] + 2.0 * th * S[3] - S[9] - th * S[4]
    z1 = S[26] - S[16] - th * S[12]  # z-weighted: z g_m at S[11 + m], y z g_m at S[15 + m]
    z2, z3, z4 = _e_sums(S[11:16], S[15:20], th)
    zt1, zt2, zt3 = _t_sums(S[11:16], S[15:20], th)
    zz2, zz3, zz4 = _e_sums(S[18:23], S[21:26], th)  # z^2-weighted: z^2 g_m at S[18 + m], y z^2 g_m at S[21 + m]
    f2 += s2
    for k in range(p):
        if k == jc:
            g[k] = z1
            a[k] = z2
            c[k] = z3
            d[k] = z4
            F[k, jt] = zt1
            A[k, jt] = zt2
            C[k, jt] = zt3
        else:
            xk = X[lo, k]
            g[k] = s1 * xk
            a[k] = s2 * xk
            c[k] = s3 * xk
            d[k] = s4 * xk
            F[k, jt] = st1 * xk
            A[k, jt] = st2 * xk
            C[k, jt] = st3 * xk
        for l in range(k + 1):
            if k == jc and l == jc:
                F[k, l] = zz2
                A[k, l] = zz3
                C[k, l] = zz4
            elif k == jc or l == jc:
                xo = X[lo, l] if k == jc else X[lo, k]
                F[k, l] = z2 * xo
                A[k, l] = z3 * xo
                C[k, l] = z4 * xo
            else:
                xx = X[lo, k] * X[lo, l]
                F[k, l] = s2 * xx
                A[k, l] = s3 * xx
                C[k, l] = s4 * xx
    g[jt] = st0
    a[jt] = st1
    c[jt] = st2
    d[jt] = st3
    F[jt, jt] = stt0
    A[jt, jt] = stt1
    C[jt, jt] = stt2
    return h, f2, s3, s4


@njit(**_JIT)
def laplace_grad_hess(y, X, eta0, w, starts, s, t, b, cnt_gt, lgy, grad, hess, VB, jc=-2):
    """Laplace log-likelihood with its exact gradient and Hessian in phi = (beta, s, t).

    ``b`` must hold the conditional modes. ``grad`` (q,) and ``hess`` (q, q) are overwritten, and
    ``VB`` (m, q) receives the sensitivities db_i / dphi of the modes. ``jc`` (from
    :func:`cell_level_column`): when at most one column varies within donors (``jc`` its index,
    or -1 for none), every other column is constant in a donor and factors out of the donor's sums,
    which then need a fixed set of scalar accumulators; -2 takes the general loop.
    Per donor, with f(b, phi) = h_i and b^(phi) its maximiser, v = db^/dphi = -f_bphi / f_bb:

        L_i      = f - s/2 - log(-f_bb)/2
        dL_i     = f_phi - e_s/2 - dK/(2K),           K = f_bb,  dK = f_bbphi + f_bbb v
        d2L_i    = f_phiphi - f_bphi f_bphi'/K - (d2K/K - dK dK'/K^2)/2
        d2K      = f_bbphiphi + f_bbbphi v' + v f_bbbphi' + f_bbbb v v' + f_bbb dv
        dv       = -(f_bphiphi + f_bbphi v' + v f_bbphi' + f_bbb v v') / K
    """
    n, p = X.shape
    q = p + 2
    jt = p + 1
    theta = math.exp(t)
    prec = math.exp(-s)
    grad[:] = 0.0
    hess[:, :] = 0.0
    g = np.empty(q)
    a = np.empty(q)
    c = np.empty(q)
    d = np.empty(q)
    F = np.empty((q, q))
    A = np.empty((q, q))
    C = np.empty((q, q))
    v = np.empty(q)
    dK = np.empty(q)
    G = np.empty((6, CHUNK))
    S = np.empty(27)
    total = 0.0
    for i in range(starts.shape[0] - 1):
        bi = b[i]
        _zero_sums(g, a, c, d, F, A, C)
        h = -0.5 * bi * bi * prec
        f2 = -prec
        f3 = 0.0
        f4 = 0.0
        eb = math.exp(bi - t)
        if jc >= -1:
            h, f2, f3, f4 = _donor_sums_one_cell_column(
                y, X, eta0, w, starts[i], starts[i + 1], bi, eb, t, theta, jc, h, f2, g, a, c, d, F, A, C, G, S
            )
            total += _donor_terms(bi, s, prec, h, f2, f3, f4, g, a, c, d, F, A, C, v, dK, p, grad, hess, VB[i])
            continue
        for j in range(starts[i], starts[i + 1]):
            eta = eta0[j] + bi
            qv, e1, e2, e3, e4, t0, t1, t2, t3, tt0, tt1, tt2 = _cell_all_x(y[j], eta, w[j] * eb, eta - t, theta)
            h += qv
            f2 += e2
            f3 += e3
            f4 += e4
            for k in range(p):
                xk = X[j, k]
                g[k] += e1 * xk
                a[k] += e2 * xk
                c[k] += e3 * xk
                d[k] += e4 * xk
                F[k, jt] += t1 * xk
                A[k, jt] += t2 * xk
                C[k, jt] += t3 * xk
                for l in range(k + 1):
                    xx = xk * X[j, l]
                    F[k, l] += e2 * xx
                    A[k, l] += e3 * xx
                    C[k, l] += e4 * xx
            g[jt] += t0
            a[jt] += t1
            c[jt] += t2
            d[jt] += t3
            F[jt, jt] += tt0
            A[jt, jt] += tt1
            C[jt, jt] += tt2
        total += _donor_terms(bi, s, prec, h, f2, f3, f4, g, a, c, d, F, A, C, v, dK, p, grad, hess, VB[i])
    for k in range(q):
        for l in range(k):
            hess[l, k] = hess[k, l]
    cv, c1, c2 = theta_terms(cnt_gt, t)
    grad[jt] += c1
    hess[jt, jt] += c2
    return total + cv - lgy
