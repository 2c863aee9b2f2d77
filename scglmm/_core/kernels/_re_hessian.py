"""The exact Hessian of the Laplace log-likelihood of a general structure without a border (every term
nested in the top-level factor: random slopes, ``donor/sample``), at converged modes.

With the notation of :mod:`._re_laplace` (``H = sum_j w_j a_j a_j' + I``, ``w_j = -e2_j``), the outer
parameters ``psi_i`` (beta, the Cholesky entries, log theta), the modes' derivatives ``u_i = du^/dpsi_i``
and, per row ``j``,

- ``deta_ji = d eta_j / d psi_i`` (total): ``x_j`` for beta, ``z_jr u^_(c)`` for the entry ``L[r, c]``,
  0 for log theta, each plus ``a_j' u_i``;
- ``b_ji = d a_j / d psi_i``: ``z_jr`` at coefficient ``c`` for the entry ``L[r, c]``, else 0;
- ``dw_ji = -(e3_j deta_ji + t2_j [i = theta])``,

the log-likelihood ``h(u^) + c(theta) - log det H / 2`` has the Hessian

    C_ik + c'' [i = k = theta] - tr(H^{-1} d2H_ik) / 2 + tr(H^{-1} dH_i H^{-1} dH_k) / 2,

``C``: the Hessian of ``h(u^(psi), psi)``, ``h_psipsi + (d grad_u h / dpsi)' du/dpsi``; ``dH_i = sum_j dw_ji
a_j a_j' + w_j (b_ji a_j' + a_j b_ji')``; ``d2H_ik`` the same differentiated again, whose modes' second
derivatives ``u_ik`` enter only through ``xi' u_ik = zeta' s_ik`` (``xi``, ``zeta = H^{-1} xi`` of the
gradient, ``H u_ik = s_ik`` the second derivative of the mode equation), so no second-order solve is
needed. Without a border ``H^{-1}`` is block-diagonal, so every term is a sum over rows, or over the
top-level blocks of small dense products (the last trace). The rows' derivatives up to the fourth in
eta and second in log theta are those of the donor-intercept kernels (:func:`._cell._cell_all_x`,
:func:`._few_rows._few_rows_block_sums_into`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._cell import NB, _cell_all_x, theta_terms
from ._few_rows import _block_centre
from ._jit import JIT as _JIT


@njit(**_JIT)
def _row_derivatives(fr, PZ, y, eta, t, theta, D):
    """Per row (cell or block) ``(q, e1..e4, t0..t3, tt0..tt2)`` at ``eta`` into ``D`` (n, 12)."""
    if fr.on:
        _block_derivatives(fr, PZ, eta, t, theta, D)
        return
    for j in range(eta.shape[0]):
        z = eta[j] - t
        r = _cell_all_x(y[j], eta[j], math.exp(min(z, 709.0)), z, theta)
        for m in range(12):
            D[j, m] = r[m]


@njit(**_JIT)
def _block_derivatives(fr, PZ, eta, t, theta, D):
    """:func:`_row_derivatives` of blocks: the sums of :func:`._few_rows._few_rows_block_sums_into` (level
    3) by one loop per block, as :func:`._re_laplace._blocks_all`: with ``G_m(M)`` the series of
    :func:`._few_rows._centered_series` over the power sums M and ``W = theta PA + PZ``, ``e_m = -G_m(W)``
    (``e1`` plus the count), ``t_m = G_(m+1)(W) - theta G_m(PA)`` and ``tt_m = -G_(m+2)(W) + theta (2
    G_(m+1)(PA) - G_m(PA))``."""
    PA = fr.PA
    KK = PA.shape[1]
    for j in range(eta.shape[0]):
        c = eta[j]
        rc, alpha, lx, K = _block_centre(c - t + fr.o_ref + fr.logLc[j], KK)
        w0 = theta * PA[j, 0] + PZ[j, 0]
        w1 = w0  # W_(k-1), W_(k-2), W_(k-3)
        w2 = 0.0
        w3 = 0.0
        a0 = PA[j, 0]
        a1 = a0
        a2 = 0.0
        sg = -1.0  # (-1)^(k+1) rc^k
        s0 = s1 = s2 = s3 = s4 = p0 = p1 = p2 = p3 = 0.0
        for k in range(1, K + 1):
            sg *= -rc
            kf = float(k)
            wk = theta * PA[j, k] + PZ[j, k]
            ak = PA[j, k]
            s0 += sg * wk * fr.inv_k[k]
            s1 += sg * wk
            s2 += kf * sg * (w1 + wk)
            s3 += kf * sg * ((kf - 1.0) * w2 + (2.0 * kf - 1.0) * w1 + kf * wk)
            s4 += (
                kf * sg * ((kf - 1.0) * (kf - 2.0) * w3 + 3.0 * (kf - 1.0) * (kf - 1.0) * w2
                + (3.0 * kf * kf - 3.0 * kf + 1.0) * w1 + kf * kf * wk)
            )  # fmt: skip
            p0 += sg * ak * fr.inv_k[k]
            p1 += sg * ak
            p2 += kf * sg * (a1 + ak)
            p3 += kf * sg * ((kf - 1.0) * a2 + (2.0 * kf - 1.0) * a1 + kf * ak)
            w3, w2, w1 = w2, w1, wk
            a2, a1 = a1, ak
        ysum = PZ[j, KK]
        G0, G1, G2, G3, G4 = w0 * lx + s0, w0 * rc + alpha * s1, alpha * s2, alpha * s3, alpha * s4
        P0, P1, P2, P3 = a0 * lx + p0, a0 * rc + alpha * p1, alpha * p2, alpha * p3
        D[j, 0] = c * ysum + PZ[j, KK + 1] - G0
        D[j, 1] = ysum - G1
        D[j, 2] = -G2
        D[j, 3] = -G3
        D[j, 4] = -G4
        D[j, 5] = G1 - theta * P0
        D[j, 6] = G2 - theta * P1
        D[j, 7] = G3 - theta * P2
        D[j, 8] = G4 - theta * P3
        D[j, 9] = -G2 + theta * (2.0 * P1 - P0)
        D[j, 10] = -G3 + theta * (2.0 * P2 - P1)
        D[j, 11] = -G4 + theta * (2.0 * P3 - P2)


@njit(**_JIT)
def hessian_at(d, fr, PZ, y, cnt_gt, phi, u, a, state, jac, out):
    """The exact Hessian of the Laplace log-likelihood at ``phi`` into ``out`` (P, P), at the converged modes
    ``u`` with their derivatives ``jac``, ``a`` the rows of ``Z Lambda`` and ``state = (work, E, zeta, P_j,
    d_j)`` what the gradient left (:func:`._re_laplace._gradient`: the factors of ``H`` at ``u``, the
    blocks' inverses, ``H^{-1} xi``, per row ``H^{-1} a_j`` and ``a_j' H^{-1} a_j``). Returns False when
    the structure has a border or another family than NB."""
    n, p = d.X.shape
    P = phi.shape[0]
    if d.Q != d.NB or d.family != NB:
        return False
    work, E, zeta, Pj, dd = state
    t = phi[P - 1]
    R = a.shape[1]
    eta = np.empty(n)
    for j in range(n):
        e = d.off[j]
        for k in range(p):
            e += d.X[j, k] * phi[k]
        for r in range(R):
            e += a[j, r] * u[d.gidx[j, r]]
        eta[j] = e
    D = np.empty((n, 12))
    _row_derivatives(fr, PZ, y, eta, t, math.exp(t), D)
    G, DE = _row_partials(d, a, u, jac, P)
    out[:, :] = 0.0
    _h_part(d, a, u, D, G, jac, out)
    _log_det_rows(d, a, D, E, jac, zeta, Pj, dd, DE, work[4], out)
    _log_det_blocks(d, a, D, E, DE, work[4], out)
    out[P - 1, P - 1] += theta_terms(cnt_gt, t)[2]
    for i in range(P):
        for k in range(i):
            out[k, i] = out[i, k]
    return True


@njit(**_JIT)
def _row_partials(d, a, u, jac, P):
    """Per row, ``g_ji = d eta_j / d psi_i`` at fixed modes (``x_j`` for beta, ``z_jr u_(c)`` for the entry
    ``L[r, c]``, 0 for log theta) and the total ``deta_ji = g_ji + a_j' u_i``, both (n, P)."""
    n, R = a.shape
    p = d.X.shape[1]
    G = np.zeros((n, P))
    DE = np.empty((n, P))
    for j in range(n):
        for k in range(p):
            G[j, k] = d.X[j, k]
        for i in range(d.lam_t.shape[0]):
            o = d.toff[d.lam_t[i]]
            G[j, p + i] = d.zval[j, o + d.lam_r[i]] * u[d.gidx[j, o + d.lam_c[i]]]
        for i in range(P):
            s = G[j, i]
            for r in range(R):
                s += a[j, r] * jac[d.gidx[j, r], i]
            DE[j, i] = s
    return G, DE


@njit(**_JIT)
def _h_part(d, a, u, D, G, jac, out):
    """Add the Hessian of ``h(u^(psi), psi)`` (lower triangle): ``sum_j e2 g g' + t1 g`` against log theta,
    ``+ tt0`` on its diagonal, ``+ rhs' jac``."""
    n = a.shape[0]
    P = out.shape[0]
    Q = jac.shape[0]
    for j in range(n):
        for i in range(P - 1):
            v = D[j, 2] * G[j, i]
            for k in range(i + 1):
                out[i, k] += v * G[j, k]
            out[P - 1, i] += D[j, 6] * G[j, i]
        out[P - 1, P - 1] += D[j, 9]
    rhs = np.zeros((P, Q))
    _mode_rhs(d, a, u, D[:, 1], D[:, 2], D[:, 6], rhs)
    for i in range(P):
        for k in range(i + 1):
            s = 0.0
            for q in range(Q):
                s += rhs[i, q] * jac[q, k]
            out[i, k] += s


@njit(**_JIT)
def _mode_rhs(d, a, u, e1s, e2s, t1s, rhs):
    """``d(grad_u h) / dphi`` at fixed ``u`` into ``rhs`` (P, Q), from the rows' ``e1``, ``e2`` and ``t1``
    (see :func:`._re_laplace._mode_jacobian`)."""
    n, R = a.shape
    p = d.X.shape[1]
    P = rhs.shape[0]
    NL = d.lam_t.shape[0]
    for j in range(n):
        e1, e2, t1 = e1s[j], e2s[j], t1s[j]
        for r in range(R):
            g = d.gidx[j, r]
            ae2 = a[j, r] * e2
            for k in range(p):
                rhs[k, g] += ae2 * d.X[j, k]
            rhs[P - 1, g] += a[j, r] * t1
        for i in range(NL):
            o = d.toff[d.lam_t[i]]
            zr = d.zval[j, o + d.lam_r[i]]
            if zr == 0.0:
                continue
            gc = d.gidx[j, o + d.lam_c[i]]
            s = zr * u[gc] * e2
            for r in range(R):
                rhs[p + i, d.gidx[j, r]] += a[j, r] * s
            rhs[p + i, gc] += zr * e1


@njit(**_JIT)
def _log_det_rows(d, a, D, E, jac, zeta, Pj, dd, DE, toff, out):
    """Add ``-tr(H^{-1} d2H_ik) / 2`` (lower triangle), row by row (see the module docstring): with per row
    ``v = e2 deta + t1 [theta]``, ``zb_i = zeta' b_ji``, ``pb_i = P_j' b_ji`` and ``bu_ik = b_ji' u_k``,

        -2 x that = A deta deta' + B (deta e_t' + e_t deta') + C e_t e_t' + v zb' + zb v'
                    + 2 (dw pb' + pb dw') + F (bu + bu') + 2 w (b_i' H^{-1} b_k),

    ``A = -d e4 + az e3``, ``B = -d t3 + az t2``, ``C = -d tt2 + az tt1``, ``F = -d e3 + az e2`` (``d = a' H^{-1}
    a``, ``az = zeta' a``); only the Cholesky entries have a ``b``."""
    n, R = a.shape
    p = d.X.shape[1]
    P = out.shape[0]
    NL = d.lam_t.shape[0]
    it = P - 1
    eb = np.empty(NL, dtype=np.int64)
    for i in range(NL):
        eb[i] = d.toff[d.lam_t[i]] + d.lam_c[i]
    zb = np.empty(NL)
    pb = np.zeros(P)
    zt = np.zeros(P)
    dw = np.empty(P)
    v = np.empty(P)
    acc = np.zeros((P, P))
    for j in range(n):
        e2, e3, e4 = D[j, 2], D[j, 3], D[j, 4]
        t1, t2, t3, tt1, tt2 = D[j, 6], D[j, 7], D[j, 8], D[j, 10], D[j, 11]
        dj = dd[j]
        az = 0.0
        for r in range(R):
            az += a[j, r] * zeta[d.gidx[j, r]]
        for i in range(P):
            dw[i] = -e3 * DE[j, i]
            v[i] = e2 * DE[j, i]
        dw[it] -= t2
        v[it] += t1
        for i in range(NL):
            zb[i] = d.zval[j, d.toff[d.lam_t[i]] + d.lam_r[i]]
            pb[p + i] = zb[i] * Pj[j, eb[i]]
            zt[p + i] = zb[i] * zeta[d.gidx[j, eb[i]]]
        A = -dj * e4 + az * e3
        for i in range(P):
            ai = A * DE[j, i]
            for k in range(i + 1):
                acc[i, k] += ai * DE[j, k] + v[i] * zt[k] + v[k] * zt[i] + 2.0 * (dw[i] * pb[k] + dw[k] * pb[i])
        B = -dj * t3 + az * t2
        for k in range(it):
            acc[it, k] += B * DE[j, k]
        acc[it, it] += 2.0 * B * DE[j, it] - dj * tt2 + az * tt1
        F = -dj * e3 + az * e2
        k0 = toff[d.blk[j]]
        nk = d.nk[d.blk[j]]
        for l in range(NL):
            if zb[l] == 0.0:
                continue
            gl = d.gidx[j, eb[l]]
            il = p + l
            for k in range(P):
                f = F * zb[l] * jac[gl, k] * (2.0 if k == il else 1.0)
                if k <= il:
                    acc[il, k] += f
                else:
                    acc[k, il] += f
            ll = d.lidx[j, eb[l]]
            for m in range(l + 1):
                acc[il, p + m] += 2.0 * (-e2) * zb[l] * zb[m] * E[k0 + ll * nk + d.lidx[j, eb[m]]]
    for i in range(P):
        for k in range(i + 1):
            out[i, k] -= 0.5 * acc[i, k]


@njit(**_JIT)
def _log_det_blocks(d, a, D, E, DE, toff, out):
    """Add ``tr(H^{-1} dH_i H^{-1} dH_k) / 2`` (lower triangle): per top-level block, ``dH_i`` over the
    block's effects, ``M_i = H_k^{-1} dH_i``, and ``sum tr(M_i M_k)``."""
    n, R = a.shape
    p = d.X.shape[1]
    P = out.shape[0]
    NL = d.lam_t.shape[0]
    K = d.nk.shape[0]
    dH = np.zeros((P, toff[K]))
    for j in range(n):
        k0 = toff[d.blk[j]]
        nk = d.nk[d.blk[j]]
        w = -D[j, 2]
        for i in range(P):
            dw = -D[j, 3] * DE[j, i] - (D[j, 7] if i == P - 1 else 0.0)
            for r in range(R):
                lr = k0 + d.lidx[j, r] * nk
                v = dw * a[j, r]
                for r2 in range(R):
                    dH[i, lr + d.lidx[j, r2]] += v * a[j, r2]
        for i in range(NL):
            o = d.toff[d.lam_t[i]]
            v = w * d.zval[j, o + d.lam_r[i]]
            if v == 0.0:
                continue
            lb = d.lidx[j, o + d.lam_c[i]]
            for r in range(R):
                lr = d.lidx[j, r]
                dH[p + i, k0 + lb * nk + lr] += v * a[j, r]
                dH[p + i, k0 + lr * nk + lb] += v * a[j, r]
    nmax = 1
    for k in range(K):
        nmax = max(nmax, d.nk[k])
    M = np.empty((P, nmax * nmax))
    for k in range(K):
        nk = d.nk[k]
        k0 = toff[k]
        for i in range(P):
            for r in range(nk):
                for c in range(nk):
                    s = 0.0
                    for m in range(nk):
                        s += E[k0 + r * nk + m] * dH[i, k0 + m * nk + c]
                    M[i, r * nk + c] = s
        for i in range(P):
            for k2 in range(i + 1):
                s = 0.0
                for r in range(nk):
                    for c in range(nk):
                        s += M[i, r * nk + c] * M[k2, c * nk + r]
                out[i, k2] += 0.5 * s
